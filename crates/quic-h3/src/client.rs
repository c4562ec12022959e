//! The client variant: a cloneable [`SendRequest`] hands requests to the driver.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use quic_app::QuicConnection;
use quic_app::queue;
use tokio::sync::oneshot;

use crate::body::{OutFrame, SEND_QUEUE};
use crate::datagram::DatagramFlow;
use crate::driver::{Core, H3Driver, Hooks, INFORMATIONAL_QUEUE, is_informational, sealed};
use crate::headers::Protocol;
use crate::headers::{parse_response, peer_field_section_limit, request_fields, section_size};
use crate::{H3Code, H3Settings, RecvBody, SendBody, StreamError};

/// Requests waiting for the driver to take them. Senders wait when it is full.
const REQUEST_QUEUE: usize = 64;

/// The client variant of [`H3Driver`].
pub type ClientH3Driver = H3Driver<ClientHooks>;

/// The client's hooks (sealed).
#[derive(Debug)]
pub struct ClientHooks {
    requests_rx: queue::Receiver<NewRequest>,
    /// A request taken from the queue that could not be opened yet.
    pending: Option<NewRequest>,
    goaway: bool,
    draining: Arc<AtomicBool>,
}

impl Hooks for ClientHooks {}

#[derive(Debug)]
struct NewRequest {
    head: http::request::Parts,
    body_rx: queue::Receiver<OutFrame>,
    response_tx: oneshot::Sender<Result<http::Response<RecvBody>, StreamError>>,
    info_tx: queue::Sender<http::Response<()>>,
    /// Extended CONNECT: where the stream's datagram flow goes once it is open.
    flow_tx: Option<oneshot::Sender<DatagramFlow>>,
}

impl NewRequest {
    fn fail(self, err: StreamError) {
        let _ = self.response_tx.send(Err(err));
    }
}

/// The parts of an extended CONNECT request (RFC 9220), from
/// [`SendRequest::send_connect`].
#[derive(Debug)]
#[non_exhaustive]
pub struct ConnectStream {
    /// The request stream's body: the tunnel's reliable bytes (capsules, say).
    pub send: SendBody,
    /// The response; a 2xx opens the tunnel.
    pub response: ResponseFuture,
    /// The stream's HTTP Datagrams (RFC 9297).
    pub datagrams: DatagramFlow,
}

impl ClientH3Driver {
    /// A client driver for one connection, and the handle that sends requests on it.
    pub fn new(settings: H3Settings) -> (Self, SendRequest) {
        let (tx, rx) = queue::channel(REQUEST_QUEUE);
        let draining = Arc::new(AtomicBool::new(false));
        let driver = H3Driver {
            core: Core::new(settings),
            hooks: ClientHooks {
                requests_rx: rx,
                pending: None,
                goaway: false,
                draining: Arc::clone(&draining),
            },
        };
        (driver, SendRequest { tx, draining })
    }
}

/// Sends requests on one connection; clone it to send from many tasks at once.
///
/// # Drop behavior
///
/// The connection stays open while its application runs; dropping every
/// `SendRequest` only means no new request can be sent.
#[derive(Debug, Clone)]
pub struct SendRequest {
    tx: queue::Sender<NewRequest>,
    draining: Arc<AtomicBool>,
}

impl SendRequest {
    /// Whether the server announced a drain (GOAWAY): new requests on this connection
    /// will be refused; open a new connection for them.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts a request. Returns the body sender (call [`SendBody::finish`] when the
    /// request has no more body) and the future response.
    ///
    /// The request waits for a stream when the peer's stream limit is reached, and
    /// goes out as soon as the peer allows more.
    ///
    /// Over 0-RTT (a resumed connection with early data) only safe methods (GET, HEAD,
    /// OPTIONS, TRACE) go out at once, since early data can be replayed; the others
    /// wait for the handshake.
    pub async fn send_request(
        &self,
        request: http::Request<()>,
    ) -> Result<(SendBody, ResponseFuture), StreamError> {
        self.start(request, None).await
    }

    /// Starts an extended CONNECT request (RFC 9220): `request` has method CONNECT
    /// and a [`Protocol`] extension. Waits until the stream is open (after the
    /// server's SETTINGS, which must enable extended CONNECT, or
    /// [`StreamError::Unsupported`]); returns the body sender, the response, and the
    /// stream's [`DatagramFlow`].
    pub async fn send_connect(
        &self,
        request: http::Request<()>,
    ) -> Result<ConnectStream, StreamError> {
        if request.method() != http::Method::CONNECT
            || request.extensions().get::<Protocol>().is_none()
        {
            return Err(StreamError::Malformed(
                "extended CONNECT needs method CONNECT and a Protocol extension",
            ));
        }
        let (flow_tx, flow_rx) = oneshot::channel();
        let (send, response) = self.start(request, Some(flow_tx)).await?;
        match flow_rx.await {
            Ok(datagrams) => Ok(ConnectStream {
                send,
                response,
                datagrams,
            }),
            // Not opened: the response says why.
            Err(_) => Err(response
                .await
                .err()
                .unwrap_or(StreamError::ConnectionClosed)),
        }
    }

    async fn start(
        &self,
        request: http::Request<()>,
        flow_tx: Option<oneshot::Sender<DatagramFlow>>,
    ) -> Result<(SendBody, ResponseFuture), StreamError> {
        let (head, ()) = request.into_parts();
        let (body_tx, body_rx) = queue::channel(SEND_QUEUE);
        let (response_tx, response_rx) = oneshot::channel();
        let (info_tx, info_rx) = queue::channel(INFORMATIONAL_QUEUE);
        self.tx
            .send(NewRequest {
                head,
                body_rx,
                response_tx,
                info_tx,
                flow_tx,
            })
            .await
            .map_err(|_| StreamError::ConnectionClosed)?;
        let response = ResponseFuture {
            rx: response_rx,
            info_rx,
        };
        Ok((SendBody::new(body_tx), response))
    }

    /// Sends a request with a complete body and waits for the response head.
    pub async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<RecvBody>, StreamError> {
        let (parts, body) = request.into_parts();
        let (mut sender, response) = self
            .send_request(http::Request::from_parts(parts, ()))
            .await?;
        sender.send_data(body).await?;
        sender.finish().await?;
        response.await
    }
}

/// The response to a request: resolves when its final head arrives.
#[derive(Debug)]
#[must_use = "the response is only received when awaited"]
pub struct ResponseFuture {
    rx: oneshot::Receiver<Result<http::Response<RecvBody>, StreamError>>,
    info_rx: queue::Receiver<http::Response<()>>,
}

impl ResponseFuture {
    /// The next informational (1xx) response, such as 103 Early Hints; `None` once
    /// the final response has arrived or the stream ended. Await the future itself
    /// for the final response.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn informational(&mut self) -> Option<http::Response<()>> {
        self.info_rx.recv().await
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<RecvBody>, StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(StreamError::ConnectionClosed)))
    }
}

impl ClientHooks {
    /// Fails every request not yet on a stream, and takes no more.
    fn fail_queued(&mut self, err: StreamError) {
        if let Some(req) = self.pending.take() {
            req.fail(err.clone());
        }
        self.requests_rx.close();
        while let Ok(req) = self.requests_rx.try_recv() {
            req.fail(err.clone());
        }
    }
}

impl sealed::Sealed for ClientHooks {
    fn on_headers(
        &mut self,
        core: &mut Core,
        conn: &mut QuicConnection,
        stream_id: u64,
        list: Vec<quiche::h3::Header>,
        more_frames: bool,
    ) {
        let Some(s) = core.streams.get_mut(&stream_id) else {
            return;
        };
        if s.head_received {
            core.receive_trailers(conn, stream_id, &list);
            return;
        }
        if is_informational(&list) {
            // 1xx responses are interim (RFC 9114 §4.1); the final one follows. They
            // are advisory: dropped if nobody reads them.
            if let (Ok(parts), Some(tx)) = (parse_response(&list), s.info_tx.as_ref()) {
                let _ = tx.try_send(http::Response::from_parts(parts, ()));
            }
            return;
        }
        let parsed = parse_response(&list).and_then(|parts| {
            // RFC 9110 §8.6: after HEAD, and in 204 and 304, content-length describes
            // no body of this message.
            let bodiless = s.head_request || matches!(parts.status.as_u16(), 204 | 304);
            let expected = if bodiless {
                None
            } else {
                crate::headers::content_length(&parts.headers)?
            };
            if expected.is_some_and(|n| n > 0) && !more_frames {
                return Err("no body after a content-length");
            }
            Ok((parts, expected))
        });
        match parsed {
            Ok((parts, expected)) => {
                s.head_received = true;
                s.expected_len = expected;
                s.info_tx = None;
                let body = s.open_body(more_frames);
                let open = s.inbound_open();
                if let Some(tx) = s.response_tx.take() {
                    // A dropped waiter means nobody wants the response; the body's
                    // drop then stops the stream.
                    let _ = tx.send(Ok(http::Response::from_parts(parts, body)));
                    core.handed_off = true;
                }
                if open {
                    core.inbound.push(stream_id);
                }
            }
            Err(why) => {
                tracing::debug!(stream = stream_id, why, "malformed response");
                if let Some(tx) = s.response_tx.take() {
                    let _ = tx.send(Err(StreamError::Malformed(why)));
                }
                core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
            }
        }
    }

    fn poll_work(
        &mut self,
        core: &mut Core,
        conn: &QuicConnection,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        // Take a new request only when it can be opened: the peer's stream limit
        // (RFC 9000 §4.6) holds the rest in the queue, and MAX_STREAMS wakes us.
        if self.pending.is_some() || core.h3.is_none() || conn.peer_streams_left_bidi() == 0 {
            return Poll::Pending;
        }
        match self.requests_rx.poll_recv(cx) {
            Poll::Ready(Some(r)) => {
                self.pending = Some(r);
                Poll::Ready(())
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn after_writes(&mut self, core: &mut Core, conn: &mut QuicConnection) {
        if self.goaway && core.streams.is_empty() && self.pending.is_none() && !conn.is_closed() {
            // RFC 9114 §5.2: after the server's GOAWAY, once our last request is done,
            // the connection has nothing left to do.
            self.fail_queued(StreamError::Refused);
            let _ = conn.close(true, H3Code::NO_ERROR.0, b"");
        }
    }

    fn start_work(&mut self, core: &mut Core, conn: &mut QuicConnection) {
        loop {
            if self.pending.is_none() {
                if core.h3.is_none() || conn.peer_streams_left_bidi() == 0 {
                    return;
                }
                match self.requests_rx.try_recv() {
                    Ok(r) => self.pending = Some(r),
                    Err(_) => return,
                }
            }
            let Some(req) = self.pending.take() else {
                return;
            };
            if self.goaway {
                req.fail(StreamError::Refused);
                continue;
            }
            let Some(h3) = core.h3.as_mut() else {
                self.pending = Some(req);
                return;
            };
            if conn.is_in_early_data() && !conn.is_established() && !req.head.method.is_safe() {
                // Early data can be replayed (RFC 8470 §2.1): only safe methods go in
                // 0-RTT; this one waits for the handshake (next turns retry).
                self.pending = Some(req);
                return;
            }
            if req.flow_tx.is_some() {
                // RFC 9220 §3: extended CONNECT only once the server's SETTINGS
                // enabled it.
                if h3.peer_settings_raw().is_none() {
                    self.pending = Some(req);
                    return;
                }
                if !h3.extended_connect_enabled_by_peer() {
                    req.fail(StreamError::Unsupported("extended CONNECT"));
                    continue;
                }
            }
            let sent = {
                let fields = request_fields(&req.head);
                // RFC 9114 §4.2.2: do not send a section larger than the peer accepts.
                let too_large = peer_field_section_limit(h3)
                    .map(|limit| (section_size(&fields), limit))
                    .filter(|&(size, limit)| size > limit);
                match too_large {
                    Some(over) => Err(over),
                    None => Ok(h3.send_request(conn, &fields, false)),
                }
            };
            let sent = match sent {
                Ok(sent) => sent,
                Err((size, limit)) => {
                    req.fail(StreamError::HeadersTooLarge { size, limit });
                    continue;
                }
            };
            match sent {
                Ok(id) => {
                    let mut stream = crate::driver::stream(Some(req.body_rx));
                    stream.head_request = req.head.method == http::Method::HEAD;
                    stream.response_tx = Some(req.response_tx);
                    stream.info_tx = Some(req.info_tx);
                    if let Some(flow_tx) = req.flow_tx {
                        let (flow, end) = DatagramFlow::new(id, core.max_datagram.clone());
                        stream.flow = Some(end);
                        let _ = flow_tx.send(flow);
                    }
                    core.streams.insert(id, stream);
                }
                Err(
                    quiche::h3::Error::StreamBlocked
                    | quiche::h3::Error::TransportError(quiche::Error::StreamLimit),
                ) => {
                    self.pending = Some(req);
                    return;
                }
                Err(quiche::h3::Error::FrameUnexpected) => {
                    // Sent after the peer's GOAWAY: not processed, safe to retry.
                    req.fail(StreamError::Refused);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "sending a request failed");
                    req.fail(StreamError::ConnectionClosed);
                }
            }
        }
    }

    fn on_goaway(&mut self, core: &mut Core, id: u64) {
        // RFC 9114 §5.2: requests on streams at or above the id were not processed
        // and may be retried; those below complete.
        self.goaway = true;
        self.draining.store(true, Ordering::Release);
        for (&sid, s) in core.streams.iter_mut() {
            if sid >= id {
                s.fail(StreamError::Refused);
            }
        }
    }

    fn on_close(&mut self, _core: &mut Core) {
        // Requests still queued never reached the server: safe to send elsewhere.
        self.fail_queued(StreamError::Refused);
    }
}
