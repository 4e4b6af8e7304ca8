//! Durability rounds: one commit per shard, not one per partition.
//!
//! Every partition's appender on this thread that needs its writes durable (an fdatasync
//! before acknowledging, an interval flush, a roll) joins the round that starts next. While
//! a round is under way the next one gathers; when it ends, the first waiter of the next
//! round leads it. A round of one segment is that segment's fdatasync, as before; a round
//! of several is one `syncfs` per filesystem they live on, run on the executor's blocking
//! thread: it makes every write completed before it durable, data and metadata, in one
//! call, where one fdatasync per file costs each file's metadata write and a trip through
//! a kernel worker thread. An fdatasync of one of the files follows it, for the metadata
//! that `syncfs` writes after its device flush (see `sync_many`). Everyone in a round gets its outcome; a failed round fails every
//! log in it (a failed sync is never retried, see `Appender::fdatasync_segment`).
//!
//! The state is per executor: a shard's partitions share rounds, other shards run their
//! own (a `syncfs` of another shard's round covers this one's writes too, harmlessly).

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;

use super::StorageError;
use super::io;
use super::segment::Segment;
use crate::wake::Event;
use glommio::io::DmaFile;

/// Segments waiting for one round, and its outcome once known.
#[derive(Default)]
struct Round {
    segments: RefCell<Vec<Rc<Segment>>>,
    outcome: RefCell<Option<Vec<Result<(), StorageError>>>>,
}

#[derive(Default)]
struct Rounds {
    /// The glommio executor these rounds belong to (a thread may run several in turn).
    executor: Cell<usize>,
    gathering: RefCell<Option<Rc<Round>>>,
    under_way: Cell<bool>,
    /// Notified when a round ends.
    ended: Event,
    /// Rounds run and segments synced, for tests and stats.
    rounds: Cell<u64>,
    syncfs_calls: Cell<u64>,
}

thread_local! {
    static ROUNDS: Rc<Rounds> = Rc::new(Rounds::default());
}

fn rounds() -> Rc<Rounds> {
    let rounds = ROUNDS.with(Rc::clone);
    let executor = glommio::executor().id();
    if rounds.executor.get() != executor {
        // A new executor on this thread: the last one's rounds ended with it.
        *rounds.gathering.borrow_mut() = None;
        rounds.under_way.set(false);
        rounds.executor.set(executor);
    }
    rounds
}

/// Rounds run on this executor so far, and how many of them were a `syncfs`.
pub fn round_counts() -> (u64, u64) {
    let rounds = rounds();
    (rounds.rounds.get(), rounds.syncfs_calls.get())
}

/// Makes every write to `segment` completed so far durable, in the next round.
pub(crate) async fn sync(segment: &Rc<Segment>) -> Result<(), StorageError> {
    let rounds = rounds();
    let round = rounds
        .gathering
        .borrow_mut()
        .get_or_insert_with(Default::default)
        .clone();
    let index = {
        let mut segments = round.segments.borrow_mut();
        match segments.iter().position(|s| Rc::ptr_eq(s, segment)) {
            Some(index) => index,
            None => {
                segments.push(segment.clone());
                segments.len() - 1
            }
        }
    };
    loop {
        if let Some(outcome) = &*round.outcome.borrow() {
            return outcome[index].clone();
        }
        let leads = !rounds.under_way.get()
            && rounds
                .gathering
                .borrow()
                .as_ref()
                .is_some_and(|gathering| Rc::ptr_eq(gathering, &round));
        if leads {
            rounds.gathering.borrow_mut().take();
            rounds.under_way.set(true);
            // Its own task: the round completes even if this waiter goes away.
            glommio::spawn_local(run(rounds.clone(), round.clone())).detach();
        }
        rounds
            .ended
            .wait_until(|| round.outcome.borrow().is_some() || !rounds.under_way.get())
            .await;
    }
}

async fn run(rounds: Rc<Rounds>, round: Rc<Round>) {
    let segments = round.segments.borrow().clone();
    let started = std::time::Instant::now();
    let outcome = if segments.len() == 1 {
        let segment = &segments[0];
        vec![match segment.file().await {
            Ok(file) => io::fdatasync(&file, &segment.path).await,
            Err(error) => Err(error),
        }]
    } else {
        sync_many(&rounds, &segments).await
    };
    crate::metrics::with(|metrics| {
        metrics.sync_latency.observe_duration(started.elapsed());
        metrics.sync_round_segments.observe(segments.len() as f64);
    });
    *round.outcome.borrow_mut() = Some(outcome);
    rounds.rounds.set(rounds.rounds.get() + 1);
    rounds.under_way.set(false);
    rounds.ended.notify_all();
}

/// One `syncfs` per filesystem among `segments`; each segment gets its filesystem's
/// outcome (or the fault a test armed for it).
async fn sync_many(rounds: &Rounds, segments: &[Rc<Segment>]) -> Vec<Result<(), StorageError>> {
    let mut outcome: Vec<Option<Result<(), StorageError>>> = segments
        .iter()
        .map(|segment| {
            io::faults::fdatasync_fault(&segment.path)
                .map(|error| Err(io::io_error(&segment.path, "fdatasync", error)))
        })
        .collect();
    // Segments by device, the first of each standing for its filesystem with its file.
    let mut devices: Vec<(u64, Rc<DmaFile>, Vec<usize>)> = Vec::new();
    for (index, segment) in segments.iter().enumerate() {
        if outcome[index].is_some() {
            continue;
        }
        if let Some(device) = segment.device.get()
            && let Some((_, _, members)) = devices.iter_mut().find(|(known, ..)| *known == device)
        {
            members.push(index);
            continue;
        }
        let found = match segment.file().await {
            Ok(file) => device_of(segment, &file).map(|device| (device, file)),
            Err(error) => Err(error),
        };
        match found {
            Ok((device, file)) => match devices.iter_mut().find(|(known, ..)| *known == device) {
                Some((_, _, members)) => members.push(index),
                None => devices.push((device, file, vec![index])),
            },
            Err(error) => outcome[index] = Some(Err(error)),
        }
    }
    for (_, file, members) in devices {
        let fd = file.as_raw_fd();
        rounds.syncfs_calls.set(rounds.syncfs_calls.get() + 1);
        // The file stays open (`file` is held) until the call returns.
        let synced = glommio::executor()
            .spawn_blocking(move || {
                // SAFETY: `fd` is an open file descriptor for the duration of the call.
                if unsafe { libc::syncfs(fd) } != 0 {
                    return Err(("syncfs", std::io::Error::last_os_error()));
                }
                // syncfs flushes the device's cache (`sync_fs`) before it writes out the
                // block device's dirty buffers: on a filesystem without a journal (ext2,
                // ext4 without one, as on this project's machines) the inode and extent
                // blocks that record where the round's O_DIRECT writes landed are written
                // after that flush, so a power loss could lose them. One fdatasync of a
                // file whose data is already written issues the device flush again.
                // SAFETY: as above.
                if unsafe { libc::fdatasync(fd) } != 0 {
                    return Err(("fdatasync after syncfs", std::io::Error::last_os_error()));
                }
                Ok(())
            })
            .await;
        for index in members {
            let segment = &segments[index];
            outcome[index] = Some(match &synced {
                Ok(()) => Ok(()),
                Err((call, error)) => Err(io::io_error(
                    &segment.path,
                    call,
                    match error.raw_os_error() {
                        Some(code) => std::io::Error::from_raw_os_error(code),
                        None => std::io::Error::new(error.kind(), error.to_string()),
                    },
                )),
            });
        }
    }
    outcome
        .into_iter()
        .map(|outcome| outcome.expect("every segment has an outcome"))
        .collect()
}

/// The segment's device, asked of the kernel once per segment.
fn device_of(segment: &Segment, file: &DmaFile) -> Result<u64, StorageError> {
    if let Some(device) = segment.device.get() {
        return Ok(device);
    }
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `stat` for an open descriptor.
    let result = unsafe { libc::fstat(file.as_raw_fd(), stat.as_mut_ptr()) };
    if result != 0 {
        return Err(io::io_error(
            &segment.path,
            "stat",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: fstat succeeded.
    let device = unsafe { stat.assume_init() }.st_dev;
    segment.device.set(Some(device));
    Ok(device)
}
