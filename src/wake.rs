//! Tiny single-threaded wake-up primitives. Everything that waits on one of them lives on
//! the same executor as what wakes it (a log and its readers, a shard and its
//! connections), so no atomics are needed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// Wakes the one task that waits on it (the appender). A notification sent while nobody
/// waits is remembered, so none is lost; waiting is cancel-safe.
#[derive(Default)]
pub(crate) struct Notify {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    pub async fn wait(&self) {
        poll_fn(|context| {
            if self.notified.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(context.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Wakes every task waiting for a condition (readers waiting for new data). Waiters
/// re-check their condition when woken. A waiter that gives up (its future is dropped, as
/// on a long-poll timeout) takes its waker out, so the list is bounded by live waiters.
#[derive(Default)]
pub(crate) struct Event {
    wakers: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

impl Event {
    pub fn notify_all(&self) {
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        for waker in wakers.into_values() {
            waker.wake();
        }
    }

    /// Resolves once `ready()` holds, re-checking after every `notify_all`.
    pub async fn wait_until(&self, ready: impl Fn() -> bool) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let _registration = Registration { event: self, id };
        poll_fn(|context| {
            if ready() {
                return Poll::Ready(());
            }
            self.wakers.borrow_mut().insert(id, context.waker().clone());
            Poll::Pending
        })
        .await
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.wakers.borrow().len()
    }
}

/// Resolves once any of `waits` has (the others are dropped with it): a long poll on
/// several partitions wakes for the first that has data.
pub(crate) async fn first_of<F: std::future::Future + Unpin>(mut waits: Vec<F>) {
    poll_fn(|context| {
        for wait in waits.iter_mut() {
            if std::pin::Pin::new(wait).poll(context).is_ready() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    })
    .await
}

/// A flag that is set once and stays set, waking everyone waiting for it (a shard's
/// "stopping", a connection's "closed").
#[derive(Default)]
pub(crate) struct Latch {
    set: Cell<bool>,
    event: Event,
}

impl Latch {
    pub fn set(&self) {
        if !self.set.replace(true) {
            self.event.notify_all();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the latch is set (at once if it already is).
    pub async fn wait(&self) {
        self.event.wait_until(|| self.set.get()).await
    }
}

/// Removes a waiter's waker when its future completes or is dropped.
struct Registration<'a> {
    event: &'a Event,
    id: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.event.wakers.borrow_mut().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::Context;

    #[test]
    fn waiters_that_give_up_leave_nothing_behind() {
        let event = Event::default();
        let mut context = Context::from_waker(Waker::noop());
        for _ in 0..1000 {
            let mut waiting = Box::pin(event.wait_until(|| false));
            assert!(waiting.as_mut().poll(&mut context).is_pending());
            assert_eq!(event.waiting(), 1);
            drop(waiting);
        }
        assert_eq!(event.waiting(), 0);

        let ready = Cell::new(false);
        let mut waiting = pin!(event.wait_until(|| ready.get()));
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        assert!(waiting.as_mut().poll(&mut context).is_pending());
        assert_eq!(event.waiting(), 1, "polling again replaces, not adds");
        ready.set(true);
        event.notify_all();
        assert!(waiting.as_mut().poll(&mut context).is_ready());
        assert_eq!(event.waiting(), 0);
    }

    #[test]
    fn a_latch_wakes_every_waiter_and_stays_set() {
        let latch = Latch::default();
        let mut context = Context::from_waker(Waker::noop());
        let mut first = Box::pin(latch.wait());
        let mut second = Box::pin(latch.wait());
        assert!(first.as_mut().poll(&mut context).is_pending());
        assert!(second.as_mut().poll(&mut context).is_pending());
        assert!(!latch.is_set());
        latch.set();
        assert!(first.as_mut().poll(&mut context).is_ready());
        assert!(second.as_mut().poll(&mut context).is_ready());
        assert!(pin!(latch.wait()).poll(&mut context).is_ready());
        assert!(latch.is_set());
    }
}
