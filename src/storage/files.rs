//! Segment file descriptors. No segment holds one for ever: a file is opened when it is
//! first read or written and closed again when the shard has more segment files open than
//! its cap (`set_segment_files_max`), least recently used first. A shard with 10 000
//! partitions and years of retention holds at most its cap, whatever the descriptor limit
//! of the process; the busy partitions' active segments stay open because they are used
//! the most, and an idle partition's file is reopened (one `openat`) when it wakes.
//!
//! Whoever uses a file keeps the handle it was given (an `Rc<DmaFile>`) until its I/O is
//! done: a file closed by the cap meanwhile stays open until that handle is dropped, so
//! the cap can be exceeded by the operations under way, never by idle files. A segment
//! being deleted is held open outside the cap until its last reader drops it.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::path::Path;
use std::rc::{Rc, Weak};

use glommio::io::DmaFile;

use super::{StorageError, io};

/// The cap a shard starts with, until the server sets its own.
pub const SEGMENT_FILES_MAX_DEFAULT: usize = 1024;

/// This thread's (shard's) open segment files, by when they were last used.
struct Shard {
    max: Cell<usize>,
    clock: Cell<u64>,
    /// Last use → the file's slot. Every open slot is here but those held open for a
    /// deletion (`Slot::hold_open`).
    by_use: RefCell<BTreeMap<u64, Weak<Slot>>>,
    opened: Cell<u64>,
    closed: Cell<u64>,
}

thread_local! {
    static SHARD: Rc<Shard> = Rc::new(Shard {
        max: Cell::new(SEGMENT_FILES_MAX_DEFAULT),
        clock: Cell::new(0),
        by_use: RefCell::new(BTreeMap::new()),
        opened: Cell::new(0),
        closed: Cell::new(0),
    });
}

fn shard() -> Rc<Shard> {
    SHARD.with(Rc::clone)
}

/// Caps the segment files this shard (thread) keeps open (at least 1).
pub fn set_segment_files_max(max: usize) {
    let shard = shard();
    shard.max.set(max.max(1));
    enforce(&shard);
}

/// This shard's segment files: open now, against the cap, and how many times files were
/// opened and closed by the cap since the thread began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentFiles {
    pub open: usize,
    pub max: usize,
    pub opened: u64,
    pub closed: u64,
}

pub fn segment_files() -> SegmentFiles {
    let shard = shard();
    let open = shard.by_use.borrow().len();
    SegmentFiles {
        open,
        max: shard.max.get(),
        opened: shard.opened.get(),
        closed: shard.closed.get(),
    }
}

fn enforce(shard: &Shard) {
    while shard.by_use.borrow().len() > shard.max.get() {
        let Some((_, slot)) = shard.by_use.borrow_mut().pop_first() else {
            break;
        };
        if let Some(slot) = slot.upgrade() {
            slot.used.set(None);
            // Dropping the last handle closes the descriptor (asynchronously, in glommio).
            slot.file.borrow_mut().take();
            shard.closed.set(shard.closed.get() + 1);
        }
    }
}

/// One segment's file, open or not (its path is the segment's).
pub(crate) struct Slot {
    file: RefCell<Option<Rc<DmaFile>>>,
    /// The key under which the shard lists this slot, while it is open.
    used: Cell<Option<u64>>,
    /// Kept open until dropped, outside the cap (`hold_open`).
    held: Cell<bool>,
}

impl Slot {
    /// A slot for a file already open.
    pub fn open(file: DmaFile) -> Rc<Slot> {
        let slot = Rc::new(Slot {
            file: RefCell::new(Some(Rc::new(file))),
            used: Cell::new(None),
            held: Cell::new(false),
        });
        let shard = shard();
        shard.opened.set(shard.opened.get() + 1);
        slot.touch();
        slot
    }

    /// A slot for a file opened when first used.
    pub fn closed() -> Rc<Slot> {
        Rc::new(Slot {
            file: RefCell::new(None),
            used: Cell::new(None),
            held: Cell::new(false),
        })
    }

    pub fn is_open(&self) -> bool {
        self.file.borrow().is_some()
    }

    /// The file at `path`, opened if it was closed; it becomes the most recently used.
    pub async fn get(self: &Rc<Self>, path: &Path) -> Result<Rc<DmaFile>, StorageError> {
        if let Some(file) = self.file.borrow().clone() {
            self.touch();
            return Ok(file);
        }
        let opened = Rc::new(io::open_rw(path, false).await?);
        // Another reader may have opened it meanwhile: one descriptor is kept.
        let file = self.file.borrow_mut().get_or_insert(opened).clone();
        let shard = shard();
        if self.used.get().is_none() {
            shard.opened.set(shard.opened.get() + 1);
        }
        self.touch();
        Ok(file)
    }

    /// Opens the file if needed and keeps it open, outside the cap, until the slot is
    /// dropped: the segment is about to be deleted, and a reader that took it before
    /// must still read it after the unlink.
    pub async fn hold_open(self: &Rc<Self>, path: &Path) -> Result<(), StorageError> {
        self.get(path).await?;
        self.held.set(true);
        if let Some(key) = self.used.take() {
            shard().by_use.borrow_mut().remove(&key);
        }
        Ok(())
    }

    /// Closes the file (once its readers are done) and forgets it: its log closed.
    pub fn release(&self) {
        self.file.borrow_mut().take();
        if let Some(key) = self.used.take() {
            shard().by_use.borrow_mut().remove(&key);
        }
    }

    fn touch(self: &Rc<Self>) {
        if !self.is_open() || self.held.get() {
            return;
        }
        let shard = shard();
        let now = shard.clock.get() + 1;
        shard.clock.set(now);
        {
            let mut by_use = shard.by_use.borrow_mut();
            if let Some(key) = self.used.replace(Some(now)) {
                by_use.remove(&key);
            }
            by_use.insert(now, Rc::downgrade(self));
        }
        enforce(&shard);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(key) = self.used.get() {
            // The thread may be ending, its shard already gone: nothing to tidy then.
            let _ = SHARD.try_with(|shard| shard.by_use.borrow_mut().remove(&key));
        }
    }
}
