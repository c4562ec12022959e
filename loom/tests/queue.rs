//! Every interleaving of senders and a receiver (loom explores them): no item lost, no
//! waiter left asleep, order kept. `RUSTFLAGS="--cfg loom" cargo test --release`.
#![cfg(loom)]

use loom::future::block_on;
use loom::thread;
use quay_loom::queue;

/// Explores every interleaving with up to three preemptions: the usual bound, which
/// finds ordering bugs while keeping the search to seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

#[test]
fn two_waiting_senders_and_a_receiver_lose_nothing() {
    model(|| {
        let (tx, mut rx) = queue::channel(1);
        let tx2 = tx.clone();
        let a = thread::spawn(move || block_on(tx.send(1)).unwrap());
        let b = thread::spawn(move || block_on(tx2.send(2)).unwrap());
        let mut got = vec![block_on(rx.recv()).unwrap(), block_on(rx.recv()).unwrap()];
        a.join().unwrap();
        b.join().unwrap();
        got.sort_unstable();
        assert_eq!(got, [1, 2]);
        // Both senders are gone: the end.
        assert_eq!(block_on(rx.recv()), None);
    });
}

#[test]
fn a_sender_waiting_on_a_full_queue_sees_the_receiver_leave() {
    model(|| {
        let (tx, rx) = queue::channel(1);
        tx.try_send(0).unwrap();
        let t = thread::spawn(move || block_on(tx.send(1)));
        drop(rx);
        assert_eq!(t.join().unwrap(), Err(queue::SendError(1)));
    });
}

#[test]
fn one_sender_keeps_its_order_through_a_full_queue() {
    model(|| {
        let (tx, mut rx) = queue::channel(1);
        let t = thread::spawn(move || {
            for i in 0..3 {
                block_on(tx.send(i)).unwrap();
            }
        });
        let got: Vec<i32> = (0..3).map(|_| block_on(rx.recv()).unwrap()).collect();
        t.join().unwrap();
        assert_eq!(got, [0, 1, 2]);
    });
}
