//! The storage layer's only contact with glommio's file API: opening segment files,
//! aligned writes that must be complete, reads, syncs, durable directory creation, and
//! the per-device start-up self-test; and `faults`, the hooks tests use to watch and
//! break them.
//!
//! Keeping glommio behind this small module means the rest of `storage` could move to
//! another io_uring runtime by rewriting this file.

use std::cell::RefCell;
use std::collections::HashSet;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions};

use super::StorageError;
use crate::limits::IO_ALIGNMENT_BYTES;

const ALIGNMENT: u64 = IO_ALIGNMENT_BYTES as u64;

pub(crate) fn align_down(value: u64) -> u64 {
    value & !(ALIGNMENT - 1)
}

pub(crate) fn align_up(value: u64) -> u64 {
    align_down(value + ALIGNMENT - 1)
}

/// Maps an I/O error on `path` to the storage error a user can act on.
pub(crate) fn io_error(path: &Path, operation: &'static str, error: io::Error) -> StorageError {
    if error.kind() == io::ErrorKind::StorageFull || error.raw_os_error() == Some(libc::ENOSPC) {
        StorageError::DiskFull {
            path: path.to_path_buf(),
        }
    } else {
        StorageError::Io {
            path: path.to_path_buf(),
            operation,
            source: Rc::new(error),
        }
    }
}

/// Opens (or creates) a segment or index file for direct I/O, readable and writable.
/// `DmaFile::create` would open it write-only (docs/GLOMMIO.md §2).
pub(crate) async fn open_rw(path: &Path, create: bool) -> Result<DmaFile, StorageError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(|error| io_error(path, "open", error.into()))
}

/// Writes all of `data` at the aligned position `position`. A short write is an error:
/// on a full disk the kernel may write part of the range before failing.
pub(crate) async fn write_all_at(
    file: &DmaFile,
    path: &Path,
    data: &[u8],
    position: u64,
) -> Result<(), StorageError> {
    assert_eq!(
        position % ALIGNMENT,
        0,
        "unaligned write position {position}"
    );
    let length = align_up(data.len() as u64) as usize;
    let mut buffer = file.alloc_dma_buffer(length);
    let bytes = buffer.as_bytes_mut();
    bytes[..data.len()].copy_from_slice(data);
    // DMA buffers come from a recycled pool: zero the padding ourselves (docs/GLOMMIO.md §3).
    bytes[data.len()..].fill(0);
    let written = file
        .write_at(buffer, position)
        .await
        .map_err(|error| io_error(path, "write", error.into()))?;
    if written != length {
        return Err(short_write(path, written, length));
    }
    Ok(())
}

pub(crate) fn short_write(path: &Path, written: usize, wanted: usize) -> StorageError {
    // A short direct-I/O write on a local filesystem means the space ran out.
    tracing::warn!(path = %path.display(), written, wanted, "short write");
    StorageError::DiskFull {
        path: path.to_path_buf(),
    }
}

pub(crate) async fn fdatasync(file: &DmaFile, path: &Path) -> Result<(), StorageError> {
    if let Some(error) = faults::fdatasync_fault(path) {
        return Err(io_error(path, "fdatasync", error));
    }
    file.fdatasync()
        .await
        .map_err(|error| io_error(path, "fdatasync", error.into()))
}

/// Reads up to `length` bytes at `position` (any alignment). Returns fewer bytes at the
/// end of the file.
pub(crate) async fn read_at(
    file: &DmaFile,
    path: &Path,
    position: u64,
    length: usize,
) -> Result<glommio::io::ReadResult, StorageError> {
    file.read_at(position, length)
        .await
        .map_err(|error| io_error(path, "read", error.into()))
}

/// Makes a directory entry change (create, rename, delete) durable.
pub(crate) async fn sync_directory(path: &Path) -> Result<(), StorageError> {
    faults::note_directory_sync(path);
    let directory = glommio::io::Directory::open(path)
        .await
        .map_err(|error| io_error(path, "open directory", error.into()))?;
    directory
        .sync()
        .await
        .map_err(|error| io_error(path, "sync directory", error.into()))?;
    directory
        .close()
        .await
        .map_err(|error| io_error(path, "close directory", error.into()))
}

/// Creates `dir` and every missing ancestor, top-down, and makes each new directory's entry
/// durable by syncing its parent, top-down, before returning: a directory whose own entry
/// could vanish in a crash takes everything written inside it along. Returns the
/// directories it synced, in order (none when `dir` already existed).
pub(crate) async fn create_dir_all_durably(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
    let target = dir.to_path_buf();
    // stat and mkdir are blocking calls: they run on the executor's blocking thread
    // (docs/GLOMMIO.md §7).
    let created = glommio::executor()
        .spawn_blocking(move || create_missing_directories(&target))
        .await
        .map_err(|(path, error)| io_error(&path, "create directory", error))?;
    let mut synced = Vec::with_capacity(created.len());
    for directory in &created {
        let parent = parent_directory(directory);
        sync_directory(&parent).await?;
        synced.push(parent);
    }
    Ok(synced)
}

/// Creates the missing directories on the way to `dir`, top-down; returns them in the
/// order created. One that appears meanwhile (another log creating a sibling) is still
/// listed, so that its entry is synced before this caller relies on it.
fn create_missing_directories(dir: &Path) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let mut missing = Vec::new();
    let mut current = dir.to_path_buf();
    loop {
        match std::fs::metadata(&current) {
            Ok(_) => break,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let parent = parent_directory(&current);
                missing.push(current);
                current = parent;
            }
            Err(error) => return Err((current, error)),
        }
    }
    missing.reverse();
    for directory in &missing {
        match std::fs::create_dir(directory) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && directory.is_dir() => {}
            Err(error) => return Err((directory.clone(), error)),
        }
    }
    Ok(missing)
}

/// The directory holding `path`'s entry (`.` for a relative path of one component).
fn parent_directory(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Fault injection and observation for tests, in the spirit of Redpanda's storage fault
/// injection: lets a test see what the storage layer makes durable, and make it fail in
/// ways no ordinary filesystem can be made to on demand.
///
/// Everything here is per thread: a log does all its I/O on the executor thread that
/// opened it, so a test arms a hook on that thread (inside the future it runs on the
/// executor) and other tests, on other threads, are not affected. Nothing is recorded or
/// injected unless a test asks for it; the cost otherwise is one thread-local check per
/// fdatasync and directory sync.
pub mod faults {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    #[derive(Default)]
    struct Hooks {
        /// Directories under which the next fdatasync of a file fails, one entry per
        /// failure to inject.
        fail_next_fdatasync: Vec<PathBuf>,
        /// fdatasync failures injected so far.
        injected_fdatasync_failures: u64,
        /// The directories synced since `record_directory_syncs`, while recording.
        directory_syncs: Option<Vec<PathBuf>>,
    }

    thread_local! {
        static HOOKS: RefCell<Hooks> = RefCell::default();
    }

    /// Starts recording, on this thread, every directory the storage layer syncs (to make
    /// an entry it created, renamed or deleted durable). Forgets an earlier recording.
    pub fn record_directory_syncs() {
        HOOKS.with(|hooks| hooks.borrow_mut().directory_syncs = Some(Vec::new()));
    }

    /// The directories synced on this thread since `record_directory_syncs`, in order;
    /// stops recording.
    pub fn take_directory_syncs() -> Vec<PathBuf> {
        HOOKS.with(|hooks| {
            hooks
                .borrow_mut()
                .directory_syncs
                .take()
                .unwrap_or_default()
        })
    }

    /// Makes the next fdatasync, on this thread, of a file whose path starts with `dir` fail
    /// with EIO without syncing anything, as Linux reports a failed writeback: the data
    /// written since the last successful sync may be gone, and a later fdatasync may
    /// succeed regardless. The fault is used up by that one call (later ones sync as
    /// usual); call again for several failures.
    pub fn fail_next_fdatasync_under(dir: impl Into<PathBuf>) {
        let dir = dir.into();
        HOOKS.with(|hooks| hooks.borrow_mut().fail_next_fdatasync.push(dir));
    }

    /// How many fdatasync failures have been injected on this thread (so a test can wait
    /// for the one it armed to happen, for instance in the appender's interval flush).
    pub fn injected_fdatasync_failures() -> u64 {
        HOOKS.with(|hooks| hooks.borrow().injected_fdatasync_failures)
    }

    /// Removes every hook set on this thread.
    pub fn clear() {
        HOOKS.with(|hooks| *hooks.borrow_mut() = Hooks::default());
    }

    /// The error an fdatasync of `path` must fail with, if a test armed one.
    pub(crate) fn fdatasync_fault(path: &Path) -> Option<std::io::Error> {
        HOOKS.with(|hooks| {
            let mut hooks = hooks.borrow_mut();
            let armed = hooks
                .fail_next_fdatasync
                .iter()
                .position(|dir| path.starts_with(dir))?;
            hooks.fail_next_fdatasync.remove(armed);
            hooks.injected_fdatasync_failures += 1;
            Some(std::io::Error::from_raw_os_error(libc::EIO))
        })
    }

    pub(super) fn note_directory_sync(path: &Path) {
        HOOKS.with(|hooks| {
            if let Some(synced) = &mut hooks.borrow_mut().directory_syncs {
                synced.push(path.to_path_buf());
            }
        });
    }
}

thread_local! {
    /// Devices this thread has already probed and self-tested.
    static TESTED_DEVICES: RefCell<HashSet<u64>> = RefCell::new(HashSet::new());
}

/// Runs once per device per thread, before the first segment file on that device is
/// opened: works around glommio's IOPOLL probe (docs/GLOMMIO.md §1) by making sure the first
/// file glommio opens on the device is non-empty, then writes a block with direct I/O and
/// reads it back. Failing here is loud and early instead of at the first consumer read.
pub(crate) async fn prepare_device(directory: &Path) -> Result<(), StorageError> {
    let device = std::fs::metadata(directory)
        .map_err(|error| io_error(directory, "stat", error))?
        .dev();
    if TESTED_DEVICES.with(|tested| tested.borrow().contains(&device)) {
        return Ok(());
    }
    let probe_path: PathBuf = directory.join(".spate-selftest");
    let pattern: Vec<u8> = (0..IO_ALIGNMENT_BYTES)
        .map(|index| (index * 7 + 13) as u8)
        .collect();
    // Buffered write first, so that glommio's probe read on open finds data.
    std::fs::write(&probe_path, &pattern).map_err(|error| io_error(&probe_path, "write", error))?;
    let self_test = async {
        let file = open_rw(&probe_path, false).await?;
        let mut reversed = pattern.clone();
        reversed.reverse();
        write_all_at(&file, &probe_path, &reversed, 0).await?;
        fdatasync(&file, &probe_path).await?;
        let read = read_at(&file, &probe_path, 0, reversed.len()).await?;
        let result = if read[..] == reversed[..] {
            Ok(())
        } else {
            Err(StorageError::SelfTest {
                path: probe_path.clone(),
                reason: "a block written with direct I/O read back different".into(),
            })
        };
        let _ = file.close().await;
        result
    };
    let result = self_test.await.map_err(|error| match error {
        StorageError::SelfTest { .. } => error,
        other => StorageError::SelfTest {
            path: probe_path.clone(),
            reason: other.to_string(),
        },
    });
    let _ = std::fs::remove_file(&probe_path);
    result?;
    TESTED_DEVICES.with(|tested| tested.borrow_mut().insert(device));
    Ok(())
}

/// Replaces `path` with `data` so that a crash leaves either the old or the new file:
/// write `<path>.tmp`, fdatasync, rename. The caller syncs the directory.
pub(crate) async fn write_file_atomically(path: &Path, data: &[u8]) -> Result<(), StorageError> {
    let mut name = path.file_name().expect("a file path").to_os_string();
    name.push(".tmp");
    let temporary = path.with_file_name(name);
    let file = open_rw(&temporary, true).await?;
    let truncate = |size: u64| {
        let file = &file;
        let temporary = &temporary;
        async move {
            file.truncate(size)
                .await
                .map_err(|error| io_error(temporary, "truncate", error.into()))
        }
    };
    truncate(0).await?;
    write_all_at(&file, &temporary, data, 0).await?;
    truncate(data.len() as u64).await?;
    fdatasync(&file, &temporary).await?;
    file.close()
        .await
        .map_err(|error| io_error(&temporary, "close", error.into()))?;
    glommio::io::rename(&temporary, path)
        .await
        .map_err(|error| io_error(path, "rename", error.into()))
}

/// An exclusive lock on a directory (`<dir>/.lock`, flock): two logs, or two brokers, in
/// this process or another, never write the same files.
pub struct DirectoryLock {
    file: std::fs::File,
}

impl DirectoryLock {
    pub fn acquire(directory: &Path) -> Result<DirectoryLock, StorageError> {
        use std::os::fd::AsRawFd;
        let path = directory.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|error| io_error(&path, "open lock file", error))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if locked != 0 {
            return Err(StorageError::Locked {
                path: directory.to_path_buf(),
            });
        }
        Ok(DirectoryLock { file })
    }
}

impl Drop for DirectoryLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // Unlock explicitly: closing is not enough while a child forked meanwhile still
        // shares the descriptor (until its exec closes it).
        // SAFETY: as above.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}
