//! Streaming bodies: [`RecvBody`] for what the peer sends, [`SendBody`] for what this
//! side sends. Both sit on bounded channels to the connection's driver, so a slow
//! reader or writer slows the peer down through QUIC flow control instead of
//! buffering without bound. A request body that arrived whole with its head (up to
//! one chunk of 32 KiB, read in the same pass) needs no channel: the
//! server hands it over complete.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use quic_app::queue;

use crate::StreamError;

/// Body chunks (of up to [`RECV_CHUNK`] bytes) queued between the driver and a
/// [`RecvBody`]: 8 × 32 KiB = 256 KiB per stream at most, beyond QUIC's own window.
pub(crate) const RECV_QUEUE: usize = 8;

/// The most bytes the driver reads from a stream into one chunk.
pub(crate) const RECV_CHUNK: usize = 32 * 1024;

/// Frames queued between a [`SendBody`] (or responder) and the driver.
pub(crate) const SEND_QUEUE: usize = 8;

/// What the driver hands a [`RecvBody`].
#[derive(Debug)]
pub(crate) enum InFrame {
    Data(Bytes),
    Trailers(HeaderMap),
}

/// What a sending handle hands the driver.
#[derive(Debug)]
pub(crate) enum OutFrame {
    /// A response head (server): informational (1xx) or final.
    Response(http::response::Parts),
    /// A final response head with its whole body (server): the stream ends with it.
    /// With `true`, the head gains a `content-length` of the body's size.
    Whole(http::response::Parts, Bytes, bool),
    Data(Bytes),
    /// The last data of the body: DATA and the stream's end together. Made by the
    /// driver from `Data` with `Finish` queued behind it, never by a handle.
    LastData(Bytes),
    Trailers(HeaderMap),
    Finish,
    /// Abort the stream both ways (RESET_STREAM and STOP_SENDING) with this code.
    Abort(crate::H3Code),
}

pub(crate) type InResult = Result<InFrame, StreamError>;

/// A body received from the peer: data chunks, then optional trailers.
///
/// Implements [`http_body::Body`]; [`chunk`](Self::chunk) and
/// [`trailers`](Self::trailers) are the direct way. A request body the server
/// received whole before handing the request over reports its exact size
/// ([`size_hint`](http_body::Body::size_hint)).
///
/// # Drop behavior
///
/// Dropping it before the end asks the peer to stop sending (STOP_SENDING with
/// H3_REQUEST_CANCELLED).
#[derive(Debug)]
pub struct RecvBody {
    /// A body that arrived whole before it was handed out: its one chunk.
    whole: Option<Bytes>,
    rx: Option<queue::Receiver<InResult>>,
    /// Boxed: few bodies have trailers, and every move of a request carries this.
    trailers: Option<Box<HeaderMap>>,
    done: bool,
    /// Deadlines, when set; boxed, so a body without any costs one pointer.
    timers: Option<Box<Timers>>,
}

/// A body's deadlines: the whole exchange's, and the longest wait for the next chunk.
#[derive(Debug, Default)]
struct Timers {
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    read: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl RecvBody {
    pub(crate) fn new(rx: queue::Receiver<InResult>) -> Self {
        Self {
            whole: None,
            rx: Some(rx),
            trailers: None,
            done: false,
            timers: None,
        }
    }

    /// A body that is already complete and empty.
    pub fn empty() -> Self {
        Self {
            whole: None,
            rx: None,
            trailers: None,
            done: true,
            timers: None,
        }
    }

    /// A body that is already complete: `data`, then the end.
    pub(crate) fn complete(data: Option<Bytes>) -> Self {
        Self {
            done: data.is_none(),
            whole: data,
            rx: None,
            trailers: None,
            timers: None,
        }
    }

    /// Fails the body with [`StreamError::Timeout`] if it has not ended by `deadline`
    /// (the peer is then asked to stop sending). Must be called within a tokio
    /// runtime.
    pub fn set_deadline(&mut self, deadline: tokio::time::Instant) {
        self.timers.get_or_insert_with(Default::default).deadline =
            Some(Box::pin(tokio::time::sleep_until(deadline)));
    }

    /// Fails the body with [`StreamError::ReadTimeout`] if no data arrives for
    /// `timeout` (measured from now, then from each chunk). Must be called within a
    /// tokio runtime.
    pub fn set_read_timeout(&mut self, timeout: std::time::Duration) {
        self.timers.get_or_insert_with(Default::default).read =
            Some((timeout, Box::pin(tokio::time::sleep(timeout))));
    }

    /// Ends the body with `e`: the channel is dropped (the peer is asked to stop).
    fn fail(&mut self, e: StreamError) -> Poll<Result<Option<Bytes>, StreamError>> {
        self.done = true;
        self.rx = None;
        self.timers = None;
        Poll::Ready(Err(e))
    }

    /// The next chunk of data; `None` at the end of the data (trailers may follow).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a chunk is only taken when this resolves.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, StreamError> {
        std::future::poll_fn(|cx| self.poll_chunk(cx)).await
    }

    /// The trailers, after all data was read (the data left is discarded); `None` if
    /// the peer sent none.
    pub async fn trailers(&mut self) -> Result<Option<HeaderMap>, StreamError> {
        while self.chunk().await?.is_some() {}
        Ok(self.trailers.take().map(|t| *t))
    }

    /// Reads the whole body into memory, up to `limit` bytes.
    pub async fn collect(&mut self, limit: usize) -> Result<Bytes, StreamError> {
        let mut out = bytes::BytesMut::new();
        while let Some(c) = self.chunk().await? {
            if out.len() + c.len() > limit {
                return Err(StreamError::Malformed("body larger than the limit"));
            }
            out.extend_from_slice(&c);
        }
        Ok(out.freeze())
    }

    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, StreamError>> {
        if let Some(data) = self.whole.take() {
            self.done = true;
            return Poll::Ready(Ok(Some(data)));
        }
        if self.done {
            return Poll::Ready(Ok(None));
        }
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        let polled = rx.poll_recv(cx);
        if let Some(timers) = self.timers.as_mut() {
            match &polled {
                Poll::Pending => {
                    if timers
                        .deadline
                        .as_mut()
                        .is_some_and(|d| d.as_mut().poll(cx).is_ready())
                    {
                        return self.fail(StreamError::Timeout);
                    }
                    if timers
                        .read
                        .as_mut()
                        .is_some_and(|(_, r)| r.as_mut().poll(cx).is_ready())
                    {
                        return self.fail(StreamError::ReadTimeout);
                    }
                }
                Poll::Ready(Some(Ok(InFrame::Data(_)))) => {
                    if let Some((timeout, sleep)) = timers.read.as_mut() {
                        sleep.as_mut().reset(tokio::time::Instant::now() + *timeout);
                    }
                }
                Poll::Ready(_) => {}
            }
        }
        match ready!(polled) {
            Some(Ok(InFrame::Data(d))) => Poll::Ready(Ok(Some(d))),
            Some(Ok(InFrame::Trailers(t))) => {
                self.trailers = Some(Box::new(t));
                self.done = true;
                Poll::Ready(Ok(None))
            }
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Err(e))
            }
            None => {
                self.done = true;
                Poll::Ready(Ok(None))
            }
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, StreamError>>> {
        let this = self.get_mut();
        match ready!(this.poll_chunk(cx)) {
            Ok(Some(d)) => Poll::Ready(Some(Ok(http_body::Frame::data(d)))),
            Ok(None) => Poll::Ready(
                this.trailers
                    .take()
                    .map(|t| Ok(http_body::Frame::trailers(*t))),
            ),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.whole.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match &self.whole {
            Some(data) => http_body::SizeHint::with_exact(data.len() as u64),
            None if self.done && self.trailers.is_none() => http_body::SizeHint::with_exact(0),
            None => http_body::SizeHint::default(),
        }
    }
}

/// Sends a body: data chunks, then optional trailers, then the end.
///
/// Each send waits while the stream's queue to the connection is full, which is how a
/// peer that reads slowly slows the sender down.
///
/// # Drop behavior
///
/// Dropping it before [`finish`](Self::finish) or
/// [`send_trailers`](Self::send_trailers) resets the stream (RESET_STREAM with
/// H3_REQUEST_CANCELLED): the peer sees the body as cancelled, never as complete.
#[derive(Debug)]
pub struct SendBody {
    tx: queue::Sender<OutFrame>,
}

impl SendBody {
    pub(crate) fn new(tx: queue::Sender<OutFrame>) -> Self {
        Self { tx }
    }

    /// Sends a chunk of data.
    pub async fn send_data(&mut self, data: Bytes) -> Result<(), StreamError> {
        if data.is_empty() {
            return Ok(());
        }
        self.send(OutFrame::Data(data)).await
    }

    /// Sends the trailers, which end the body.
    pub async fn send_trailers(self, trailers: HeaderMap) -> Result<(), StreamError> {
        self.send(OutFrame::Trailers(trailers)).await
    }

    /// Ends the body.
    pub async fn finish(self) -> Result<(), StreamError> {
        self.send(OutFrame::Finish).await
    }

    /// Aborts the stream both ways with `code`: RESET_STREAM for what this side
    /// sends, STOP_SENDING for what the peer sends (after the frames queued before
    /// it).
    pub async fn abort(self, code: crate::H3Code) -> Result<(), StreamError> {
        self.send(OutFrame::Abort(code)).await
    }

    async fn send(&self, frame: OutFrame) -> Result<(), StreamError> {
        self.tx
            .send(frame)
            .await
            .map_err(|_| StreamError::Cancelled)
    }
}
