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
fn a_queue_reopens_only_with_every_sender_gone_and_then_starts_empty_and_open() {
    let (tx, mut rx) = weighted(2, 10, |s: &String| s.len());
    let tx2 = tx.clone();
    tx.try_send("abcdef".to_owned()).unwrap();
    tx2.try_send("gh".to_owned()).unwrap();
    rx.close();
    drop(tx);
    // A sender remains: the queue is left as it was.
    assert!(rx.reopen().is_none());
    assert_eq!(rx.try_recv(), Ok("abcdef".to_owned()));
    drop(tx2);
    // The last sender gone, an item still queued: dropped by the reopening.
    let (count, waker) = counter();
    let tx = rx.reopen().expect("no sender left");
    assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
    assert!(!tx.is_closed());
    // Its bounds start from nothing: two items, and ten bytes, fit again.
    tx.try_send("0123456789".to_owned()).unwrap();
    assert!(matches!(
        tx.try_send("x".to_owned()),
        Err(TrySendError::Full(_))
    ));
    assert_eq!(rx.try_recv(), Ok("0123456789".to_owned()));
    tx.try_send("y".to_owned()).unwrap();
    tx.try_send("z".to_owned()).unwrap();
    assert!(tx.poll_ready(&mut Context::from_waker(&waker)).is_pending());
    assert_eq!(rx.try_recv(), Ok("y".to_owned()));
    assert_eq!(count.0.load(Ordering::SeqCst), 1, "the new sender is woken");
    // And it ends as any queue does.
    drop(tx);
    assert_eq!(rx.try_recv(), Ok("z".to_owned()));
    assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
    assert!(rx.reopen().is_some());
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
