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

    #[inline]
    fn pop_front(&mut self) -> Option<T> {
        let item = self.first.take()?;
        // Usually nothing waits behind it: then `first` stays `None` as taken.
        if !self.rest.is_empty() {
            self.first = self.rest.pop_front();
        }
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
        // Moved out, not collected: no allocation when nobody waits, as is usual.
        let mut all = std::mem::take(&mut self.ready_wakers);
        all.extend(self.waiters.drain(..).map(|w| w.waker));
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
    #[inline]
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

    /// Opens the queue again, with a new sender, once every other handle to it is
    /// gone: items still queued are dropped, and the queue, empty and open, carries
    /// another exchange in the same allocation. `None`, and the queue unchanged, while
    /// any sender remains. For a consumer of many short-lived queues that keeps a few
    /// spent receivers instead of dropping them.
    pub fn reopen(&mut self) -> Option<Sender<T>> {
        let shared = Arc::get_mut(&mut self.shared)?;
        let state = shared.state.get_mut().unwrap_or_else(|e| e.into_inner());
        // Usually taken to the end already, with no deque behind: nothing to drop.
        if !state.items.is_empty() || state.items.rest.capacity() > 0 {
            state.items = Items::new();
        }
        state.weight = 0;
        state.senders = 1;
        state.receiver_alive = true;
        state.receiver_waker = None;
        // Both hold only senders' wakers: none is left (and usually none was).
        if !state.waiters.is_empty() {
            state.waiters.clear();
        }
        state.ready_wakers.clear();
        Some(Sender {
            shared: Arc::clone(&self.shared),
        })
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
    #[inline]
    fn pop(mut state: MutexGuard<'_, State<T>>) -> Option<T> {
        let item = state.items.pop_front()?;
        state.weight = state.weight.saturating_sub((state.weigh)(&item));
        if state.waiters.is_empty() && state.ready_wakers.is_empty() {
            // Nobody waits for room, as is usual.
            return Some(item);
        }
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
mod tests;
