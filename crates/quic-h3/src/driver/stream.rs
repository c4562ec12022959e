use std::task::{Context, Poll};

use quic_app::queue;
use tokio::sync::oneshot;

use bytes::Bytes;

use crate::body::{InFrame, InResult, OutFrame};
use crate::datagram::FlowEnd;
use crate::{RecvBody, StreamError};

/// Informational (1xx) responses queued for a client's [`ResponseFuture`](crate::ResponseFuture);
/// more are dropped.
pub(crate) const INFORMATIONAL_QUEUE: usize = 8;

/// The client's waiter for a response head.
pub(crate) type ResponseTx = oneshot::Sender<Result<http::Response<RecvBody>, StreamError>>;

/// One request stream as the driver sees it.
pub(crate) struct Stream {
    /// Towards the stream's [`RecvBody`]; `None` once the inbound side ended.
    body_tx: Option<queue::Sender<InResult>>,
    /// One frame waiting for room in `body_tx` (trailers, an error).
    pending_in: Option<InResult>,
    /// The request's head waits for the end of the read pass, its body kept here
    /// instead of a queue: a body complete by then goes to the handler whole, with
    /// no queue at all.
    pub(crate) holding: bool,
    /// While `holding`, the body's first chunk (quiche keeps the rest).
    held: Option<Bytes>,
    /// quiche has body bytes for us that we have not read.
    pub(crate) readable: bool,
    /// The peer finished its side (FIN read).
    pub(crate) in_finished: bool,
    /// Nothing more goes to the body.
    pub(crate) in_done: bool,
    /// From the sending handle; `None` once it ended.
    pub(crate) out_rx: Option<queue::Receiver<OutFrame>>,
    /// The frame being written.
    pub(crate) pending_out: Option<OutFrame>,
    /// The handle went away without finishing.
    pub(crate) out_closed_early: bool,
    /// Our side is finished (or reset).
    pub(crate) out_done: bool,
    /// Whether the head (request or final response) arrived.
    pub(crate) head_received: bool,
    /// Whether a response head (informational or final) went out.
    pub(crate) head_sent: bool,
    /// The client's waiter for the response head.
    pub(crate) response_tx: Option<ResponseTx>,
    /// Body bytes received so far.
    pub(crate) received: u64,
    /// The most body bytes accepted, if limited.
    pub(crate) body_limit: Option<u64>,
    /// The body's length as its head's `content-length` announced it.
    pub(crate) expected_len: Option<u64>,
    /// A client's HEAD request: the response's `content-length` describes no body.
    pub(crate) head_request: bool,
    /// The connection closed: what quiche still holds for the body goes to it past
    /// the queue's bound, in one last pass.
    pub(crate) last_pass: bool,
    /// The client's channel for informational (1xx) responses, until the final one.
    pub(crate) info_tx: Option<queue::Sender<http::Response<()>>>,
    /// The stream's HTTP Datagram flow (extended CONNECT only).
    pub(crate) flow: Option<FlowEnd>,
    /// A datagram taken from the flow that did not fit in quiche's queue yet.
    pub(crate) pending_dgram: Option<Bytes>,
}

impl Stream {
    pub(crate) fn new(out_rx: Option<queue::Receiver<OutFrame>>) -> Self {
        Self {
            body_tx: None,
            pending_in: None,
            holding: false,
            held: None,
            readable: false,
            in_finished: false,
            in_done: false,
            out_done: out_rx.is_none(),
            out_rx,
            pending_out: None,
            out_closed_early: false,
            head_received: false,
            head_sent: false,
            response_tx: None,
            received: 0,
            body_limit: None,
            expected_len: None,
            head_request: false,
            last_pass: false,
            info_tx: None,
            flow: None,
            pending_dgram: None,
        }
    }

    /// Gives a stream [`new`](Self::new) made without an outbound queue the one
    /// `new(out_rx)` would have: the two are then the same.
    pub(crate) fn set_out(&mut self, out_rx: Option<queue::Receiver<OutFrame>>) {
        self.out_done = out_rx.is_none();
        self.out_rx = out_rx;
    }

    /// Creates the inbound body channel and returns the body for the user. With
    /// `more_frames` false the body is empty and complete.
    pub(crate) fn open_body(&mut self, more_frames: bool) -> RecvBody {
        if !more_frames {
            self.in_done = true;
            return RecvBody::empty();
        }
        let (tx, rx) = queue::channel(crate::body::RECV_QUEUE);
        self.body_tx = Some(tx);
        RecvBody::new(rx)
    }

    /// Ends `holding`: the body, whole if the peer finished it and everything arrived
    /// in one chunk, else on a queue that takes what was kept.
    pub(crate) fn release(&mut self) -> RecvBody {
        self.holding = false;
        let first = self.held.take();
        if self.all_read() {
            self.in_done = true;
            return RecvBody::complete(first);
        }
        let body = self.open_body(true);
        if let Some(chunk) = first {
            self.push_in(InFrame::Data(chunk));
        }
        self.flush_pending_in();
        self.maybe_close_inbound();
        body
    }

    /// Whether a frame can be handed to the body now.
    pub(crate) fn has_room(&self) -> bool {
        if self.holding {
            return self.pending_in.is_none() && self.held.is_none();
        }
        self.pending_in.is_none()
            && self
                .body_tx
                .as_ref()
                .is_some_and(|tx| self.last_pass || tx.has_room())
    }

    /// Hands a frame on; [`has_room`](Self::has_room) must have said there is room
    /// (the driver is the body's only sender, so the room stays).
    pub(crate) fn push_in(&mut self, frame: InFrame) {
        if self.holding {
            match frame {
                InFrame::Data(d) => self.held = Some(d),
                InFrame::Trailers(t) => self.pending_in = Some(Ok(InFrame::Trailers(t))),
            }
            return;
        }
        if let Some(tx) = self.body_tx.as_ref() {
            if self.last_pass {
                let _ = tx.send_last(Ok(frame));
            } else {
                let _ = tx.try_send(Ok(frame));
            }
        }
    }

    /// Queues trailers (or an error) for the body, delivered as soon as there is room.
    pub(crate) fn queue_in(&mut self, item: InResult) {
        self.pending_in = Some(item);
        self.flush_pending_in();
    }

    pub(crate) fn flush_pending_in(&mut self) {
        if self.holding {
            // Kept for the queue `release` opens.
            return;
        }
        let Some(item) = self.pending_in.take() else {
            return;
        };
        let Some(tx) = self.body_tx.as_ref() else {
            return;
        };
        let is_err = item.is_err();
        let sent = if self.last_pass {
            tx.send_last(item)
                .map_err(|e| queue::TrySendError::Closed(e.0))
        } else {
            tx.try_send(item)
        };
        match sent {
            Ok(()) if is_err => self.drop_body_tx(),
            Ok(()) => {}
            Err(queue::TrySendError::Closed(_)) => self.drop_body_tx(),
            Err(queue::TrySendError::Full(item)) => self.pending_in = Some(item),
        }
    }

    /// The peer finished, quiche has nothing more for us, and nothing waits to be
    /// handed on.
    fn all_read(&self) -> bool {
        self.in_finished && !self.readable && self.pending_in.is_none()
    }

    /// Ends the body once the peer finished and everything was handed on.
    pub(crate) fn maybe_close_inbound(&mut self) {
        if self.holding {
            return;
        }
        if self.all_read() {
            self.drop_body_tx();
        }
    }

    pub(crate) fn drop_body_tx(&mut self) {
        self.body_tx = None;
        self.in_done = true;
    }

    /// Whether the body may still take frames.
    pub(crate) fn inbound_open(&self) -> bool {
        self.body_tx.is_some() || self.holding
    }

    /// The reader dropped its [`RecvBody`].
    pub(crate) fn receiver_gone(&self) -> bool {
        self.body_tx.as_ref().is_some_and(queue::Sender::is_closed)
    }

    /// The inbound side failed: the body (or the response waiter) gets `err`.
    pub(crate) fn fail_inbound(&mut self, err: StreamError) {
        if let Some(tx) = self.response_tx.take() {
            let _ = tx.send(Err(err.clone()));
        }
        self.readable = false;
        self.in_finished = true;
        if self.body_tx.is_some() || self.holding {
            self.queue_in(Err(err));
        } else {
            self.in_done = true;
        }
        // The peer reset its side; ours goes on only if the handle still wants it.
    }

    /// Fails everything: the connection is gone or the stream was aborted.
    pub(crate) fn fail(&mut self, err: StreamError) {
        if let Some(tx) = self.response_tx.take() {
            let _ = tx.send(Err(err.clone()));
        }
        if let Some(tx) = self.body_tx.take() {
            // Past the queue's bound if need be: a reader must see the failure, never
            // an end that looks like a complete body.
            let _ = tx.send_last(Err(err));
        } else if self.holding {
            // The request is not handed over yet: its body, once it is, ends with the
            // failure after what was read before it.
            self.readable = false;
            self.in_finished = true;
            self.pending_in = Some(Err(err));
        }
        self.out_rx = None;
        self.info_tx = None;
        self.flow = None;
        self.in_done = true;
        self.out_done = true;
    }

    /// The next frame from the sending handle, if one is queued.
    #[inline]
    pub(crate) fn try_next_out(&mut self) -> Option<OutFrame> {
        let rx = self.out_rx.as_mut()?;
        match rx.try_recv() {
            Ok(f) => Some(f),
            Err(queue::TryRecvError::Empty) => None,
            Err(queue::TryRecvError::Disconnected) => {
                self.out_rx = None;
                if !self.out_done {
                    self.out_closed_early = true;
                }
                None
            }
        }
    }

    /// Polls the handles; true when there is work for the driver.
    pub(crate) fn poll_handles(&mut self, cx: &mut Context<'_>) -> bool {
        let mut ready = false;
        if let Some(tx) = self.body_tx.as_ref()
            && (self.readable || self.pending_in.is_some())
        {
            // Waiting for the reader to make room.
            ready |= tx.poll_ready(cx).is_ready();
        }
        if self.pending_out.is_none()
            && let Some(rx) = self.out_rx.as_mut()
        {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(f)) => {
                    self.pending_out = Some(f);
                    ready = true;
                }
                Poll::Ready(None) => {
                    self.out_rx = None;
                    if !self.out_done {
                        self.out_closed_early = true;
                    }
                    ready = true;
                }
                Poll::Pending => {}
            }
        }
        if self.pending_dgram.is_none()
            && let Some(flow) = self.flow.as_mut()
            && let Poll::Ready(d) = flow.from_user.poll_recv(cx)
        {
            // `None`: the user dropped the flow; the stream goes on without it.
            self.pending_dgram = d;
            if self.pending_dgram.is_none() {
                self.flow = None;
            }
            ready = true;
        }
        ready
    }
}
