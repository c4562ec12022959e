//! Spent streams and outbound queues, kept by each thread for its connections' next
//! requests.
//!
//! A request's stream state and the queue its response comes through are each one
//! allocation, made when its head arrives and freed when its response is out: several
//! hundred instructions per request in the allocator alone, when the queue's
//! receiver is the last handle to it (the response's sender gone) and the same
//! allocation can serve the next request as it is. A thread keeps [`KEPT`] of each
//! at most, so what stays allocated is bounded per thread, not per connection: an
//! idle connection holds none.

use std::cell::RefCell;

use quic_app::queue;

use super::stream::Stream;
use crate::body::{OutFrame, SEND_QUEUE};

/// How many streams, and how many queues, a thread keeps.
pub(crate) const KEPT: usize = 64;

/// A response's queue: the sender for its handle, the receiver for its stream.
type OutQueue = (queue::Sender<OutFrame>, queue::Receiver<OutFrame>);

struct Spares {
    #[allow(
        clippy::vec_box,
        reason = "the boxes are what is kept: each is a stream's allocation"
    )]
    streams: Vec<Box<Stream>>,
    queues: Vec<OutQueue>,
}

thread_local! {
    static SPARES: RefCell<Spares> = const {
        RefCell::new(Spares {
            streams: Vec::new(),
            queues: Vec::new(),
        })
    };
}

/// A response's queue, empty and open: a kept one, or a new one.
pub(crate) fn out_queue() -> OutQueue {
    SPARES
        .try_with(|s| s.borrow_mut().queues.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| queue::channel(SEND_QUEUE))
}

/// Takes a stream's spent response queue: kept if nothing else holds it and this
/// thread keeps fewer than [`KEPT`]; dropped otherwise.
pub(crate) fn keep_out_queue(mut rx: queue::Receiver<OutFrame>) {
    let Some(tx) = rx.reopen() else {
        return;
    };
    // During the thread's teardown there is nowhere to keep it: dropped.
    let _ = SPARES.try_with(move |s| {
        let mut s = s.borrow_mut();
        if s.queues.len() < KEPT {
            s.queues.push((tx, rx));
        }
    });
}

/// A new stream, as [`Stream::new`] makes it, in a kept allocation (made new when it
/// was kept: only its outbound queue is set here) or a new one.
pub(crate) fn stream(out_rx: Option<queue::Receiver<OutFrame>>) -> Box<Stream> {
    match SPARES.try_with(|s| s.borrow_mut().streams.pop()) {
        Ok(Some(mut kept)) => {
            kept.set_out(out_rx);
            kept
        }
        _ => Box::new(Stream::new(out_rx)),
    }
}

/// Takes a finished stream: its handles are dropped now, its allocation kept if this
/// thread keeps fewer than [`KEPT`].
pub(crate) fn keep_stream(mut stream: Box<Stream>) {
    *stream = Stream::new(None);
    let _ = SPARES.try_with(move |s| {
        let mut s = s.borrow_mut();
        if s.streams.len() < KEPT {
            s.streams.push(stream);
        }
    });
}

/// Drops what this thread keeps.
#[cfg(test)]
fn clear() {
    SPARES.with_borrow_mut(|s| {
        s.streams.clear();
        s.queues.clear();
    });
}

/// How many streams and queues this thread keeps.
#[cfg(test)]
fn kept() -> (usize, usize) {
    SPARES.with_borrow(|s| (s.streams.len(), s.queues.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_queue_no_one_else_holds_is_kept_and_a_thread_keeps_a_bounded_few() {
        clear();
        // The response's handle still holds its sender: the queue is not kept, and
        // the handle sees its stream gone.
        let (tx, rx) = out_queue();
        keep_out_queue(rx);
        assert_eq!(kept().1, 0);
        assert!(tx.is_closed());
        // Its handle gone: kept, and handed out next, empty and open.
        let (tx, rx) = out_queue();
        tx.try_send(OutFrame::Finish).unwrap();
        drop(tx);
        keep_out_queue(rx);
        assert_eq!(kept().1, 1);
        let (tx, mut rx) = out_queue();
        assert_eq!(kept().1, 0);
        assert!(matches!(rx.try_recv(), Err(queue::TryRecvError::Empty)));
        assert!(!tx.is_closed());
        drop(tx);
        assert!(matches!(
            rx.try_recv(),
            Err(queue::TryRecvError::Disconnected)
        ));
        for _ in 0..KEPT + 3 {
            let (tx, rx) = queue::channel(SEND_QUEUE);
            drop(tx);
            keep_out_queue(rx);
            keep_stream(Box::new(Stream::new(None)));
        }
        assert_eq!(kept(), (KEPT, KEPT));
        let stream = stream(None);
        assert_eq!(kept().0, KEPT - 1);
        keep_stream(stream);
        assert_eq!(kept().0, KEPT);
    }

    #[test]
    fn a_kept_stream_drops_its_handles_as_it_is_kept() {
        clear();
        let (tx, rx) = out_queue();
        let stream = stream(Some(rx));
        keep_stream(stream);
        // The receiver went with the stream: its sender sees the end.
        assert!(tx.is_closed());
        assert_eq!(kept().0, 1);
    }

    #[test]
    fn a_kept_stream_serves_again_as_a_new_one() {
        clear();
        let mut used = stream(None);
        used.head_received = true;
        used.head_sent = true;
        used.received = 512;
        used.expected_len = Some(512);
        keep_stream(used);
        let (_tx, rx) = out_queue();
        let again = stream(Some(rx));
        assert_eq!(kept().0, 0);
        assert!(again.out_rx.is_some() && !again.out_done);
        assert!(!again.head_received && !again.head_sent);
        assert_eq!((again.received, again.expected_len), (0, None));
        keep_stream(again);
        let without = stream(None);
        assert!(without.out_rx.is_none() && without.out_done);
    }
}
