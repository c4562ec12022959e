//! The server variant: every request arrives as its own [`IncomingRequest`].

use std::task::{Context, Poll};

use quic_app::QuicConnection;
use tokio::sync::mpsc;

use crate::body::{OutFrame, SEND_QUEUE};
use crate::driver::{Core, H3Driver, Hooks, Stream, is_informational, response_frame, sealed};
use crate::headers::{parse_request, parse_trailers};
use crate::{H3Code, H3Settings, RecvBody, SendBody, StreamError};

/// The server variant of [`H3Driver`].
pub type ServerH3Driver = H3Driver<ServerHooks>;

/// The server's hooks (sealed).
#[derive(Debug)]
pub struct ServerHooks {
    requests_tx: mpsc::Sender<IncomingRequest>,
}

impl Hooks for ServerHooks {}

impl ServerH3Driver {
    /// A server driver for one connection, and the stream of its requests.
    pub fn new(settings: H3Settings) -> (Self, RequestStream) {
        let (requests_tx, requests_rx) = mpsc::channel(settings.max_pending_requests.max(1));
        let driver = H3Driver {
            core: Core::new(settings),
            hooks: ServerHooks { requests_tx },
        };
        (driver, RequestStream { rx: requests_rx })
    }
}

/// The requests of one connection, in the order they arrived.
#[derive(Debug)]
pub struct RequestStream {
    rx: mpsc::Receiver<IncomingRequest>,
}

impl RequestStream {
    /// The next request; `None` once the connection has closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<IncomingRequest> {
        self.rx.recv().await
    }
}

/// One request: its head and body, and the way to answer it.
#[derive(Debug)]
pub struct IncomingRequest {
    /// The request: method, URI (scheme, authority, path), headers, streaming body.
    pub request: http::Request<RecvBody>,
    /// Sends the response.
    pub responder: Responder,
}

/// Sends the response to one request.
///
/// # Drop behavior
///
/// Dropping it without sending a response resets the stream (H3_REQUEST_CANCELLED).
#[derive(Debug)]
pub struct Responder {
    tx: mpsc::Sender<OutFrame>,
}

impl Responder {
    /// Sends an informational (1xx) response; more may follow, then the final one.
    pub async fn send_informational(
        &mut self,
        response: http::Response<()>,
    ) -> Result<(), StreamError> {
        if !response.status().is_informational() {
            return Err(StreamError::Malformed("not an informational status"));
        }
        self.tx
            .send(response_frame(response))
            .await
            .map_err(|_| StreamError::Cancelled)
    }

    /// Sends the final response head; the body follows through the returned
    /// [`SendBody`].
    pub async fn send_response(
        self,
        response: http::Response<()>,
    ) -> Result<SendBody, StreamError> {
        if response.status().is_informational() {
            return Err(StreamError::Malformed(
                "informational status as final response",
            ));
        }
        self.tx
            .send(response_frame(response))
            .await
            .map_err(|_| StreamError::Cancelled)?;
        Ok(SendBody::new(self.tx))
    }
}

impl sealed::Sealed for ServerHooks {
    fn on_headers(
        &mut self,
        core: &mut Core,
        conn: &mut QuicConnection,
        stream_id: u64,
        list: Vec<quiche::h3::Header>,
        more_frames: bool,
    ) {
        if let Some(s) = core.streams.get_mut(&stream_id) {
            // A second field section on a request stream: trailers (RFC 9114 §4.1).
            match parse_trailers(&list) {
                Ok(t) => s.queue_in(Ok(crate::body::InFrame::Trailers(t))),
                Err(why) => {
                    tracing::debug!(stream = stream_id, why, "malformed trailers");
                    core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
                }
            }
            return;
        }
        if is_informational(&list) {
            core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
            return;
        }
        let parts = match parse_request(&list) {
            Ok(p) => p,
            Err(why) => {
                // RFC 9114 §4.1.2: a malformed request is a stream error of type
                // H3_MESSAGE_ERROR.
                tracing::debug!(stream = stream_id, why, "malformed request");
                core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
                return;
            }
        };
        let permit = match self.requests_tx.try_reserve() {
            Ok(p) => p,
            Err(_) => {
                // The application is not taking requests fast enough: refuse this
                // one in a way the client may safely retry.
                core.abort_stream(conn, stream_id, H3Code::REQUEST_REJECTED);
                return;
            }
        };
        let (out_tx, out_rx) = mpsc::channel(SEND_QUEUE);
        let mut stream = Stream::new(Some(out_rx));
        stream.head_received = true;
        let body = stream.open_body(more_frames);
        core.streams.insert(stream_id, stream);
        permit.send(IncomingRequest {
            request: http::Request::from_parts(parts, body),
            responder: Responder { tx: out_tx },
        });
    }

    fn poll_work(
        &mut self,
        _core: &mut Core,
        _conn: &QuicConnection,
        _cx: &mut Context<'_>,
    ) -> Poll<()> {
        Poll::Pending
    }

    fn start_work(&mut self, _core: &mut Core, _conn: &mut QuicConnection) {}

    fn on_goaway(&mut self, _core: &mut Core, _id: u64) {}

    fn on_close(&mut self, _core: &mut Core) {}
}
