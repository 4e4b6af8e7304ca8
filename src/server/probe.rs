//! What a shard counts about itself, for `DescribeBroker` (`spate broker describe`):
//! small cells the hot paths bump, read only when someone asks.

use std::cell::Cell;

use crate::wake::Event;

/// The connections a shard has open; `changed` wakes the shutdown when one closes.
#[derive(Default)]
pub(crate) struct Connections {
    pub open: Cell<usize>,
    pub changed: Event,
}

#[derive(Default)]
pub(crate) struct ShardProbe {
    long_poll_waits: Cell<u32>,
    forwarded_requests: Cell<u64>,
}

impl ShardProbe {
    /// Counts a wait for new data on one of this shard's partitions while the guard lives.
    pub fn long_poll_wait(&self) -> Waiting<'_> {
        self.long_poll_waits.set(self.long_poll_waits.get() + 1);
        Waiting(self)
    }

    /// Counts a partition request sent on to the shard that owns the partition.
    pub fn forwarded(&self) {
        self.forwarded_requests
            .set(self.forwarded_requests.get() + 1);
    }

    pub fn long_poll_waits(&self) -> u32 {
        self.long_poll_waits.get()
    }

    pub fn forwarded_requests(&self) -> u64 {
        self.forwarded_requests.get()
    }
}

/// One wait counted by `ShardProbe::long_poll_wait`, until dropped.
pub(crate) struct Waiting<'a>(&'a ShardProbe);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let waits = &self.0.long_poll_waits;
        waits.set(waits.get() - 1);
    }
}
