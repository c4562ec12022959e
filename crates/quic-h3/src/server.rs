//! The server variant: every request arrives as its own [`IncomingRequest`].

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use quic_app::{QuicConnection, queue};

use crate::body::OutFrame;
use crate::datagram::DatagramFlow;
use crate::driver::{
    Core, H3Driver, Hooks, is_informational, reset_both_ways, response_frame, sealed,
};
use crate::headers::{LastAuthority, Protocol, parse_request_with};
use crate::{H3Code, H3Settings, RecvBody, SendBody, StreamError};

/// The server variant of [`H3Driver`].
pub type ServerH3Driver = H3Driver<ServerHooks>;

/// The server's hooks (sealed).
#[derive(Debug)]
pub struct ServerHooks {
    /// Where requests go; `None` once the connection closed (a request stream then
    /// ends, a dispatcher is dropped).
    requests: Option<Requests>,
    control_rx: queue::Receiver<ServerCommand>,
    /// A command taken from `control_rx`, to carry out in `start_work`.
    pending: Option<ServerCommand>,
    /// The highest request stream id handed to the application.
    last_request: Option<u64>,
    /// Requests taken on this connection.
    requests_taken: u64,
    /// The id our GOAWAY carried: requests at or above it are refused.
    goaway_id: Option<u64>,
    /// Drained, the connection closes once the peer has acknowledged every response
    /// (a close stops retransmission), or when this timer fires.
    ack_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The acknowledgement deadline passed: close with what is left.
    ack_deadline_passed: bool,
    /// Closes a connection that sent no request in time; armed on the first turn.
    first_request_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The first request did not come in time: close.
    first_request_missed: bool,
    /// Request streams the client opened whose header section has not arrived, with
    /// the time it must have arrived by; in stream order.
    heads_pending: VecDeque<(u64, tokio::time::Instant)>,
    /// The next client stream id to look for: every lower one was seen opened.
    next_stream: u64,
    /// Streams at or above `next_stream` whose header section arrived before the
    /// stream was looked for: not to be waited for.
    early_heads: Vec<u64>,
    /// When the streams were last looked for.
    heads_probed: Option<tokio::time::Instant>,
    /// Fires at the first deadline of `heads_pending`.
    head_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// `head_timer` fired: reset the streams that are late.
    head_timer_fired: bool,
    /// The authority the last request named.
    last_authority: LastAuthority,
    /// A request whose body was still coming when its head arrived, kept until the
    /// end of the read pass (or the next head) so that a body complete by then is
    /// handed over whole. At most one: the next head releases it first, so the
    /// room for requests is checked with it counted.
    held: Option<Held>,
}

/// A request's head, kept while its stream reads the body (see `ServerHooks::held`).
#[derive(Debug)]
struct Held {
    stream_id: u64,
    parts: http::request::Parts,
    responder: Responder,
}

#[derive(Debug)]
enum ServerCommand {
    GoAway,
}

/// Where a server driver's requests go.
enum Requests {
    /// Queued for a [`RequestStream`]. Boxed: a channel allocates its first block of
    /// 32 slots up front, so on an idle connection slots of a full request would cost
    /// kilobytes.
    Queue(queue::Sender<Box<IncomingRequest>>),
    /// Handed to the application's dispatcher as they arrive.
    Dispatch(Box<dyn Dispatch>),
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Requests::Queue(_) => "Queue",
            Requests::Dispatch(_) => "Dispatch",
        })
    }
}

/// Takes a server connection's requests as they arrive, inside the connection's task;
/// see [`ServerH3Driver::with_dispatch`].
pub trait Dispatch: Send + 'static {
    /// Whether another request can be taken now. One that cannot is refused with
    /// H3_REQUEST_REJECTED, which tells the client it may safely retry it. Asked as
    /// each request's head arrives, and again for a request held until the end of the
    /// read pass (its body was still coming) just before it is handed over: called
    /// once or twice per request, it should be cheap.
    fn has_room(&self) -> bool;

    /// Takes one request. This runs inside the connection's task (and its tracing
    /// span), between the connection's reads and writes: it should start the
    /// request's work and return, without blocking.
    ///
    /// Returns whether the work went to another task. The connection then lets that
    /// task run before it sends, so an answer the task gives at once leaves in the
    /// same packets as the acknowledgements. Work done here (an answer queued on
    /// the [`Responder`] before returning) is sent in this turn as it is.
    fn dispatch(&mut self, request: IncomingRequest) -> bool;

    /// The connection has no request open: called after each turn's writes while it
    /// has none (so possibly many times in a row: keep it cheap). Memory kept for the
    /// next request (a spare allocation) should go here, so that an idle connection
    /// holds none. A task the dispatcher started may still run (its stream reset by
    /// the peer, say). Does nothing by default.
    fn idle(&mut self) {}
}

/// Controls a server connection from outside its driver.
#[derive(Debug, Clone)]
pub struct ServerControl {
    tx: queue::Sender<ServerCommand>,
}

impl ServerControl {
    /// Starts a graceful drain (RFC 9114 §5.2): sends GOAWAY with the id of the first
    /// request not yet taken, refuses later requests with H3_REQUEST_REJECTED (safe for
    /// clients to retry), lets the requests already taken finish, then closes the
    /// connection with H3_NO_ERROR once the client has acknowledged every response
    /// (at the latest [`H3Settings::drain_ack_timeout`] after the last one finished).
    pub async fn goaway(&self) {
        let _ = self.tx.send(ServerCommand::GoAway).await;
    }
}

impl Hooks for ServerHooks {}

impl ServerH3Driver {
    /// A server driver for one connection, and the stream of its requests: at most
    /// [`H3Settings::max_pending_requests`] wait in it, and more are refused with
    /// H3_REQUEST_REJECTED.
    pub fn new(settings: H3Settings) -> (Self, RequestStream) {
        let (requests_tx, requests_rx) = queue::channel(settings.max_pending_requests.max(1));
        let (driver, control) = Self::with_requests(settings, Requests::Queue(requests_tx));
        let requests = RequestStream {
            rx: requests_rx,
            control,
        };
        (driver, requests)
    }

    /// A server driver for one connection that hands each request to `dispatch` as
    /// its head arrives, from inside the connection's task, instead of queueing it for
    /// another task to take. A server that starts a task per request saves a hop
    /// between tasks this way. `dispatch` decides how many requests it takes
    /// ([`Dispatch::has_room`]); [`H3Settings::max_pending_requests`] does not apply.
    /// It is dropped when the connection closes.
    pub fn with_dispatch(settings: H3Settings, dispatch: impl Dispatch) -> (Self, ServerControl) {
        Self::with_requests(settings, Requests::Dispatch(Box::new(dispatch)))
    }

    fn with_requests(settings: H3Settings, requests: Requests) -> (Self, ServerControl) {
        let (control_tx, control_rx) = queue::channel(4);
        let driver = H3Driver {
            core: Core::new(settings),
            hooks: ServerHooks {
                requests: Some(requests),
                control_rx,
                pending: None,
                last_request: None,
                requests_taken: 0,
                goaway_id: None,
                ack_deadline: None,
                ack_deadline_passed: false,
                first_request_timer: None,
                first_request_missed: false,
                heads_pending: VecDeque::new(),
                next_stream: 0,
                early_heads: Vec::new(),
                heads_probed: None,
                head_timer: None,
                head_timer_fired: false,
                last_authority: LastAuthority::default(),
                held: None,
            },
        };
        (driver, ServerControl { tx: control_tx })
    }
}

/// The requests of one connection, in the order they arrived.
#[derive(Debug)]
pub struct RequestStream {
    rx: queue::Receiver<Box<IncomingRequest>>,
    control: ServerControl,
}

impl RequestStream {
    /// A handle to control the connection (graceful drain).
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// The next request; `None` once the connection has closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn next(&mut self) -> Option<IncomingRequest> {
        self.rx.recv().await.map(|r| *r)
    }
}

/// One request: its head and body, and the way to answer it.
#[derive(Debug)]
#[non_exhaustive]
pub struct IncomingRequest {
    /// The request: method, URI (scheme, authority, path), headers, streaming body.
    /// Its extensions hold the connection's [`ConnectionInfo`](quic_app::ConnectionInfo)
    /// (addresses, server name, client certificate, ...), the [`Protocol`] of an
    /// extended CONNECT request, and [`EarlyData`] when it arrived in 0-RTT.
    pub request: http::Request<RecvBody>,
    /// Sends the response.
    pub responder: Responder,
    /// The stream's HTTP Datagrams (RFC 9297), for an extended CONNECT request.
    pub datagrams: Option<DatagramFlow>,
}

/// Marks a request that arrived in 0-RTT data (in `http::Request::extensions`): an
/// attacker can replay it, so a handler should act on it only if it is idempotent,
/// and may answer 425 Too Early (RFC 8470 §5.2) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyData;

/// Sends the response to one request.
///
/// # Drop behavior
///
/// Dropping it without sending a response resets the stream (H3_REQUEST_CANCELLED).
#[derive(Debug)]
pub struct Responder {
    tx: queue::Sender<OutFrame>,
    /// Whether a whole response may gain the `content-length` it lacks: not one to
    /// HEAD, whose `content-length` counts a body that is not sent (RFC 9110 §9.3.2),
    /// nor to CONNECT, whose 2xx has none (§9.3.6).
    sized: bool,
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

    /// Sends a final response whose body is any [`http_body::Body`]: the head, then
    /// the body's frames as it yields them and the stream's queue takes them, then its
    /// trailers or its end. The future resolves to the number of body bytes sent.
    ///
    /// A body that ends with its first frame (a complete body, as most are) leaves with
    /// the head in one step, as with [`send_whole_response`](Self::send_whole_response),
    /// and gains a `content-length` as that does. A longer body that states its exact
    /// size ([`size_hint`](http_body::Body::size_hint)) gets that size as its
    /// `content-length` where [`may_add_length`](Self::may_add_length) allows, and must
    /// keep to it: more or fewer bytes reset the stream, as does a body error. A body
    /// not ready at once does not hold its head back.
    pub fn send_body_response<B>(self, response: http::Response<B>) -> crate::SendResponse<B>
    where
        B: http_body::Body,
        B::Data: Into<bytes::Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let sized = self.may_add_length(response.status(), response.headers());
        crate::SendResponse::new(self.tx, sized, response)
    }

    /// Whether a final response with this status and these fields may be given a
    /// `content-length`: it has none, it does not answer a HEAD or CONNECT request,
    /// and its status is not 204 or 304. [`send_whole_response`](Self::send_whole_response)
    /// adds one to such a response; a sender of a body of known size may do the same.
    pub fn may_add_length(&self, status: http::StatusCode, headers: &http::HeaderMap) -> bool {
        self.sized
            && crate::headers::may_carry_length(status)
            && !headers.contains_key(http::header::CONTENT_LENGTH)
    }

    /// Sends the final response with its whole body, which ends the stream: the same
    /// as [`send_response`](Self::send_response), the body sent, then
    /// [`finish`](SendBody::finish), in one step.
    ///
    /// A response without a `content-length` gets one, the body's size, unless it
    /// answers a HEAD or CONNECT request or its status is 204 or 304; one the response
    /// has is sent as it is.
    pub async fn send_whole_response(
        self,
        response: http::Response<bytes::Bytes>,
    ) -> Result<(), StreamError> {
        if response.status().is_informational() {
            return Err(StreamError::Malformed(
                "informational status as final response",
            ));
        }
        let (parts, body) = response.into_parts();
        let sized = self.may_add_length(parts.status, &parts.headers);
        self.tx
            .send(OutFrame::Whole(parts, body, sized))
            .await
            .map_err(|_| StreamError::Cancelled)
    }
}

/// Request stream ids looked at past the next expected one, for clients that skip
/// ids.
const HEAD_LOOKAHEAD: u64 = 16;

/// How often a server looks for request streams whose header section is pending.
const HEAD_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

impl ServerHooks {
    /// The header section of `stream_id` arrived: it is no longer waited for.
    fn head_arrived(&mut self, stream_id: u64) {
        if stream_id == self.next_stream {
            // In order, as requests usually come: nothing to remember.
            self.next_stream += 4;
            while let Some(at) = self.early_heads.iter().position(|&h| h == self.next_stream) {
                self.early_heads.swap_remove(at);
                self.next_stream += 4;
            }
        } else if stream_id > self.next_stream {
            // Ahead of a stream still without its header section: at most as many
            // as the client may have streams open.
            self.early_heads.push(stream_id);
        } else if let Some(at) = self
            .heads_pending
            .iter()
            .position(|(id, _)| *id == stream_id)
        {
            self.heads_pending.remove(at);
        }
    }

    /// Notes the request streams the client opened, and resets those whose header
    /// section is late (RFC 9114 §4.1.2 lets a server reset a request it will not
    /// process; H3_REQUEST_INCOMPLETE says why).
    fn watch_heads(&mut self, conn: &mut QuicConnection, limit: std::time::Duration) {
        let now = tokio::time::Instant::now();
        // Looked for every `HEAD_PROBE_INTERVAL` (a deadline is then at most that
        // late), not every turn.
        if self.head_timer_fired
            || self
                .heads_probed
                .is_none_or(|t| now.duration_since(t) >= HEAD_PROBE_INTERVAL)
        {
            self.heads_probed = Some(now);
            self.probe_heads(conn, now + limit);
        }
        if std::mem::take(&mut self.head_timer_fired) {
            while let Some(&(id, deadline)) = self.heads_pending.front() {
                if deadline > now {
                    break;
                }
                self.heads_pending.pop_front();
                tracing::debug!(stream = id, "request header section not complete in time");
                reset_both_ways(conn, id, H3Code::REQUEST_INCOMPLETE);
            }
        }
        if self.head_timer.is_none()
            && let Some(&(_, deadline)) = self.heads_pending.front()
        {
            self.head_timer = Some(Box::pin(tokio::time::sleep_until(deadline)));
        }
    }

    /// Looks for request streams opened since the last look: they must have their
    /// header section by `deadline`.
    fn probe_heads(&mut self, conn: &mut QuicConnection, deadline: tokio::time::Instant) {
        // quiche knows a stream once the client sent anything on it (or stopped it):
        // only an unknown one is `InvalidStreamState`. A client may skip ids: a few
        // ahead are looked at too.
        let known = |conn: &mut QuicConnection, id: u64| {
            !matches!(
                conn.stream_capacity(id),
                Err(quiche::Error::InvalidStreamState(_))
            )
        };
        loop {
            let next = self.next_stream;
            let Some(found) = (0..HEAD_LOOKAHEAD)
                .map(|i| next + 4 * i)
                .find(|&id| self.early_heads.contains(&id) || known(conn, id))
            else {
                break;
            };
            let mut id = next;
            while id <= found {
                if let Some(at) = self.early_heads.iter().position(|&h| h == id) {
                    self.early_heads.swap_remove(at);
                } else if id == found || known(conn, id) {
                    self.heads_pending.push_back((id, deadline));
                }
                id += 4;
            }
            self.next_stream = found + 4;
        }
        let next = self.next_stream;
        self.early_heads.retain(|&h| h >= next);
    }

    /// Hands the held request over: its body whole if all of it arrived, else on a
    /// queue that takes what did.
    fn release_held(&mut self, core: &mut Core, conn: &mut QuicConnection) {
        let Some(held) = self.held.take() else {
            return;
        };
        // The room a dispatcher had as the head arrived can be gone by now (its
        // server passed its shutdown deadline): refused then, before any of the
        // application's code ran, in a way the client may safely retry. (A queue's
        // room cannot shrink meanwhile: the driver is its only sender.)
        if let Some(Requests::Dispatch(d)) = &self.requests
            && !d.has_room()
        {
            if core.streams.contains_key(&held.stream_id) {
                core.abort_stream(conn, held.stream_id, H3Code::REQUEST_REJECTED);
            }
            return;
        }
        // Reset or found malformed meanwhile: the request never reaches a handler.
        let Some(s) = core.streams.get_mut(&held.stream_id) else {
            return;
        };
        let body = s.release();
        self.hand_off(
            core,
            IncomingRequest {
                request: http::Request::from_parts(held.parts, body),
                responder: held.responder,
                datagrams: None,
            },
        );
    }

    /// Gives a request to the application.
    fn hand_off(&mut self, core: &mut Core, request: IncomingRequest) {
        let Some(requests) = self.requests.as_mut() else {
            return;
        };
        let handed_off = match requests {
            // Room was checked as the head arrived (a held request counted, since the
            // next head releases it first), and the driver is the only sender.
            Requests::Queue(tx) => {
                let _ = tx.try_send(Box::new(request));
                true
            }
            Requests::Dispatch(d) => d.dispatch(request),
        };
        core.handed_off |= handed_off;
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
        if core.streams.contains_key(&stream_id) {
            core.receive_trailers(conn, stream_id, &list);
            return;
        }
        // Before this request's room is looked at.
        self.release_held(core, conn);
        self.head_arrived(stream_id);
        if core.closing {
            // A request that arrived with the peer's close: nobody can answer it.
            return;
        }
        if is_informational(&list) {
            core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
            return;
        }
        let over_limit = core
            .settings
            .max_requests_per_connection
            .is_some_and(|max| self.requests_taken >= max);
        if over_limit || self.goaway_id.is_some_and(|g| stream_id >= g) {
            // RFC 9114 §5.2: above our GOAWAY id, not processed; the client may retry.
            core.abort_stream(conn, stream_id, H3Code::REQUEST_REJECTED);
            return;
        }
        let mut parts = match parse_request_with(&list, &mut self.last_authority) {
            Ok(p) => p,
            Err(why) => {
                // RFC 9114 §4.1.2: a malformed request is a stream error of type
                // H3_MESSAGE_ERROR.
                tracing::debug!(stream = stream_id, why, "malformed request");
                core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
                return;
            }
        };
        let expected_len = match crate::headers::content_length(&parts.headers) {
            Ok(Some(n)) if n > 0 && !more_frames => Err("no body after a content-length"),
            other => other,
        };
        let expected_len = match expected_len {
            Ok(n) => n,
            Err(why) => {
                tracing::debug!(stream = stream_id, why, "malformed request");
                core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
                return;
            }
        };
        let extended = parts.extensions.get::<Protocol>().is_some();
        if extended && !core.settings.enable_extended_connect {
            // RFC 9220 §3: :protocol without our SETTINGS_ENABLE_CONNECT_PROTOCOL is
            // malformed.
            core.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
            return;
        }
        let early = conn.is_in_early_data() && !conn.is_established();
        if early {
            parts.extensions.insert(EarlyData);
            if let Some(info) = core.request_extensions.get::<quic_app::ConnectionInfo>() {
                parts.extensions.insert(info.clone().with_early_data(true));
            }
        } else {
            // Into a request's empty extensions (as most are), the clone moves whole.
            parts.extensions.extend(core.request_extensions.clone());
        }
        let Some(requests) = self.requests.as_mut() else {
            return;
        };
        let room = match requests {
            Requests::Queue(tx) => tx.has_room(),
            Requests::Dispatch(d) => d.has_room(),
        };
        if !room {
            // The application is not taking requests fast enough: refuse this one in
            // a way the client may safely retry.
            core.abort_stream(conn, stream_id, H3Code::REQUEST_REJECTED);
            return;
        }
        let (out_tx, out_rx) = crate::driver::out_queue();
        let mut stream = crate::driver::stream(Some(out_rx));
        stream.head_received = true;
        stream.body_limit = core.settings.max_request_body_size;
        stream.expected_len = expected_len;
        // A body still to come waits for the end of the read pass, which often brings
        // all of it. An extended CONNECT's stream is a tunnel: it goes at once.
        let body = if more_frames && !extended {
            stream.holding = true;
            None
        } else {
            Some(stream.open_body(more_frames))
        };
        let datagrams = extended.then(|| {
            let (flow, end) = DatagramFlow::new(stream_id, core.max_datagram.clone());
            stream.flow = Some(end);
            flow
        });
        if stream.inbound_open() {
            core.inbound.push(stream_id);
        }
        core.streams.insert(stream_id, stream);
        self.last_request = Some(self.last_request.map_or(stream_id, |l| l.max(stream_id)));
        self.first_request_timer = None;
        self.requests_taken += 1;
        if core
            .settings
            .max_requests_per_connection
            .is_some_and(|max| self.requests_taken >= max)
            && self.goaway_id.is_none()
            && self.pending.is_none()
        {
            // The last request this connection takes: drain after it.
            self.pending = Some(ServerCommand::GoAway);
        }
        let responder = Responder {
            tx: out_tx,
            sized: parts.method != http::Method::HEAD && parts.method != http::Method::CONNECT,
        };
        match body {
            Some(body) => self.hand_off(
                core,
                IncomingRequest {
                    request: http::Request::from_parts(parts, body),
                    responder,
                    datagrams,
                },
            ),
            None => {
                self.held = Some(Held {
                    stream_id,
                    parts,
                    responder,
                })
            }
        }
    }

    fn after_events(&mut self, core: &mut Core, conn: &mut QuicConnection) {
        self.release_held(core, conn);
    }

    fn poll_work(
        &mut self,
        core: &mut Core,
        _conn: &QuicConnection,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.last_request.is_none()
            && !self.first_request_missed
            && self.first_request_timer.is_none()
            && let Some(limit) = core.settings.first_request_timeout
        {
            self.first_request_timer = Some(Box::pin(tokio::time::sleep(limit)));
        }
        // Each timer wakes the loop once: it is disarmed as it fires, and what it
        // calls for is noted for `start_work`/`after_writes`.
        if let Some(t) = self.first_request_timer.as_mut()
            && t.as_mut().poll(cx).is_ready()
        {
            self.first_request_timer = None;
            self.first_request_missed = true;
            return Poll::Ready(());
        }
        if let Some(t) = self.ack_deadline.as_mut()
            && t.as_mut().poll(cx).is_ready()
        {
            self.ack_deadline = None;
            self.ack_deadline_passed = true;
            return Poll::Ready(());
        }
        if let Some(t) = self.head_timer.as_mut()
            && t.as_mut().poll(cx).is_ready()
        {
            self.head_timer = None;
            self.head_timer_fired = true;
            return Poll::Ready(());
        }
        if self.pending.is_some() {
            // Taken but blocked: retried every turn, which the blocking (flow or
            // congestion control) ends with a packet.
            return Poll::Pending;
        }
        match self.control_rx.poll_recv(cx) {
            Poll::Ready(Some(cmd)) => {
                self.pending = Some(cmd);
                Poll::Ready(())
            }
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn start_work(&mut self, core: &mut Core, conn: &mut QuicConnection) {
        if let Some(limit) = core.settings.request_header_timeout {
            self.watch_heads(conn, limit);
        }
        if self.first_request_missed {
            self.first_request_missed = false;
            if self.last_request.is_none() && !conn.is_closed() {
                tracing::debug!("no request in time; closing");
                let _ = conn.close(true, H3Code::NO_ERROR.0, b"no request in time");
                return;
            }
        }
        // While datagrams keep arriving the loop may not poll `wait_for_data`: look
        // at the control queue here too.
        if self.pending.is_none()
            && let Ok(cmd) = self.control_rx.try_recv()
        {
            self.pending = Some(cmd);
        }
        if let Some(ServerCommand::GoAway) = self.pending.take()
            && self.goaway_id.is_none()
            && let Some(h3) = core.h3.as_mut()
        {
            // RFC 9114 §5.2: the id is the first client-initiated bidirectional
            // stream not processed: one past the last request taken.
            let id = self.last_request.map_or(0, |l| l + 4);
            match h3.send_goaway(conn, id) {
                Ok(()) => self.goaway_id = Some(id),
                // The control stream is blocked (flow or congestion control): again
                // next turn.
                Err(quiche::h3::Error::StreamBlocked | quiche::h3::Error::Done) => {
                    self.pending = Some(ServerCommand::GoAway);
                }
                Err(e) => tracing::debug!(error = %e, "sending GOAWAY failed"),
            }
        }
    }

    fn after_writes(&mut self, core: &mut Core, conn: &mut QuicConnection) {
        if !core.streams.is_empty() {
            return;
        }
        if let Some(Requests::Dispatch(d)) = &mut self.requests {
            d.idle();
        }
        if self.goaway_id.is_none() {
            return;
        }
        // Drained: every request taken before the GOAWAY has finished. Close once the
        // peer has acknowledged every response: a close stops retransmission, and a
        // lost tail would leave the client with a truncated body.
        if conn.is_closed() || conn.local_error().is_some() {
            return;
        }
        if core.all_acknowledged(conn) {
            let _ = conn.close(true, H3Code::NO_ERROR.0, b"");
        } else if self.ack_deadline_passed {
            tracing::warn!(
                responses = core.unacknowledged(),
                "drained connection closes before the client acknowledged every response"
            );
            let _ = conn.close(true, H3Code::NO_ERROR.0, b"");
        } else if self.ack_deadline.is_none() {
            let limit = core.settings.drain_ack_timeout;
            self.ack_deadline = Some(Box::pin(tokio::time::sleep(limit)));
        }
    }

    fn on_goaway(&mut self, _core: &mut Core, _id: u64) {}

    fn on_close(&mut self, _core: &mut Core) {
        self.held = None;
        self.requests = None;
    }

    fn handoff_passes(&self) -> usize {
        match self.requests {
            // The dispatcher starts the request's task: it answers in the first round.
            Some(Requests::Dispatch(_)) => 1,
            // The stream's reader takes the request, then starts its task (or answers
            // it itself).
            _ => 2,
        }
    }
}
