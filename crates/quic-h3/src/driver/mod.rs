//! The driver core shared by server and client: the stream table, the inbound pump
//! (QUIC → [`RecvBody`](crate::RecvBody)) and the outbound pump (handles → QUIC).

mod spare;
mod stream;

use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use quic_app::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};
use quiche::h3::NameValue;
use rustc_hash::FxHashMap;

use crate::body::{InFrame, OutFrame, RECV_CHUNK};
use crate::datagram::{MaxDatagram, get_varint, put_varint};
use crate::headers::{response_fields, trailer_fields};
use crate::{H3Code, H3Settings, StreamError};
pub(crate) use spare::{out_queue, stream};
pub(crate) use stream::{INFORMATIONAL_QUEUE, Stream};

/// What makes a driver a server or a client. Sealed: the two variants are
/// [`ServerH3Driver`](crate::ServerH3Driver) and [`ClientH3Driver`](crate::ClientH3Driver).
pub trait Hooks: sealed::Sealed + Send + 'static {}

pub(crate) mod sealed {
    use super::*;

    /// The role-specific part of the driver.
    pub trait Sealed {
        /// HEADERS arrived on `stream_id`.
        fn on_headers(
            &mut self,
            core: &mut Core,
            conn: &mut QuicConnection,
            stream_id: u64,
            list: Vec<quiche::h3::Header>,
            more_frames: bool,
        );
        /// Every event quiche had was taken: what waited for the end of the pass
        /// goes on.
        fn after_events(&mut self, _core: &mut Core, _conn: &mut QuicConnection) {}
        /// Resolves when the role has new work (a new request to send, ...).
        fn poll_work(
            &mut self,
            core: &mut Core,
            conn: &QuicConnection,
            cx: &mut Context<'_>,
        ) -> Poll<()>;
        /// Starts what `poll_work` found.
        fn start_work(&mut self, core: &mut Core, conn: &mut QuicConnection);
        /// After the turn's writes (finished streams are gone by then).
        fn after_writes(&mut self, core: &mut Core, conn: &mut QuicConnection);
        /// GOAWAY arrived with this id.
        fn on_goaway(&mut self, core: &mut Core, id: u64);
        /// The connection closed.
        fn on_close(&mut self, core: &mut Core);
        /// See [`ApplicationOverQuic::handoff_passes`].
        fn handoff_passes(&self) -> usize {
            2
        }
    }
}

/// Drives HTTP/3 over one QUIC connection; see the [crate docs](crate).
#[derive(Debug)]
pub struct H3Driver<H> {
    pub(crate) core: Core,
    pub(crate) hooks: H,
}

/// Header sections in one turn from which the next turn reads between its datagrams
/// (see `reads_between_datagrams`).
const READS_BETWEEN_HEADS: usize = 4;

/// The state both roles share.
pub struct Core {
    pub(crate) h3: Option<H3Conn>,
    pub(crate) settings: H3Settings,
    /// Boxed: an idle connection keeps its emptied table's buckets, which then hold a
    /// pointer each rather than a whole stream. Fx hashing takes a few instructions per
    /// lookup where SipHash takes about a hundred, and needs no resistance to chosen
    /// keys here: a peer opens stream IDs in order (RFC 9000 §2.1), so the open ones
    /// are a run of consecutive IDs within its stream limit, not keys it can pick.
    pub(crate) streams: FxHashMap<u64, Box<Stream>>,
    /// The streams opened with a body still to come: the only ones whose inbound side
    /// [`pump_inbound`](Self::pump_inbound) may have work for. Entries leave as it
    /// finds their body ended, so a turn does not walk every open stream.
    pub(crate) inbound: Vec<u64>,
    /// The largest HTTP Datagram frame payload sendable now, shared with the flows.
    pub(crate) max_datagram: MaxDatagram,
    /// Where an outgoing datagram is assembled.
    dgram_out: Vec<u8>,
    /// A request (server) or a response head (client) went to the user this turn.
    pub(crate) handed_off: bool,
    /// Header sections received since the turn began.
    heads: usize,
    /// The last turn received at least [`READS_BETWEEN_HEADS`] header sections: the
    /// next reads between its datagrams.
    reads_between: bool,
    /// Streams whose last bytes went to quiche, kept until the peer has acknowledged
    /// them all (quiche then forgets the stream); pruned as the list grows.
    unacked: Vec<u64>,
    /// The length of `unacked` at which it is pruned next.
    prune_at: usize,
    /// The connection closed: the last read hands on what arrived, starts nothing.
    pub(crate) closing: bool,
    /// The extensions of a request that did not come in 0-RTT: the connection's
    /// `ConnectionInfo` (once the handshake established it), made once. A clone is
    /// cheaper than a new map's first insert.
    pub(crate) request_extensions: http::Extensions,
}

/// quiche's HTTP/3 connection, which knows when a `poll` would find nothing.
///
/// quiche's HTTP/3 events come from the streams in the connection's readable set
/// (the control and QPACK streams among them) and from a list of finished streams. A
/// `poll` that says `Done` has emptied that list, and only a body read adds to it
/// afterwards (the read that reaches a stream's end). So once a `poll` has said
/// `Done`, until a body is read, a `poll` with no readable stream would say `Done`
/// again: it is answered here without walking the streams. A connection turn that
/// only sends (an answer handed back by its handler) then costs no `poll`.
///
/// Only the calls below change the connection (`Deref` gives the queries): a read
/// that went around `recv_body` would leave `poll` answering `Done` over a finished
/// stream.
pub(crate) struct H3Conn {
    inner: quiche::h3::Connection,
    /// The last `poll` said `Done`, and no body was read since.
    drained: bool,
}

impl H3Conn {
    fn new(inner: quiche::h3::Connection) -> Self {
        Self {
            inner,
            drained: false,
        }
    }

    pub(crate) fn poll(
        &mut self,
        conn: &mut QuicConnection,
    ) -> quiche::h3::Result<(u64, quiche::h3::Event)> {
        if self.drained && !conn.is_readable() {
            return Err(quiche::h3::Error::Done);
        }
        let polled = self.inner.poll(conn);
        self.drained = matches!(polled, Err(quiche::h3::Error::Done));
        polled
    }

    pub(crate) fn recv_body(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        out: &mut [u8],
    ) -> quiche::h3::Result<usize> {
        self.drained = false;
        self.inner.recv_body(conn, stream_id, out)
    }

    pub(crate) fn recv_body_buf<B: BufMut>(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        out: B,
    ) -> quiche::h3::Result<usize> {
        self.drained = false;
        self.inner.recv_body_buf(conn, stream_id, out)
    }

    pub(crate) fn send_request<T: NameValue>(
        &mut self,
        conn: &mut QuicConnection,
        headers: &[T],
        fin: bool,
    ) -> quiche::h3::Result<u64> {
        self.inner.send_request(conn, headers, fin)
    }

    pub(crate) fn send_response<T: NameValue>(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        headers: &[T],
        fin: bool,
    ) -> quiche::h3::Result<()> {
        self.inner.send_response(conn, stream_id, headers, fin)
    }

    pub(crate) fn send_additional_headers<T: NameValue>(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        headers: &[T],
        is_trailer_section: bool,
        fin: bool,
    ) -> quiche::h3::Result<()> {
        self.inner
            .send_additional_headers(conn, stream_id, headers, is_trailer_section, fin)
    }

    pub(crate) fn send_body(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        body: &[u8],
        fin: bool,
    ) -> quiche::h3::Result<usize> {
        self.inner.send_body(conn, stream_id, body, fin)
    }

    pub(crate) fn send_goaway(
        &mut self,
        conn: &mut QuicConnection,
        id: u64,
    ) -> quiche::h3::Result<()> {
        self.inner.send_goaway(conn, id)
    }
}

impl std::ops::Deref for H3Conn {
    type Target = quiche::h3::Connection;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// The smallest length of [`Core`]'s list of unacknowledged streams at which it is
/// pruned: pruning costs one lookup per entry, so it runs when the list has doubled.
const PRUNE_MIN: usize = 32;

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("open", &self.h3.is_some())
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream").finish_non_exhaustive()
    }
}

impl Core {
    pub(crate) fn new(settings: H3Settings) -> Self {
        Self {
            h3: None,
            settings,
            streams: FxHashMap::default(),
            inbound: Vec::new(),
            max_datagram: MaxDatagram::default(),
            dgram_out: Vec::new(),
            handed_off: false,
            heads: 0,
            reads_between: false,
            unacked: Vec::new(),
            prune_at: PRUNE_MIN,
            closing: false,
            request_extensions: http::Extensions::new(),
        }
    }

    /// Forgets the streams whose data the peer has acknowledged; returns whether none
    /// is left.
    pub(crate) fn all_acknowledged(&mut self, conn: &mut QuicConnection) -> bool {
        // quiche collects a stream once both sides are complete: everything read, and
        // everything sent acknowledged. A collected stream (or one the peer stopped)
        // has no capacity to report.
        self.unacked.retain(|&id| conn.stream_capacity(id).is_ok());
        self.prune_at = (self.unacked.len() * 2).max(PRUNE_MIN);
        self.unacked.is_empty()
    }

    /// Streams whose last bytes the peer has not acknowledged yet (as of the last
    /// pruning).
    pub(crate) fn unacknowledged(&self) -> usize {
        self.unacked.len()
    }

    /// A second field section on a known stream: trailers (RFC 9114 §4.1), queued for
    /// the body; malformed ones reset the stream with H3_MESSAGE_ERROR.
    pub(crate) fn receive_trailers(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        list: &[quiche::h3::Header],
    ) {
        match crate::headers::parse_trailers(list) {
            Ok(t) => {
                if let Some(s) = self.streams.get_mut(&stream_id) {
                    s.queue_in(Ok(InFrame::Trailers(t)));
                }
            }
            Err(why) => {
                tracing::debug!(stream = stream_id, why, "malformed trailers");
                self.abort_stream(conn, stream_id, H3Code::MESSAGE_ERROR);
            }
        }
    }

    /// Resets a stream both ways with `code`, and forgets it.
    pub(crate) fn abort_stream(&mut self, conn: &mut QuicConnection, stream_id: u64, code: H3Code) {
        reset_both_ways(conn, stream_id, code);
        if let Some(mut s) = self.streams.remove(&stream_id) {
            s.fail(StreamError::Reset(code));
        }
    }

    /// Resets a malformed message's stream both ways with H3_MESSAGE_ERROR (RFC 9114
    /// §4.1.2); its reader (request body, response waiter) gets the reason.
    pub(crate) fn malformed(
        &mut self,
        conn: &mut QuicConnection,
        stream_id: u64,
        why: &'static str,
    ) {
        tracing::debug!(stream = stream_id, why, "malformed message");
        reset_both_ways(conn, stream_id, H3Code::MESSAGE_ERROR);
        if let Some(mut s) = self.streams.remove(&stream_id) {
            s.fail(StreamError::Malformed(why));
        }
    }

    /// Reads what can be handed on from every readable stream; returns whether any
    /// body bytes were read (quiche may then have more events: trailers, FIN).
    fn pump_inbound(&mut self, conn: &mut QuicConnection) -> bool {
        with_scratch(|scratch| self.pump_inbound_into(conn, scratch))
    }

    fn pump_inbound_into(&mut self, conn: &mut QuicConnection, scratch: &mut [u8]) -> bool {
        let Some(h3) = self.h3.as_mut() else {
            return false;
        };
        let streams = &mut self.streams;
        let mut read_any = false;
        self.inbound.retain(|&id| {
            let Some(s) = streams.get_mut(&id) else {
                return false;
            };
            if s.receiver_gone() {
                if s.in_finished {
                    // The peer already sent everything: drop what nobody will read.
                    while let Ok(n) = h3.recv_body(conn, id, scratch) {
                        if n == 0 {
                            break;
                        }
                    }
                } else {
                    // RFC 9114 §4.1.1: STOP_SENDING with H3_REQUEST_CANCELLED when the
                    // reader is no longer interested.
                    let _ = conn.stream_shutdown(
                        id,
                        quiche::Shutdown::Read,
                        H3Code::REQUEST_CANCELLED.0,
                    );
                }
                s.readable = false;
                s.drop_body_tx();
                return false;
            }
            s.flush_pending_in();
            read_any |= read_body(h3, conn, id, s);
            s.maybe_close_inbound();
            s.inbound_open()
        });
        read_any
    }

    /// Writes what handles queued, as far as QUIC flow control allows.
    fn pump_outbound(&mut self, conn: &mut QuicConnection) {
        let Some(h3) = self.h3.as_mut() else { return };
        // Streams done both ways, found in this pass over every stream and removed
        // after it (rather than in a second pass).
        let mut finished: smallvec::SmallVec<[u64; 16]> = smallvec::SmallVec::new();
        for (&id, s) in self.streams.iter_mut() {
            if s.pending_out.is_none() && s.out_rx.is_some() && !s.out_closed_early {
                s.pending_out = s.try_next_out();
            }
            let closed_early = s.out_closed_early;
            if closed_early {
                s.out_closed_early = false;
                // The sending handle was dropped before the end: the peer must not
                // take a truncated body for a complete one.
                let _ =
                    conn.stream_shutdown(id, quiche::Shutdown::Write, H3Code::REQUEST_CANCELLED.0);
                s.out_done = true;
            }
            while !closed_early && let Some(mut frame) = s.pending_out.take() {
                if let OutFrame::Data(data) = frame {
                    // The body's end already queued behind its last data: both leave
                    // in one write, the FIN in the data's STREAM frame.
                    let last = s
                        .out_rx
                        .as_mut()
                        .and_then(|rx| rx.take_if(|next| matches!(next, OutFrame::Finish)));
                    frame = match last {
                        Some(_) => OutFrame::LastData(data),
                        None => OutFrame::Data(data),
                    };
                }
                match write_frame(h3, conn, id, frame, &mut s.head_sent) {
                    Written::All { ends } => {
                        if ends {
                            s.out_done = true;
                            if let Some(rx) = s.out_rx.take() {
                                spare::keep_out_queue(rx);
                            }
                            self.unacked.push(id);
                        }
                    }
                    Written::Blocked(rest) => {
                        s.pending_out = Some(rest);
                        break;
                    }
                    Written::Failed => {
                        s.out_done = true;
                        s.out_rx = None;
                    }
                }
                if let Some(next) = s.try_next_out() {
                    s.pending_out = Some(next);
                }
            }
            if s.in_done && s.out_done && s.response_tx.is_none() {
                finished.push(id);
            }
        }
        for id in finished {
            if let Some(s) = self.streams.remove(&id) {
                spare::keep_stream(s);
            }
        }
        if self.unacked.len() >= self.prune_at {
            self.all_acknowledged(conn);
        }
    }

    /// Hands received HTTP Datagrams to their flows (RFC 9297 §2.1): by Quarter
    /// Stream ID; those of unknown streams, and those that find a full queue, are
    /// dropped.
    fn recv_datagrams(&mut self, conn: &mut QuicConnection) {
        with_scratch(|scratch| self.recv_datagrams_into(conn, scratch));
    }

    fn recv_datagrams_into(&mut self, conn: &mut QuicConnection, scratch: &mut [u8]) {
        loop {
            let n = match conn.dgram_recv(scratch) {
                Ok(n) => n,
                Err(quiche::Error::Done) => return,
                Err(quiche::Error::BufferTooShort) => {
                    tracing::debug!("datagram larger than the read buffer dropped");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "datagram read failed");
                    return;
                }
            };
            let d = &scratch[..n];
            let Some((quarter, len)) = get_varint(d) else {
                // RFC 9297 §2.1: a datagram too short for its Quarter Stream ID is a
                // connection error.
                let _ = conn.close(true, H3Code::DATAGRAM_ERROR.0, b"truncated HTTP datagram");
                return;
            };
            let flow = quarter
                .checked_mul(4)
                .and_then(|id| self.streams.get(&id))
                .and_then(|s| s.flow.as_ref());
            match flow {
                Some(f) => {
                    if f.to_user
                        .try_send(Bytes::copy_from_slice(&d[len..]))
                        .is_err()
                    {
                        tracing::trace!(quarter, "datagram dropped: flow queue full");
                    }
                }
                None => tracing::trace!(quarter, "datagram for no flow dropped"),
            }
        }
    }

    /// Publishes the largest datagram payload the connection can send now (0: none:
    /// the peer did not enable HTTP/3 datagrams, or this side did not enable QUIC
    /// datagrams, which leaves quiche a send queue of no room).
    fn refresh_max_datagram(&mut self, conn: &QuicConnection) {
        let Some(h3) = self.h3.as_ref() else { return };
        let no_queue = conn.dgram_send_queue_len() == 0 && conn.is_dgram_send_queue_full();
        let max = if h3.dgram_enabled_by_peer(conn) && !no_queue {
            conn.dgram_max_writable_len().unwrap_or(0)
        } else {
            0
        };
        self.max_datagram.set(max);
    }

    /// Sends the datagrams flows queued while quiche's queue has room.
    fn send_datagrams(&mut self, conn: &mut QuicConnection) {
        if self.h3.is_none() {
            return;
        }
        self.refresh_max_datagram(conn);
        for (&id, s) in self.streams.iter_mut() {
            while !conn.is_dgram_send_queue_full() {
                let payload = match s.pending_dgram.take() {
                    Some(p) => p,
                    None => match s.flow.as_mut().map(|f| f.from_user.try_recv()) {
                        Some(Ok(p)) => p,
                        _ => break,
                    },
                };
                self.dgram_out.clear();
                put_varint(&mut self.dgram_out, id / 4);
                self.dgram_out.extend_from_slice(&payload);
                if let Err(e) = conn.dgram_send(&self.dgram_out) {
                    // Too large for the path now, or datagrams not negotiated: the
                    // handle checked before queueing, so the path shrank. Dropped,
                    // as datagrams may be.
                    tracing::debug!(stream = id, error = %e, "datagram dropped");
                }
            }
        }
    }

    /// Registers interest in every stream's handles; ready when one has something.
    fn poll_streams(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut ready = false;
        for s in self.streams.values_mut() {
            ready |= s.poll_handles(cx);
        }
        if ready {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn fail_all(&mut self, err: StreamError) {
        for (_, mut s) in self.streams.drain() {
            s.fail(err.clone());
        }
    }
}

/// Stops both directions of stream `id` with `code` (STOP_SENDING and RESET_STREAM).
pub(crate) fn reset_both_ways(conn: &mut QuicConnection, id: u64, code: H3Code) {
    let _ = conn.stream_shutdown(id, quiche::Shutdown::Read, code.0);
    let _ = conn.stream_shutdown(id, quiche::Shutdown::Write, code.0);
}

thread_local! {
    /// Where body bytes and datagrams are read before they are handed on: one buffer
    /// per thread, not per connection, since no read spans an await.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; RECV_CHUNK].into_boxed_slice());
}

/// Runs `f` with this thread's read buffer.
fn with_scratch<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    SCRATCH.with_borrow_mut(|b| f(b))
}

/// A read of body bytes needs at least this much room left in the body arena; with
/// less, the arena moves to a fresh allocation (or reuses its own, once every chunk
/// split off it has been dropped).
const MIN_BODY_READ: usize = 4 * 1024;

thread_local! {
    /// Where body bytes are read. Each chunk is split off it and handed on as is:
    /// quiche copies a body once, into the allocation the reader gets. Chunks read
    /// one after another share an allocation of [`RECV_CHUNK`] bytes, so a chunk
    /// keeps at most that much memory alive, as a chunk of its own size would.
    static BODY_ARENA: std::cell::RefCell<BytesMut> =
        std::cell::RefCell::new(BytesMut::new());
}

/// Reads up to [`RECV_CHUNK`] bytes of stream `id`'s body (across DATA frames).
fn recv_chunk(
    h3: &mut H3Conn,
    conn: &mut QuicConnection,
    id: u64,
) -> Result<Bytes, quiche::h3::Error> {
    BODY_ARENA.with_borrow_mut(|arena| {
        if arena.capacity() - arena.len() < MIN_BODY_READ {
            arena.reserve(RECV_CHUNK);
        }
        let room = (arena.capacity() - arena.len()).min(RECV_CHUNK);
        match h3.recv_body_buf(conn, id, (&mut *arena).limit(room)) {
            Ok(_) => Ok(arena.split().freeze()),
            Err(e) => {
                // Whatever an error left behind must not become part of the next
                // stream's chunk.
                arena.clear();
                Err(e)
            }
        }
    })
}

/// Reads stream `id`'s body while quiche has bytes and the body's queue has room;
/// returns whether anything was read.
fn read_body(h3: &mut H3Conn, conn: &mut QuicConnection, id: u64, s: &mut Stream) -> bool {
    let mut read_any = false;
    while s.readable && s.has_room() {
        match recv_chunk(h3, conn, id) {
            Ok(chunk) => {
                let n = chunk.len();
                read_any = true;
                s.received += n as u64;
                if let Some(limit) = s.body_limit.filter(|l| s.received > *l) {
                    // Refuse the rest; the reader learns why and may still answer
                    // (a 413, say).
                    let _ =
                        conn.stream_shutdown(id, quiche::Shutdown::Read, H3Code::EXCESSIVE_LOAD.0);
                    s.fail_inbound(StreamError::BodyTooLarge { limit });
                    break;
                }
                if s.expected_len.is_some_and(|e| s.received > e) {
                    // RFC 9114 §4.1.2: more body than content-length said: malformed.
                    reset_both_ways(conn, id, H3Code::MESSAGE_ERROR);
                    s.fail(StreamError::Malformed("body longer than content-length"));
                    break;
                }
                s.push_in(InFrame::Data(chunk));
                if s.holding && !conn.stream_readable(id) {
                    // All of it so far: no read to learn that from (the chunk just
                    // read fills the only slot).
                    s.readable = false;
                }
            }
            Err(quiche::h3::Error::Done) => s.readable = false,
            Err(e) => {
                tracing::debug!(stream = id, error = %e, "body read failed");
                s.readable = false;
            }
        }
    }
    read_any
}

enum Written {
    All { ends: bool },
    Blocked(OutFrame),
    Failed,
}

/// How writing a response head went.
enum Head {
    Sent,
    /// Flow control: try again later.
    Blocked,
    Failed,
}

/// Writes a response head: the final one, or (after that) more headers.
fn write_head(
    h3: &mut H3Conn,
    conn: &mut QuicConnection,
    id: u64,
    parts: &http::response::Parts,
    length: Option<u64>,
    head_sent: &mut bool,
) -> Head {
    let mut digits = itoa::Buffer::new();
    let mut fields = crate::headers::Fields::new();
    response_fields(parts, length, &mut digits, &mut fields);
    let r = if *head_sent {
        h3.send_additional_headers(conn, id, &fields, false, false)
    } else {
        h3.send_response(conn, id, &fields, false)
    };
    match r {
        Ok(()) => {
            *head_sent = true;
            Head::Sent
        }
        Err(quiche::h3::Error::StreamBlocked | quiche::h3::Error::Done) => Head::Blocked,
        Err(e) => {
            tracing::debug!(stream = id, error = %e, "sending a response head failed");
            Head::Failed
        }
    }
}

/// Writes body data, with the stream's FIN if `last` (quiche sets it only once the
/// whole of `data` is taken); what is left waits for flow control.
fn write_data(
    h3: &mut H3Conn,
    conn: &mut QuicConnection,
    id: u64,
    mut data: Bytes,
    last: bool,
) -> Written {
    let rest = |data| {
        if last {
            OutFrame::LastData(data)
        } else {
            OutFrame::Data(data)
        }
    };
    match h3.send_body(conn, id, &data, last) {
        Ok(n) if n == data.len() => Written::All { ends: last },
        Ok(n) => {
            data.advance(n);
            Written::Blocked(rest(data))
        }
        Err(quiche::h3::Error::Done | quiche::h3::Error::StreamBlocked) => {
            Written::Blocked(rest(data))
        }
        Err(e) => {
            tracing::debug!(stream = id, error = %e, "sending body data failed");
            Written::Failed
        }
    }
}

/// Writes one frame of stream `id`; `head_sent` tells whether a response head (a 1xx)
/// went out before, after which further heads are additional HEADERS frames.
fn write_frame(
    h3: &mut H3Conn,
    conn: &mut QuicConnection,
    id: u64,
    frame: OutFrame,
    head_sent: &mut bool,
) -> Written {
    match frame {
        OutFrame::Response(parts) => match write_head(h3, conn, id, &parts, None, head_sent) {
            Head::Sent => Written::All { ends: false },
            Head::Blocked => Written::Blocked(OutFrame::Response(parts)),
            Head::Failed => Written::Failed,
        },
        OutFrame::Whole(parts, data, sized) => {
            let length = sized.then_some(data.len() as u64);
            match write_head(h3, conn, id, &parts, length, head_sent) {
                Head::Sent => write_data(h3, conn, id, data, true),
                Head::Blocked => Written::Blocked(OutFrame::Whole(parts, data, sized)),
                Head::Failed => Written::Failed,
            }
        }
        OutFrame::Data(data) => write_data(h3, conn, id, data, false),
        OutFrame::LastData(data) => write_data(h3, conn, id, data, true),
        OutFrame::Trailers(trailers) => {
            let r = {
                let fields = trailer_fields(&trailers);
                h3.send_additional_headers(conn, id, &fields, true, true)
            };
            match r {
                Ok(()) => Written::All { ends: true },
                Err(quiche::h3::Error::StreamBlocked | quiche::h3::Error::Done) => {
                    Written::Blocked(OutFrame::Trailers(trailers))
                }
                Err(e) => {
                    tracing::debug!(stream = id, error = %e, "sending trailers failed");
                    Written::Failed
                }
            }
        }
        OutFrame::Abort(code) => {
            reset_both_ways(conn, id, code);
            Written::All { ends: true }
        }
        OutFrame::Finish => match h3.send_body(conn, id, &[], true) {
            Ok(_) => Written::All { ends: true },
            Err(quiche::h3::Error::Done | quiche::h3::Error::StreamBlocked) => {
                Written::Blocked(OutFrame::Finish)
            }
            Err(e) => {
                tracing::debug!(stream = id, error = %e, "finishing a body failed");
                Written::Failed
            }
        },
    }
}

impl<H: Hooks> ApplicationOverQuic for H3Driver<H> {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        let info = quic_app::ConnectionInfo::new(std::sync::Arc::new(info.clone()));
        self.core.request_extensions = http::Extensions::new();
        self.core.request_extensions.insert(info);
        let mut cfg = quiche::h3::Config::new().map_err(h3_to_app)?;
        cfg.set_max_field_section_size(self.core.settings.max_field_section_size);
        cfg.enable_extended_connect(self.core.settings.enable_extended_connect);
        let h3 = quiche::h3::Connection::with_transport(conn, &cfg).map_err(h3_to_app)?;
        self.core.h3 = Some(H3Conn::new(h3));
        Ok(())
    }

    fn should_act(&self) -> bool {
        true
    }

    async fn wait_for_data(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let Self { core, hooks } = self;
        std::future::poll_fn(|cx| {
            if hooks.poll_work(core, conn, cx).is_ready() {
                return Poll::Ready(());
            }
            core.poll_streams(cx)
        })
        .await;
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        // Reading a body can unblock further frames of the same stream (trailers, the
        // FIN), which quiche reports only on the next poll: go round until a pass
        // reads nothing.
        self.core.recv_datagrams(conn);
        loop {
            self.poll_events(conn);
            self.hooks.after_events(&mut self.core, conn);
            if !self.core.pump_inbound(conn) {
                return Ok(());
            }
        }
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.hooks.start_work(&mut self.core, conn);
        self.core.send_datagrams(conn);
        self.core.pump_outbound(conn);
        self.hooks.after_writes(&mut self.core, conn);
        Ok(())
    }

    fn handed_off_work(&mut self) -> bool {
        // Asked once a turn: the turn's count of header sections decides the next.
        self.core.reads_between = std::mem::take(&mut self.core.heads) >= READS_BETWEEN_HEADS;
        std::mem::take(&mut self.core.handed_off)
    }

    /// quiche's HTTP/3 `poll` lists every readable stream each time it is called, and
    /// a request takes two such calls (its head, then its body), so a turn that reads
    /// `n` new requests at once spends time in `n²`. While requests arrive many per
    /// turn, reads between datagrams keep `n` to what a datagram carries. One upload
    /// at a time gains nothing from them (a body read per datagram instead of one for
    /// the turn), nor does one request at a time.
    fn reads_between_datagrams(&self) -> bool {
        self.core.reads_between
    }

    fn handoff_passes(&self) -> usize {
        self.hooks.handoff_passes()
    }

    /// Every request has finished both ways and the peer has acknowledged every
    /// stream's last bytes.
    fn delivered(&mut self, conn: &mut QuicConnection) -> bool {
        self.core.streams.is_empty() && self.core.all_acknowledged(conn)
    }

    fn on_conn_close(&mut self, conn: &mut QuicConnection, _reason: &CloseReason) {
        // What the peer sent before the close was acknowledged, and the peer may have
        // closed because of it (a drained server closes once its responses are): it
        // still reaches the bodies, past their queues' bound, and a body whose end
        // arrived ends cleanly. Bounded by what the flow control windows let quiche
        // hold.
        self.core.closing = true;
        for s in self.core.streams.values_mut() {
            s.last_pass = true;
        }
        let _ = self.process_reads(conn);
        for s in self.core.streams.values_mut() {
            s.maybe_close_inbound();
        }
        self.core.fail_all(StreamError::ConnectionClosed);
        self.hooks.on_close(&mut self.core);
    }
}

impl<H: Hooks> H3Driver<H> {
    /// Hands every pending HTTP/3 event to the stream table and the role's hooks.
    fn poll_events(&mut self, conn: &mut QuicConnection) {
        loop {
            let Some(h3) = self.core.h3.as_mut() else {
                return;
            };
            let (id, event) = match h3.poll(conn) {
                Ok(v) => v,
                Err(quiche::h3::Error::Done) => break,
                Err(e) => {
                    // quiche has already closed the connection with the right code.
                    tracing::debug!(error = %e, "HTTP/3 connection error");
                    break;
                }
            };
            match event {
                quiche::h3::Event::Headers { list, more_frames } => {
                    self.core.heads += 1;
                    // A head may open a datagram flow (or answer one): its user reads
                    // the datagram size at once, before this turn's writes.
                    self.core.refresh_max_datagram(conn);
                    self.hooks
                        .on_headers(&mut self.core, conn, id, list, more_frames);
                }
                quiche::h3::Event::Data => {
                    if let Some(s) = self.core.streams.get_mut(&id) {
                        s.readable = true;
                        if !s.receiver_gone() {
                            // Read now: a stream quiche still holds data for stays in
                            // its readable set, which every later `poll` walks.
                            s.flush_pending_in();
                            read_body(h3, conn, id, s);
                            s.maybe_close_inbound();
                        }
                    } else {
                        // Data for a stream we gave up on: drop it.
                        with_scratch(|scratch| {
                            while let Ok(n) = h3.recv_body(conn, id, scratch) {
                                if n == 0 {
                                    break;
                                }
                            }
                        });
                    }
                }
                quiche::h3::Event::Finished => {
                    if let Some(s) = self.core.streams.get_mut(&id) {
                        if s.expected_len.is_some_and(|e| e != s.received) {
                            self.core
                                .malformed(conn, id, "body shorter than content-length");
                            continue;
                        }
                        s.in_finished = true;
                        if !s.inbound_open() {
                            // No body to hand the end to (`pump_inbound` does that
                            // for the others): the inbound side is done.
                            s.flush_pending_in();
                            s.maybe_close_inbound();
                        }
                    }
                }
                quiche::h3::Event::Reset(code) => {
                    if let Some(s) = self.core.streams.get_mut(&id) {
                        s.fail_inbound(StreamError::Reset(H3Code(code)));
                    }
                }
                quiche::h3::Event::GoAway => self.hooks.on_goaway(&mut self.core, id),
                quiche::h3::Event::PriorityUpdate => {}
            }
        }
    }
}

fn h3_to_app(e: quiche::h3::Error) -> AppError {
    AppError::close(
        H3Code::INTERNAL_ERROR.0,
        format!("HTTP/3 setup failed: {e}"),
    )
}

/// Whether a field list is informational (1xx) response.
pub(crate) fn is_informational(list: &[quiche::h3::Header]) -> bool {
    list.iter()
        .find(|h| h.name() == b":status")
        .is_some_and(|h| h.value().first() == Some(&b'1'))
}

/// Builds the response head frame for a `Response<()>`.
pub(crate) fn response_frame(resp: http::Response<()>) -> OutFrame {
    OutFrame::Response(resp.into_parts().0)
}
