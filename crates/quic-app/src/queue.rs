//! A small bounded queue between tasks, for plumbing that exists once per connection
//! or once per stream.
//!
//! A protocol driver keeps a few queues per connection (datagrams in, commands in,
//! requests out) and one or two per request stream. `tokio::sync::mpsc` allocates a
//! block of 32 slots and a cache-padded channel head up front (about 1–4 KB per
//! channel, aligned allocations included), which dominates the memory of an idle
//! connection and the allocations of a short request. This queue costs one small
//! allocation (about 100 bytes); one item at a time is held in place, and storage is
//! allocated only for a second item waiting behind the first, growing only as far
//! as the items actually queued. (A request's body of one chunk, or its response,
//! passes through without an allocation of its own.)
//!
//! Any number of [`Sender`]s, one [`Receiver`]. Sending waits while the queue is full
//! ([`Sender::send`]) or fails at once ([`Sender::try_send`]). Waiting senders are
//! served in order: each item taken out wakes the first waiting sender only, and a
//! sender dropped after it was woken passes its turn on. When every sender is
//! gone the receiver drains what is left and then sees the end; when the receiver is
//! gone, sends fail and hand the item back.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let (tx, mut rx) = quic_app::queue::channel(2);
//! tx.send(1).await.unwrap();
//! tx.try_send(2).unwrap();
//! assert!(matches!(tx.try_send(3), Err(quic_app::queue::TrySendError::Full(3))));
//! drop(tx);
//! assert_eq!(rx.recv().await, Some(1));
//! assert_eq!(rx.recv().await, Some(2));
//! assert_eq!(rx.recv().await, None);
//! # });
//! ```

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[cfg(loom)]
use loom::sync::{Arc, Mutex, MutexGuard};
#[cfg(not(loom))]
use std::sync::{Arc, Mutex, MutexGuard};

/// Creates a queue holding at most `capacity` items (at least one).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    weighted(capacity, usize::MAX, |_| 0)
}

/// Creates a queue holding at most `capacity` items (at least one) whose weights, as
/// `weigh` tells them (bytes, say), add up to at most `max_weight`. An item heavier
/// than `max_weight` still fits into an empty queue, so nothing is refused forever.
pub fn weighted<T>(
    capacity: usize,
    max_weight: usize,
    weigh: fn(&T) -> usize,
) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: Items::new(),
            weight: 0,
            max_weight,
            weigh,
            capacity: capacity.max(1),
            senders: 1,
            receiver_alive: true,
            receiver_waker: None,
            waiters: VecDeque::new(),
            next_waiter: 0,
            ready_wakers: Vec::new(),
        }),
    });
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
}

/// The queued items, oldest first: the oldest held in place, any behind it in a
/// deque that is only allocated once two items wait together.
struct Items<T> {
    first: Option<T>,
    /// Items queued behind `first`; never non-empty while `first` is `None`.
    rest: VecDeque<T>,
}

impl<T> Items<T> {
    const fn new() -> Self {
        Self {
            first: None,
            rest: VecDeque::new(),
        }
    }

    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.first.iter().chain(self.rest.iter())
    }

    fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    fn push_back(&mut self, value: T) {
        if self.first.is_none() {
            self.first = Some(value);
        } else {
            self.rest.push_back(value);
        }
    }

    fn pop_front(&mut self) -> Option<T> {
        let item = self.first.take()?;
        self.first = self.rest.pop_front();
        Some(item)
    }

    /// Moves the `n` oldest items (at most `len`) to the back of `out`.
    fn move_to(&mut self, out: &mut VecDeque<T>, n: usize) {
        if n == 0 {
            return;
        }
        let Some(first) = self.first.take() else {
            return;
        };
        out.push_back(first);
        let more = (n - 1).min(self.rest.len());
        out.extend(self.rest.drain(..more));
        self.first = self.rest.pop_front();
    }
}

struct State<T> {
    items: Items<T>,
    /// The weight of the items queued.
    weight: usize,
    max_weight: usize,
    weigh: fn(&T) -> usize,
    capacity: usize,
    senders: usize,
    receiver_alive: bool,
    receiver_waker: Option<Waker>,
    /// [`Sender::send`] calls waiting for room, first come first served.
    waiters: VecDeque<Waiter>,
    next_waiter: u64,
    /// [`Sender::poll_ready`] callers, woken (all) whenever an item leaves.
    ready_wakers: Vec<Waker>,
}

/// A [`Sender::send`] waiting for room.
struct Waiter {
    id: u64,
    waker: Waker,
    /// The weight of the item it waits to queue.
    weight: usize,
    /// Woken for a free slot and not yet back: its turn.
    notified: bool,
}

impl<T> State<T> {
    /// Whether an item of weight `w` fits now.
    fn fits(&self, w: usize) -> bool {
        self.items.is_empty()
            || (self.items.len() < self.capacity
                && self.weight.saturating_add(w) <= self.max_weight)
    }

    /// Whether the queue is full for any item (the item count is at its bound, or the
    /// weight is).
    fn full(&self) -> bool {
        !self.items.is_empty()
            && (self.items.len() >= self.capacity || self.weight >= self.max_weight)
    }

    fn push(&mut self, value: T) {
        self.weight = self.weight.saturating_add((self.weigh)(&value));
        self.items.push_back(value);
    }

    /// Gives waiting senders, in order, as many turns as there is room for (the turns
    /// already out counted); returns their wakers, to wake outside the lock. A sender
    /// whose item does not fit yet stops the handing out: those behind it wait too.
    fn notify_next(&mut self) -> Vec<Waker> {
        let (mut count, mut weight) = (self.items.len(), self.weight);
        for w in self.waiters.iter().filter(|w| w.notified) {
            count += 1;
            weight = weight.saturating_add(w.weight);
        }
        let mut wake = Vec::new();
        for w in self.waiters.iter_mut().filter(|w| !w.notified) {
            let fits = count == 0
                || (count < self.capacity && weight.saturating_add(w.weight) <= self.max_weight);
            if !fits {
                break;
            }
            count += 1;
            weight = weight.saturating_add(w.weight);
            w.notified = true;
            wake.push(w.waker.clone());
        }
        wake
    }

    /// Everyone waiting for room, to wake outside the lock (the receiver left).
    fn take_all_wakers(&mut self) -> Vec<Waker> {
        let mut all: Vec<Waker> = self.waiters.drain(..).map(|w| w.waker).collect();
        all.append(&mut self.ready_wakers);
        all
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // No code holding the lock can panic midway through an update, but a panic
        // elsewhere must not make the queue unusable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn register(slot: &mut Option<Waker>, waker: &Waker) {
    match slot {
        Some(w) if w.will_wake(waker) => {}
        _ => *slot = Some(waker.clone()),
    }
}

fn register_sender(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

/// Why [`Sender::try_send`] failed; either way the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds `capacity` items.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// [`Sender::send`] failed: the receiver is gone. The item comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct SendError<T>(pub T);

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued now; senders remain.
    Empty,
    /// Nothing queued, and every sender is gone.
    Disconnected,
}

/// The sending side; clone it for more senders.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `value` now, or says why not.
    pub fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        self.try_send_with(value, |v, _| v)
    }

    /// Queues `value` now, or says why not, after `prepare` has seen it with the
    /// number of items queued before it (under the queue's lock: keep it short, and
    /// keep the value's weight).
    pub fn try_send_with(
        &self,
        value: T,
        prepare: impl FnOnce(T, usize) -> T,
    ) -> Result<(), TrySendError<T>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Closed(value));
        }
        if !state.fits((state.weigh)(&value)) {
            return Err(TrySendError::Full(value));
        }
        let value = prepare(value, state.items.len());
        state.push(value);
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues each item of `values` that fits, under one lock, waking the receiver
    /// once: for a burst of items that arrive together. `prepare` sees each item with
    /// the number queued before it, as in [`try_send_with`](Self::try_send_with)
    /// (under the lock: keep it short, and keep the weight). An item that does not fit
    /// goes to `refused` with the reason, also under the lock; the items after it are
    /// still tried, each on its own merits. Returns how many were queued.
    pub fn try_send_each(
        &self,
        values: impl IntoIterator<Item = T>,
        mut prepare: impl FnMut(T, usize) -> T,
        mut refused: impl FnMut(TrySendError<T>),
    ) -> usize {
        let mut state = self.shared.lock();
        let mut queued = 0;
        for value in values {
            if !state.receiver_alive {
                refused(TrySendError::Closed(value));
            } else if !state.fits((state.weigh)(&value)) {
                refused(TrySendError::Full(value));
            } else {
                let value = prepare(value, state.items.len());
                state.push(value);
                queued += 1;
            }
        }
        let waker = if queued > 0 {
            state.receiver_waker.take()
        } else {
            None
        };
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        queued
    }

    /// Queues `value` even when the queue is full: for the last item of a stream (the
    /// error that ends it), which must not be lost to a full queue. Fails only when
    /// the receiver is gone. Meant for once, at the end: each call may exceed the
    /// capacity by one.
    pub fn send_last(&self, value: T) -> Result<(), SendError<T>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Err(SendError(value));
        }
        state.push(value);
        let waker = state.receiver_waker.take();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `value`, waiting while the queue is full; senders that wait are served
    /// in the order they started waiting. Cancel safe: dropped before it completes,
    /// the value was not queued (and a turn it was given passes to the next sender).
    pub fn send(&self, value: T) -> impl Future<Output = Result<(), SendError<T>>> + '_ {
        SendFut {
            shared: &self.shared,
            value: Some(value),
            id: None,
        }
    }

    /// Ready when an item can be queued now (`Ok`) or never (`Err`: the receiver is
    /// gone); otherwise registers `cx` to be woken when an item leaves.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        let mut state = self.shared.lock();
        if !state.receiver_alive {
            return Poll::Ready(Err(()));
        }
        if !state.full() {
            return Poll::Ready(Ok(()));
        }
        register_sender(&mut state.ready_wakers, cx.waker());
        Poll::Pending
    }

    /// Whether an item can be queued now (of weight zero, in a weighted queue).
    pub fn has_room(&self) -> bool {
        let state = self.shared.lock();
        state.receiver_alive && !state.full()
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.shared.lock().receiver_alive
    }
}

/// The future of [`Sender::send`].
struct SendFut<'a, T> {
    shared: &'a Shared<T>,
    value: Option<T>,
    /// Its place among the waiting senders, once it waits.
    id: Option<u64>,
}

// The value is never pinned: it is only moved out by `take`.
impl<T> Unpin for SendFut<'_, T> {}

impl<T> Future for SendFut<'_, T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut state = this.shared.lock();
        let value = this.value.as_ref().expect("polled after completion");
        if !state.receiver_alive {
            this.id = None;
            return Poll::Ready(Err(SendError(this.value.take().expect("checked above"))));
        }
        // Its turn: it was woken for a slot, or nobody waits before it.
        let at = this
            .id
            .and_then(|id| state.waiters.iter().position(|w| w.id == id));
        let turn = match at {
            Some(i) => state.waiters[i].notified,
            None => state.waiters.is_empty(),
        };
        if turn && state.fits((state.weigh)(value)) {
            if let Some(i) = at {
                state.waiters.remove(i);
            }
            this.id = None;
            state.push(this.value.take().expect("checked above"));
            let receiver = state.receiver_waker.take();
            drop(state);
            if let Some(w) = receiver {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        let weight = (state.weigh)(value);
        match at {
            Some(i) => {
                // Its turn came but its item does not fit (another sender's
                // `try_send` took the room): it waits again, first in line.
                let w = &mut state.waiters[i];
                w.notified = false;
                if !w.waker.will_wake(cx.waker()) {
                    w.waker = cx.waker().clone();
                }
            }
            None => {
                let id = state.next_waiter;
                state.next_waiter += 1;
                state.waiters.push_back(Waiter {
                    id,
                    waker: cx.waker().clone(),
                    weight,
                    notified: false,
                });
                this.id = Some(id);
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for SendFut<'_, T> {
    fn drop(&mut self) {
        let Some(id) = self.id else { return };
        let mut state = self.shared.lock();
        if let Some(i) = state.waiters.iter().position(|w| w.id == id) {
            state.waiters.remove(i);
        }
        // If it held a turn, the next sender gets it.
        let next = state.notify_next();
        drop(state);
        next.into_iter().for_each(Waker::wake);
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.senders -= 1;
        let waker = (state.senders == 0)
            .then(|| state.receiver_waker.take())
            .flatten();
        drop(state);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The receiving side.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once every sender is gone and the queue
    /// is empty. Cancel safe.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next item; see [`recv`](Self::recv).
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.lock();
        if state.items.is_empty() {
            if state.senders == 0 {
                return Poll::Ready(None);
            }
            register(&mut state.receiver_waker, cx.waker());
            return Poll::Pending;
        }
        Poll::Ready(Self::pop(state))
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let state = self.shared.lock();
        if state.items.is_empty() {
            return Err(if state.senders == 0 {
                TryRecvError::Disconnected
            } else {
                TryRecvError::Empty
            });
        }
        Self::pop(state).ok_or(TryRecvError::Empty)
    }

    /// Takes the oldest item if `pred` accepts it (seen under the lock: keep it
    /// short); otherwise leaves the queue as it was. For a consumer that handles two
    /// items together when the second is already there.
    pub fn take_if(&mut self, pred: impl FnOnce(&T) -> bool) -> Option<T> {
        let state = self.shared.lock();
        if !state.items.first.as_ref().is_some_and(pred) {
            return None;
        }
        Self::pop(state)
    }

    /// Moves up to `max` queued items, oldest first, to the back of `out` under one
    /// lock, and returns how many. Senders waiting for room are woken once, for all of
    /// them. For a consumer that handles items in bursts: the queue's bounds no longer
    /// count what sits in `out`, so `max` should be what the caller handles before it
    /// next waits. Never waits; 0 when nothing is queued (see
    /// [`try_recv`](Self::try_recv) for whether senders remain).
    pub fn take_up_to(&mut self, out: &mut VecDeque<T>, max: usize) -> usize {
        self.take_within(out, max, |_| 1)
    }

    /// As [`take_up_to`](Self::take_up_to), with items of different sizes: moves the
    /// oldest items while their `cost`s add up to at most `budget`, and the oldest one
    /// whatever its cost (so an item costlier than any budget still leaves). 0 when
    /// `budget` is 0 or nothing is queued.
    pub fn take_within(
        &mut self,
        out: &mut VecDeque<T>,
        budget: usize,
        cost: impl Fn(&T) -> usize,
    ) -> usize {
        if budget == 0 {
            return 0;
        }
        let mut state = self.shared.lock();
        let mut n = 0;
        let mut spent = 0usize;
        for item in state.items.iter() {
            let c = cost(item);
            if n > 0 && spent.saturating_add(c) > budget {
                break;
            }
            n += 1;
            spent = spent.saturating_add(c);
            if spent >= budget {
                break;
            }
        }
        if n == 0 {
            return 0;
        }
        // Moved, not swapped: the queue keeps its own storage, so the items' next
        // owner never hands the queue a larger buffer than it had.
        let start = out.len();
        state.items.move_to(out, n);
        if state.items.is_empty() {
            state.weight = 0;
        } else {
            let weigh = state.weigh;
            let taken = out
                .range(start..)
                .fold(0usize, |sum, item| sum.saturating_add(weigh(item)));
            state.weight = state.weight.saturating_sub(taken);
        }
        let next = state.notify_next();
        let ready = std::mem::take(&mut state.ready_wakers);
        drop(state);
        next.into_iter().chain(ready).for_each(Waker::wake);
        n
    }

    /// Refuses further items (sends fail from now on) while those already queued can
    /// still be taken.
    pub fn close(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        let wakers = state.take_all_wakers();
        drop(state);
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes the first item (the caller saw one under this lock) and releases the
    /// lock; senders waiting for room are woken, outside the lock, when the item leaves
    /// a full queue.
    fn pop(mut state: MutexGuard<'_, State<T>>) -> Option<T> {
        let item = state.items.pop_front()?;
        state.weight = state.weight.saturating_sub((state.weigh)(&item));
        let next = state.notify_next();
        // Moved out, not copied: no allocation when only `poll_ready` waits.
        let ready = std::mem::take(&mut state.ready_wakers);
        drop(state);
        next.into_iter().chain(ready).for_each(Waker::wake);
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.receiver_alive = false;
        let items = std::mem::replace(&mut state.items, Items::new());
        state.weight = 0;
        let wakers = state.take_all_wakers();
        drop(state);
        // Outside the lock: an item's drop may touch other queues.
        drop(items);
        wakers.into_iter().for_each(Waker::wake);
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counter() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&c), Waker::from(c))
    }

    #[test]
    fn order_holds_across_the_item_held_in_place_and_those_behind_it() {
        let (tx, mut rx) = channel(1000);
        let mut next = 0;
        let mut expected = VecDeque::new();
        let mut out = VecDeque::new();
        // Sends, receives and burst takes interleaved in every pattern up to a few
        // items deep; everything comes out once, in the order it went in.
        for round in 0..200usize {
            for _ in 0..round % 4 {
                tx.try_send(next).unwrap();
                expected.push_back(next);
                next += 1;
            }
            match round % 3 {
                0 => assert_eq!(rx.try_recv().ok(), expected.pop_front()),
                1 => {
                    let n = rx.take_up_to(&mut out, round % 5);
                    assert_eq!(n, expected.len().min(round % 5));
                    for _ in 0..n {
                        assert_eq!(out.pop_front(), expected.pop_front());
                    }
                }
                _ => {}
            }
        }
        while let Some(want) = expected.pop_front() {
            assert_eq!(rx.try_recv(), Ok(want));
        }
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        assert!(out.is_empty());
    }

    #[test]
    fn try_send_each_queues_what_fits_in_order_and_wakes_once() {
        let (tx, mut rx) = weighted(3, 10, |v: &usize| *v);
        let (count, waker) = counter();
        assert!(rx.poll_recv(&mut Context::from_waker(&waker)).is_pending());
        let mut refused = Vec::new();
        let mut seen = Vec::new();
        // 4 fits, 7 would pass the weight bound, 5 fits, then the count bound refuses 1.
        let queued = tx.try_send_each(
            [4, 7, 5, 1, 0],
            |v, before| {
                seen.push(before);
                v
            },
            |e| refused.push(e),
        );
        assert_eq!(queued, 3);
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(
            refused,
            [TrySendError::Full(7), TrySendError::Full(0)],
            "the item after a refused one is still tried"
        );
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "one wake for the burst");
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Ok(5));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(rx);
        let mut closed = Vec::new();
        assert_eq!(tx.try_send_each([2, 3], |v, _| v, |e| closed.push(e)), 0);
        assert_eq!(closed, [TrySendError::Closed(2), TrySendError::Closed(3)]);
    }

    #[test]
    fn take_within_keeps_to_the_budget_but_always_takes_the_oldest() {
        let (tx, mut rx) = channel(16);
        for v in [3usize, 2, 4, 1, 9] {
            tx.try_send(v).unwrap();
        }
        let mut out = VecDeque::new();
        assert_eq!(rx.take_within(&mut out, 0, |v| *v), 0);
        // 3 + 2 = 5 fits a budget of 6; 4 more would not.
        assert_eq!(rx.take_within(&mut out, 6, |v| *v), 2);
        assert_eq!(out, [3, 2]);
        // The oldest goes even when it alone is over the budget.
        assert_eq!(rx.take_within(&mut out, 1, |v| *v), 1);
        assert_eq!(out, [3, 2, 4]);
        assert_eq!(rx.take_within(&mut out, 100, |v| *v), 2);
        assert_eq!(out, [3, 2, 4, 1, 9]);
        assert_eq!(rx.take_within(&mut out, 100, |v| *v), 0);
        // The queue's weight and room follow what left.
        for v in 0..16 {
            tx.try_send(v).unwrap();
        }
        assert!(!tx.has_room());
        assert_eq!(rx.take_within(&mut out, 3, |_| 1), 3);
        assert!(tx.has_room());
    }

    #[test]
    fn take_if_takes_only_an_accepted_oldest_item() {
        let (tx, mut rx) = channel(2);
        assert_eq!(rx.take_if(|_| true), None);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(rx.take_if(|v| *v == 2), None);
        assert!(!tx.has_room());
        assert_eq!(rx.take_if(|v| *v == 1), Some(1));
        // The item left frees its slot.
        assert!(tx.has_room());
        assert_eq!(rx.try_recv(), Ok(2));
    }

    #[test]
    fn items_come_out_in_order_and_the_end_follows_the_last_sender() {
        let (tx, mut rx) = channel(4);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        tx2.try_send(2).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn a_full_queue_refuses_and_returns_the_item() {
        let (tx, mut rx) = channel(2);
        tx.try_send("a").unwrap();
        tx.try_send("b").unwrap();
        assert!(!tx.has_room());
        assert_eq!(tx.try_send("c"), Err(TrySendError::Full("c")));
        assert_eq!(rx.try_recv(), Ok("a"));
        assert!(tx.has_room());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_send("d"), Err(TrySendError::Closed("d")));
    }

    #[test]
    fn the_last_item_goes_in_even_when_the_queue_is_full() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).unwrap();
        tx.send_last(2).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        let (tx, rx) = channel(1);
        drop(rx);
        assert_eq!(tx.send_last(3), Err(SendError(3)));
    }

    #[test]
    fn zero_capacity_holds_one_item() {
        let (tx, _rx) = channel(0);
        tx.try_send(()).unwrap();
        assert_eq!(tx.try_send(()), Err(TrySendError::Full(())));
    }

    #[test]
    fn the_receiver_is_woken_by_an_item_and_by_the_last_sender_leaving() {
        let (tx, mut rx) = channel::<u8>(1);
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_recv(&mut cx).is_pending());
        tx.try_send(7).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(7)));
        assert!(rx.poll_recv(&mut cx).is_pending());
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn a_waiting_sender_is_woken_when_room_appears_or_the_receiver_leaves() {
        let (tx, mut rx) = channel(1);
        tx.try_send(1).unwrap();
        let (count, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_ready(&mut cx).is_pending());
        // Registering twice keeps one waker.
        assert!(tx.poll_ready(&mut cx).is_pending());
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Ok(())));
        tx.try_send(2).unwrap();
        assert!(tx.poll_ready(&mut cx).is_pending());
        drop(rx);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert_eq!(tx.poll_ready(&mut cx), Poll::Ready(Err(())));
    }

    #[test]
    fn a_closed_receiver_refuses_new_items_and_keeps_queued_ones() {
        let (tx, mut rx) = channel(4);
        tx.try_send(1).unwrap();
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(2), Err(TrySendError::Closed(2)));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn items_left_behind_are_dropped_with_the_receiver() {
        let item = Arc::new(());
        let (tx, rx) = channel(2);
        tx.try_send(Arc::clone(&item)).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    #[tokio::test]
    async fn send_waits_for_room_across_tasks() {
        let (tx, mut rx) = channel(1);
        let producer = tokio::spawn(async move {
            for i in 0..100u32 {
                tx.send(i).await.unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(v) = rx.recv().await {
            got.push(v);
        }
        producer.await.unwrap();
        assert_eq!(got, (0..100).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_on_threads_lose_no_item_and_no_wakeup() {
        let (tx, mut rx) = channel(8);
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..10_000u64 {
                        tx.send(p * 1_000_000 + i).await.unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let consume = async {
            let (mut count, mut sum) = (0u64, 0u64);
            while let Some(v) = rx.recv().await {
                count += 1;
                sum += v;
            }
            (count, sum)
        };
        let (count, sum) = tokio::time::timeout(std::time::Duration::from_secs(60), consume)
            .await
            .expect("no wakeup lost");
        for p in producers {
            p.await.unwrap();
        }
        let per_producer: u64 = (0..10_000u64).sum();
        assert_eq!(count, 40_000);
        assert_eq!(sum, 4 * per_producer + 10_000 * (1 + 2 + 3) * 1_000_000);
    }

    #[tokio::test]
    async fn send_to_a_dropped_receiver_hands_the_item_back() {
        let (tx, rx) = channel(1);
        drop(rx);
        assert_eq!(tx.send(5).await, Err(SendError(5)));
    }

    #[test]
    fn a_weighted_queue_is_bounded_by_weight_as_well_as_count() {
        let (tx, mut rx) = weighted(100, 10, |v: &Vec<u8>| v.len());
        tx.try_send(vec![0; 6]).unwrap();
        tx.try_send(vec![0; 4]).unwrap();
        // Full by weight with two items of a hundred.
        assert!(matches!(
            tx.try_send(vec![0; 1]),
            Err(TrySendError::Full(_))
        ));
        assert!(!tx.has_room());
        assert_eq!(rx.try_recv().unwrap().len(), 6);
        tx.try_send(vec![0; 6]).unwrap();
        assert_eq!(rx.try_recv().unwrap().len(), 4);
        assert_eq!(rx.try_recv().unwrap().len(), 6);
        // An item heavier than the bound still goes into an empty queue, alone.
        tx.try_send(vec![0; 50]).unwrap();
        assert!(matches!(
            tx.try_send(Vec::new()),
            Err(TrySendError::Full(_))
        ));
        assert_eq!(rx.try_recv().unwrap().len(), 50);
        tx.try_send(Vec::new()).unwrap();
    }

    #[test]
    fn waiting_senders_are_served_in_order_one_wake_per_free_slot() {
        let (tx, mut rx) = channel(1);
        tx.try_send(0).unwrap();
        let (c1, w1) = counter();
        let (c2, w2) = counter();
        let (c3, w3) = counter();
        type Send<'a> = Pin<Box<dyn Future<Output = Result<(), SendError<i32>>> + 'a>>;
        let mut f1: Send<'_> = Box::pin(tx.send(1));
        let mut f2: Send<'_> = Box::pin(tx.send(2));
        let mut f3: Send<'_> = Box::pin(tx.send(3));
        let poll =
            |f: &mut Send<'_>, w: &Waker| f.as_mut().poll(&mut Context::from_waker(w)).is_ready();
        assert!(!poll(&mut f1, &w1));
        assert!(!poll(&mut f2, &w2));
        assert!(!poll(&mut f3, &w3));
        assert_eq!(rx.try_recv(), Ok(0));
        // One slot, one wake: the first in line.
        let counts = |c: &[&Arc<Count>]| {
            c.iter()
                .map(|c| c.0.load(Ordering::SeqCst))
                .collect::<Vec<_>>()
        };
        assert_eq!(counts(&[&c1, &c2, &c3]), [1, 0, 0]);
        // A later sender polled meanwhile does not jump the line.
        assert!(!poll(&mut f3, &w3));
        assert!(poll(&mut f1, &w1));
        assert_eq!(rx.try_recv(), Ok(1));
        assert_eq!(counts(&[&c1, &c2, &c3]), [1, 1, 0]);
        // Dropped with its turn, the second sender passes it on.
        drop(f2);
        assert_eq!(counts(&[&c1, &c2, &c3]), [1, 1, 1]);
        assert!(poll(&mut f3, &w3));
        assert_eq!(rx.try_recv(), Ok(3));
    }

    #[test]
    fn a_waiting_sender_whose_item_does_not_fit_waits_without_spinning() {
        let (tx, mut rx) = weighted(10, 10, |v: &Vec<u8>| v.len());
        tx.try_send(vec![0; 6]).unwrap();
        let (c, w) = counter();
        let mut f = Box::pin(tx.send(vec![0; 6]));
        let mut cx = Context::from_waker(&w);
        assert!(f.as_mut().poll(&mut cx).is_pending());
        // Room for weight 4 only: polled again, it neither fits nor wakes itself.
        assert!(f.as_mut().poll(&mut cx).is_pending());
        assert_eq!(c.0.load(Ordering::SeqCst), 0);
        assert_eq!(rx.try_recv().unwrap().len(), 6);
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        assert!(f.as_mut().poll(&mut cx).is_ready());
    }
    #[test]
    fn take_up_to_moves_a_bounded_run_in_order_and_frees_its_weight() {
        let (tx, mut rx) = weighted(4, 10, |v: &Vec<u8>| v.len());
        for n in 1..=4 {
            tx.try_send(vec![0; n]).unwrap();
        }
        assert!(matches!(
            tx.try_send(vec![0; 1]),
            Err(TrySendError::Full(_))
        ));
        let (c, w) = counter();
        assert!(tx.poll_ready(&mut Context::from_waker(&w)).is_pending());
        let mut out = VecDeque::new();
        // Part of the queue: the two oldest, and their weight (3) is free again.
        assert_eq!(rx.take_up_to(&mut out, 2), 2);
        assert_eq!(out.iter().map(Vec::len).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(c.0.load(Ordering::SeqCst), 1);
        tx.try_send(vec![0; 3]).unwrap();
        assert!(matches!(
            tx.try_send(vec![0; 1]),
            Err(TrySendError::Full(_))
        ));
        // The rest, behind what `out` already holds.
        assert_eq!(rx.take_up_to(&mut out, 10), 3);
        assert_eq!(
            out.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 2, 3, 4, 3]
        );
        assert_eq!(rx.take_up_to(&mut out, 10), 0);
        // Empty again, weight and count both: a full load fits.
        tx.try_send(vec![0; 10]).unwrap();
        out.clear();
        // The whole queue into an empty `out`.
        assert_eq!(rx.take_up_to(&mut out, 10), 1);
        assert_eq!(out.pop_front().map(|v| v.len()), Some(10));
        for _ in 0..4 {
            tx.try_send(vec![0; 2]).unwrap();
        }
        drop(tx);
        assert_eq!(rx.take_up_to(&mut out, 0), 0);
        assert_eq!(rx.take_up_to(&mut out, 4), 4);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[tokio::test]
    async fn take_up_to_wakes_a_waiting_sender() {
        let (tx, mut rx) = channel(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        let sender = tokio::spawn(async move {
            tx.send(3).await.unwrap();
            tx.send(4).await.unwrap();
        });
        tokio::task::yield_now().await;
        let mut out = VecDeque::new();
        while out.len() < 4 {
            if rx.take_up_to(&mut out, 2) == 0 {
                tokio::task::yield_now().await;
            }
        }
        sender.await.unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
    }
}
