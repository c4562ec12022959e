//! A response whose body is any `http_body::Body`, sent by a future written out by
//! hand: [`Responder::send_body_response`](crate::Responder::send_body_response).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::Body;
use quic_app::queue::{self, TrySendError};

use crate::StreamError;
use crate::body::OutFrame;

/// What a body error becomes on its way out.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// The future of [`Responder::send_body_response`](crate::Responder::send_body_response):
    /// resolves to the number of body bytes sent.
    ///
    /// Written out rather than as an `async fn`: it holds the body (pinned in place),
    /// the head until it leaves, and at most two frames taken from the body and
    /// waiting for room, and nothing else; a response that leaves in one step never
    /// waits.
    ///
    /// # Drop behavior
    ///
    /// Dropped before it resolves, it resets the stream (H3_REQUEST_CANCELLED) unless
    /// the response's last frame was already queued: the peer never takes a truncated
    /// body for a complete one.
    #[project = SendResponseProj]
    #[must_use = "a response is sent only when its future is polled"]
    pub struct SendResponse<B> {
        #[pin]
        body: B,
        // `None` once the last frame is queued.
        tx: Option<queue::Sender<OutFrame>>,
        // The head, until it is queued.
        head: Option<http::response::Parts>,
        // Whether the head may gain a `content-length` (`Responder::may_add_length`).
        sized: bool,
        // The body's exact size, as it stated it before its first frame.
        size: Option<u64>,
        // The size this future sent as `content-length`, which the body must keep to.
        declared: Option<u64>,
        // A frame ready for the stream's queue, waiting for room.
        pending: Option<OutFrame>,
        // The body's first frame, taken out while its head waits to be queued.
        first: Option<Next>,
        // Body bytes taken so far.
        bytes: u64,
    }
}

impl<B: Body> SendResponse<B> {
    pub(crate) fn new(
        tx: queue::Sender<OutFrame>,
        sized: bool,
        response: http::Response<B>,
    ) -> Self {
        let (parts, body) = response.into_parts();
        Self {
            size: body.size_hint().exact(),
            body,
            tx: Some(tx),
            head: Some(parts),
            sized,
            declared: None,
            pending: None,
            first: None,
            bytes: 0,
        }
    }
}

impl<B> Future for SendResponse<B>
where
    B: Body,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = Result<u64, StreamError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if this
            .head
            .as_ref()
            .is_some_and(|head| head.status.is_informational())
        {
            // Nothing is sent; the sender goes with the head: the stream is reset.
            this.head.take();
            this.tx.take();
            return Poll::Ready(Err(StreamError::Malformed(
                "informational status as final response",
            )));
        }
        loop {
            let Some(tx) = this.tx.as_ref() else {
                return Poll::Ready(Ok(*this.bytes));
            };
            if let Some(frame) = this.pending.take() {
                let last = matches!(
                    frame,
                    OutFrame::Whole(..) | OutFrame::Finish | OutFrame::Trailers(_)
                );
                match tx.try_send(frame) {
                    Ok(()) if last => {
                        // The stream's end is queued: the sender may go.
                        *this.tx = None;
                    }
                    Ok(()) => {}
                    Err(TrySendError::Full(frame)) => {
                        // Woken when a frame leaves the queue (or at once, if one
                        // already did).
                        *this.pending = Some(frame);
                        match tx.poll_ready(cx) {
                            Poll::Pending => return Poll::Pending,
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(())) => {
                                return Poll::Ready(Err(StreamError::Cancelled));
                            }
                        }
                    }
                    Err(TrySendError::Closed(_)) => {
                        return Poll::Ready(Err(StreamError::Cancelled));
                    }
                }
                continue;
            }
            let next = match this.first.take() {
                Some(next) => next,
                None => match this.body.as_mut().poll_frame(cx) {
                    Poll::Ready(frame) => match next_of(frame) {
                        Some(next) => next,
                        // A frame of a kind HTTP/3 does not carry: skipped.
                        None => continue,
                    },
                    Poll::Pending => match this.head.take() {
                        // The body is not ready: its head goes out meanwhile.
                        Some(parts) => {
                            *this.pending = Some(this.head_frame(parts));
                            continue;
                        }
                        None => return Poll::Pending,
                    },
                },
            };
            let Some(parts) = this.head.take() else {
                *this.pending = this.body_frame(next)?;
                continue;
            };
            // The first frame. A body that ends with it leaves with the head in one
            // step, its length counted by the driver; otherwise the head goes first and
            // the frame follows it.
            let data = match next {
                Next::End => Bytes::new(),
                Next::Data(data) if this.body.is_end_stream() => data,
                next => {
                    *this.pending = Some(this.head_frame(parts));
                    *this.first = Some(next);
                    continue;
                }
            };
            *this.bytes = data.len() as u64;
            *this.pending = Some(OutFrame::Whole(parts, data, *this.sized));
        }
    }
}

impl<B> SendResponseProj<'_, B> {
    /// The head of a body that does not leave with it: with the body's stated size as
    /// its `content-length` where that may be added.
    fn head_frame(&mut self, mut parts: http::response::Parts) -> OutFrame {
        if *self.sized
            && let Some(n) = *self.size
        {
            parts.headers.insert(http::header::CONTENT_LENGTH, n.into());
            *self.declared = Some(n);
        }
        OutFrame::Response(parts)
    }

    /// The frame that carries `next` after the head (none for empty data), once it is
    /// checked against the `content-length` this future sent.
    fn body_frame(&mut self, next: Next) -> Result<Option<OutFrame>, StreamError> {
        if let Next::Data(data) = &next {
            *self.bytes += data.len() as u64;
        }
        if let Some(n) = *self.declared {
            let ends = matches!(next, Next::End | Next::Trailers(_));
            if *self.bytes > n || (ends && *self.bytes < n) {
                tracing::warn!(
                    size_hint = n,
                    bytes = *self.bytes,
                    "response body broke its size hint"
                );
                return Err(StreamError::Cancelled);
            }
        }
        Ok(Some(match next {
            Next::End => OutFrame::Finish,
            Next::Data(data) if data.is_empty() => return Ok(None),
            Next::Data(data) => OutFrame::Data(data),
            Next::Trailers(trailers) => OutFrame::Trailers(trailers),
            Next::Failed(e) => {
                // The sender, dropped with the future, resets the stream: the peer sees
                // the body failed.
                tracing::warn!(error = %e, "response body failed");
                return Err(StreamError::Cancelled);
            }
        }))
    }
}

/// One step of a response body.
enum Next {
    End,
    Data(Bytes),
    Trailers(HeaderMap),
    Failed(BoxError),
}

/// What a polled body frame means for the response; `None` for a frame of a kind
/// HTTP/3 does not carry, which is skipped.
fn next_of<D: Into<Bytes>, E: Into<BoxError>>(
    frame: Option<Result<http_body::Frame<D>, E>>,
) -> Option<Next> {
    Some(match frame {
        None => Next::End,
        Some(Ok(frame)) => match frame.into_data() {
            Ok(data) => Next::Data(data.into()),
            Err(frame) => Next::Trailers(frame.into_trailers().ok()?),
        },
        Some(Err(e)) => Next::Failed(e.into()),
    })
}
