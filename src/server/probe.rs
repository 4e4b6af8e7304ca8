//! What a shard tracks about itself for `DescribeBroker` (`spate broker describe`) beside
//! its metrics (`crate::metrics`): its open connections and its waiting long polls.

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
}

impl ShardProbe {
    /// Counts a wait for new data on one of this shard's partitions while the guard lives.
    pub fn long_poll_wait(&self) -> Waiting<'_> {
        self.long_poll_waits.set(self.long_poll_waits.get() + 1);
        Waiting(self)
    }

    pub fn long_poll_waits(&self) -> u32 {
        self.long_poll_waits.get()
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
