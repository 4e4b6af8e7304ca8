//! A first-come, first-served semaphore for tasks on one executor.
//!
//! glommio's `Semaphore` lets a new waiter take units ahead of an earlier one that asked
//! for more (its first poll succeeds whenever enough units are free, and a release wakes
//! any waiter that fits, skipping a larger one in front). Where the order of admission is
//! a promise, that is a bug: two appends to one partition from one connection must reach
//! the log in the order they were sent, and a large one must not starve behind a stream
//! of small ones. Here a waiter is admitted only when every earlier waiter has been.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// The semaphore was closed: no more units are handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the semaphore is closed")]
pub(crate) struct Closed;

pub(crate) struct FifoSemaphore {
    capacity: u64,
    state: RefCell<State>,
}

struct State {
    available: u64,
    closed: bool,
    /// Waiters in arrival order: (ticket, units).
    queue: VecDeque<(u64, u64)>,
    wakers: HashMap<u64, Waker>,
    next_ticket: u64,
}

impl State {
    /// Wakes the first waiter if it can now be admitted (it wakes the next in turn).
    fn wake_head(&mut self) {
        if let Some(&(ticket, units)) = self.queue.front()
            && (units <= self.available || self.closed)
            && let Some(waker) = self.wakers.remove(&ticket)
        {
            waker.wake();
        }
    }
}

/// Units held until dropped.
pub(crate) struct FifoPermit {
    semaphore: Rc<FifoSemaphore>,
    units: u64,
}

impl Drop for FifoPermit {
    fn drop(&mut self) {
        let mut state = self.semaphore.state.borrow_mut();
        state.available += self.units;
        debug_assert!(state.available <= self.semaphore.capacity);
        state.wake_head();
    }
}

/// Takes a waiter out of the queue if its acquire is dropped before it was admitted.
struct Ticket<'a> {
    semaphore: &'a FifoSemaphore,
    ticket: Option<u64>,
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Some(ticket) = self.ticket else { return };
        let mut state = self.semaphore.state.borrow_mut();
        state.wakers.remove(&ticket);
        if let Some(position) = state.queue.iter().position(|&(id, _)| id == ticket) {
            state.queue.remove(position);
            if position == 0 {
                state.wake_head();
            }
        }
    }
}

impl FifoSemaphore {
    pub fn new(capacity: u64) -> FifoSemaphore {
        FifoSemaphore {
            capacity,
            state: RefCell::new(State {
                available: capacity,
                closed: false,
                queue: VecDeque::new(),
                wakers: HashMap::new(),
                next_ticket: 0,
            }),
        }
    }

    /// Waits until `units` are free and every earlier waiter has been served, then takes
    /// them. Asking for more than the capacity asks for all of it. Cancel-safe: dropping
    /// the future gives up the place in the queue.
    pub async fn acquire(self: &Rc<Self>, units: u64) -> Result<FifoPermit, Closed> {
        let units = units.min(self.capacity);
        let mut ticket = Ticket {
            semaphore: self,
            ticket: None,
        };
        poll_fn(|context| {
            let mut state = self.state.borrow_mut();
            if state.closed {
                return Poll::Ready(Err(Closed));
            }
            let first = match ticket.ticket {
                None => state.queue.is_empty(),
                Some(id) => state.queue.front().is_some_and(|&(head, _)| head == id),
            };
            if first && state.available >= units {
                state.available -= units;
                if let Some(id) = ticket.ticket.take() {
                    state.queue.pop_front();
                    state.wakers.remove(&id);
                }
                // The next waiter may fit in what is left.
                state.wake_head();
                return Poll::Ready(Ok(FifoPermit {
                    semaphore: self.clone(),
                    units,
                }));
            }
            let id = *ticket.ticket.get_or_insert_with(|| {
                let id = state.next_ticket;
                state.next_ticket += 1;
                state.queue.push_back((id, units));
                id
            });
            state.wakers.insert(id, context.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Refuses every waiter and every later acquire; permits already held stay valid.
    pub fn close(&self) {
        let mut state = self.state.borrow_mut();
        state.closed = true;
        for (_, waker) in state.wakers.drain() {
            waker.wake();
        }
    }

    /// Units free right now (waiters may be queued for them).
    #[cfg(test)]
    pub fn available(&self) -> u64 {
        self.state.borrow().available
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::Context;

    type Acquire = Pin<Box<dyn Future<Output = Result<FifoPermit, Closed>>>>;

    fn acquire(semaphore: &Rc<FifoSemaphore>, units: u64) -> Acquire {
        let semaphore = semaphore.clone();
        Box::pin(async move { semaphore.acquire(units).await })
    }

    fn poll(future: &mut Acquire) -> Option<FifoPermit> {
        let mut context = Context::from_waker(Waker::noop());
        match future.as_mut().poll(&mut context) {
            Poll::Ready(result) => Some(result.expect("open")),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_small_request_never_overtakes_an_earlier_large_one() {
        let semaphore = Rc::new(FifoSemaphore::new(10));
        let mut first = acquire(&semaphore, 6);
        let held = poll(&mut first).expect("free units");
        let mut large = acquire(&semaphore, 8);
        assert!(poll(&mut large).is_none(), "only 4 free");
        let mut small = acquire(&semaphore, 1);
        assert!(
            poll(&mut small).is_none(),
            "4 units are free, but the larger waiter came first"
        );
        drop(held);
        let large_permit = poll(&mut large).expect("its turn");
        assert_eq!(semaphore.available(), 2);
        let small_permit = poll(&mut small).expect("fits in what is left");
        assert_eq!(semaphore.available(), 1);
        drop((large_permit, small_permit));
        assert_eq!(semaphore.available(), 10);
    }

    #[test]
    fn a_waiter_that_gives_up_lets_the_next_one_in() {
        let semaphore = Rc::new(FifoSemaphore::new(4));
        let mut holder = acquire(&semaphore, 3);
        let held = poll(&mut holder).unwrap();
        let mut impatient = acquire(&semaphore, 4);
        assert!(poll(&mut impatient).is_none());
        let mut patient = acquire(&semaphore, 1);
        assert!(poll(&mut patient).is_none());
        drop(impatient);
        let admitted = poll(&mut patient).expect("first in line, and it fits");
        drop(held);
        assert_eq!(semaphore.available(), 3);
        drop(admitted);
        assert_eq!(semaphore.available(), 4);
    }

    #[test]
    fn oversized_requests_take_everything_and_close_refuses_waiters() {
        let semaphore = Rc::new(FifoSemaphore::new(4));
        let mut all = acquire(&semaphore, 100);
        let everything = poll(&mut all).unwrap();
        assert_eq!(semaphore.available(), 0);
        let mut waiting = acquire(&semaphore, 1);
        assert!(poll(&mut waiting).is_none());
        semaphore.close();
        let mut context = Context::from_waker(Waker::noop());
        assert!(matches!(
            waiting.as_mut().poll(&mut context),
            Poll::Ready(Err(Closed))
        ));
        drop(everything);
        assert_eq!(semaphore.available(), 4);
    }
}
