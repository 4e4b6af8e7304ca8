//! Two tiny single-threaded wake-up primitives (a log and its waiters share one executor,
//! so no atomics are needed).

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
}
