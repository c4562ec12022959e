//! The per-connection I/O worker: one task per connection, the only owner of its
//! `quiche::Connection`.
//!
//! Each turn of the loop waits for the first of: the connection's timer, datagrams from
//! the router, a command from a handle, or the application's own work; then feeds every
//! queued datagram to the connection, runs the application's callbacks, and sends the
//! connection's output in GSO batches.

pub(crate) mod batch;
mod logging;
mod retired;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quic_app::queue;
use quic_app::{AppDriver, ApplicationOverQuic, CloseReason, ConnectionStats, HandshakeInfo};
use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cid::{ConnectionIdGenerator, ResetKey};
use crate::handle::{ConnState, ConnectionClosed, ConnectionHandle, SessionSlot};
use crate::metrics::Metrics;
use crate::router::Registration;
use crate::socket::{Datagram, Socket};
use batch::{Next, SendBatcher};
use logging::setup_logging;
use retired::RetiredIds;

// The queues into a worker, filled by its router (datagrams) and its handles
// (commands).

/// Datagrams queued for one connection's worker. A full queue drops the datagram and
/// counts it ([`Metrics::queue_full_drop`](crate::metrics::Metrics::queue_full_drop)); QUIC recovers it as a loss. 1024 covers a
/// full receive batch many times over for a worker that is briefly busy.
pub(crate) const WORKER_QUEUE: usize = 1024;

/// Bytes queued for one connection's worker, whatever the datagrams' count: GRO can
/// deliver datagrams far larger than a packet, and a queue of them must not hold tens
/// of megabytes. 2 MiB is more than a full queue of 1024 ordinary datagrams; a full
/// queue drops and counts as above.
pub(crate) const WORKER_QUEUE_BYTES: usize = 2 * 1024 * 1024;

/// Datagrams queued for a worker beyond which a datagram whose bytes share an
/// allocation with other senders' is copied out before it joins them: a worker this
/// far behind may hold it long. Below it (a worker keeping up) nothing is copied.
pub(crate) const COPY_SHARED_AFTER: usize = 64;

/// Commands to a worker (close, stats). Few are ever in flight.
pub(crate) const WORKER_COMMAND_QUEUE: usize = 16;

/// Datagrams fed to the connection per turn before the worker sends and checks its
/// timer again: bounds the time between two sends under a flood of input.
const MAX_DATAGRAMS_PER_TURN: usize = 256;

/// Sends (each a send buffer's worth of batches, at most about 64 KB) per flush
/// before the worker yields to other tasks.
const SENDS_BEFORE_YIELD: usize = 16;

/// Datagrams one flush may send while the connection is closing (a close is pending
/// but quiche is not yet draining). A close takes one or two; more means quiche
/// cannot send its CONNECTION_CLOSE and keeps producing packets that carry nothing
/// new (an ACK-only Handshake packet each time, when the application closed while a
/// Handshake probe was due), which would otherwise go out as fast as the socket
/// takes them.
const CLOSING_DATAGRAMS_PER_FLUSH: usize = 8;

/// How long a close may stay unsent (see [`CLOSING_DATAGRAMS_PER_FLUSH`]) before the
/// worker gives the connection up without one; the peer then learns of it from its
/// idle timeout, or from a stateless reset.
const CLOSE_STALL_LIMIT: Duration = Duration::from_secs(2);

/// The transport error code INTERNAL_ERROR (RFC 9000 §20.1).
const INTERNAL_ERROR: u64 = 0x1;

/// Messages into a worker from its handles and its router.
#[derive(Debug)]
pub(crate) enum WorkerCommand {
    /// Close the connection with this error: at once, or with `by`, once the
    /// application's data has been acknowledged
    /// ([`ApplicationOverQuic::delivered`]) and at the latest at `by`.
    Close {
        app: bool,
        code: u64,
        reason: Vec<u8>,
        by: Option<Instant>,
    },
    /// Report the connection's counters now.
    Stats(oneshot::Sender<ConnectionStats>),
    /// Move this client connection to `socket` (bound, not yet used).
    Migrate {
        socket: std::net::UdpSocket,
        reply: oneshot::Sender<Result<SocketAddr, MigrateError>>,
    },
}

/// Why a connection could not migrate ([`ConnectionHandle::migrate`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// Only a client moves its connection (RFC 9000 §9).
    #[error("only a client connection can migrate")]
    NotClient,
    /// The handshake has not completed, or the connection is closing.
    #[error("the connection is not established (or is closing)")]
    NotEstablished,
    /// A migration is already under way.
    #[error("a migration is already under way")]
    InProgress,
    /// The new socket could not be bound or set up.
    #[error("cannot use the new socket: {0}")]
    Socket(#[source] std::io::Error),
    /// quiche refused: typically no spare connection ID from the server yet
    /// (`OutOfIdentifiers`), or the peer disabled active migration.
    #[error("quiche refused the migration: {0}")]
    Refused(#[source] quiche::Error),
    /// The connection has ended.
    #[error("the connection has ended")]
    Closed,
}

/// A socket a client connection is moving to: kept with its router until quiche has
/// validated the new path; then it replaces the old one.
struct Migration {
    socket: Arc<Socket>,
    registration: Registration,
}

/// What every worker of one endpoint shares.
pub(crate) struct WorkerShared {
    pub(crate) handshake_timeout: Duration,
    pub(crate) qlog_dir: Option<PathBuf>,
    pub(crate) qlog_max_bytes: u64,
    pub(crate) keylog_file: Option<PathBuf>,
    pub(crate) metrics: Arc<dyn Metrics>,
    pub(crate) max_payload: usize,
    pub(crate) pacing: bool,
    pub(crate) coalesce_answers: bool,
    /// Send buffers, lent to a connection while it sends.
    pub(crate) send_buffers: Arc<batch::BufferPool>,
    /// Where spare connection IDs come from.
    pub(crate) issuer: Option<Issuer>,
    /// Whether sockets this endpoint adds use GSO.
    pub(crate) gso: bool,
}

/// What a worker needs to issue spare connection IDs: their generator, and the key
/// their stateless reset tokens derive from.
pub(crate) struct Issuer {
    pub(crate) cids: Arc<dyn ConnectionIdGenerator>,
    pub(crate) reset_key: ResetKey,
}

impl WorkerShared {
    pub(crate) fn new(
        settings: &crate::QuicSettings,
        metrics: Arc<dyn Metrics>,
        issuer: Option<Issuer>,
    ) -> Arc<Self> {
        Arc::new(Self {
            handshake_timeout: settings.handshake_timeout,
            qlog_dir: settings.qlog_dir.clone(),
            qlog_max_bytes: settings.qlog_max_bytes,
            keylog_file: settings.keylog_file.clone(),
            metrics,
            max_payload: settings.max_send_udp_payload,
            pacing: settings.pacing,
            coalesce_answers: settings.coalesce_answers,
            send_buffers: Arc::default(),
            issuer,
            gso: settings.enable_gso,
        })
    }
}

/// Everything a worker needs besides its application.
pub(crate) struct WorkerSetup {
    /// Boxed: the connection (several KB) then moves by pointer from the accept path
    /// through the listener into the worker's task.
    pub(crate) conn: Box<quiche::Connection>,
    /// Unregisters the connection from its router when the worker ends, however it
    /// ends.
    pub(crate) registration: Registration,
    pub(crate) socket: Arc<Socket>,
    pub(crate) pkt_rx: queue::Receiver<Datagram>,
    /// A client's own sender into `pkt_rx`, for the router of a socket it migrates
    /// to. Servers hold none, so that their queue closes with their router.
    pub(crate) pkt_tx: Option<queue::Sender<Datagram>>,
    pub(crate) ctrl_rx: queue::Receiver<WorkerCommand>,
    pub(crate) ctrl_tx: queue::Sender<WorkerCommand>,
    pub(crate) shared: Arc<WorkerShared>,
    pub(crate) abort: CancellationToken,
    pub(crate) local: SocketAddr,
    pub(crate) peer: SocketAddr,
    pub(crate) started: Instant,
}

/// Starts the worker task for `setup` driving `app`. With `refuse`, the connection is
/// closed with that transport error once the handshake completes, and `app` is never
/// told it was established.
pub(crate) fn spawn<A: ApplicationOverQuic>(
    mut setup: WorkerSetup,
    app: A,
    refuse: Option<u64>,
) -> ConnectionHandle {
    let scid = hex(&setup.conn.source_id());
    let side = if setup.conn.is_server() {
        "server"
    } else {
        "client"
    };
    let span = tracing::info_span!("quic_conn", %scid, peer = %setup.peer, side);
    let _entered = span.enter();
    setup_logging(&mut setup, &scid);
    drop(_entered);
    let (state_tx, state_rx) = watch::channel(ConnState::Handshaking);
    let session = SessionSlot::default();
    let handle = ConnectionHandle::new(
        setup.ctrl_tx.clone(),
        state_rx,
        setup.local,
        setup.peer,
        scid,
        Arc::clone(&session),
        span.clone(),
    );
    let batcher = SendBatcher::new(
        setup.shared.max_payload,
        setup.socket.max_segments(),
        setup.shared.pacing,
        Arc::clone(&setup.shared.send_buffers),
    );
    let mut worker = Worker {
        handshake_deadline: setup.started + setup.shared.handshake_timeout,
        setup,
        driver: AppDriver::new(app),
        batcher,
        state_tx,
        refuse,
        reset_seen: false,
        unread: false,
        handshake_timed_out: false,
        verify_error: None,
        established_at: None,
        early_data_noted: false,
        session,
        session_seen: None,
        closing: None,
        close_stalled_at: None,
        reported: false,
        migration: None,
        cipher: None,
        retired: RetiredIds::default(),
        spares: SpareIds::default(),
    };
    // The task's future holds the worker once: `run` borrows it from the block's
    // capture. An async fn taking `self` by value (or a block that moves its capture
    // into a local) keeps two copies of the worker, connection included, in its state.
    let fut = async move { worker.run().await };
    crate::spawn::task(fut.instrument(span));
    handle
}

struct Worker<A> {
    setup: WorkerSetup,
    driver: AppDriver<A>,
    batcher: SendBatcher,
    state_tx: watch::Sender<ConnState>,
    handshake_deadline: Instant,
    refuse: Option<u64>,
    reset_seen: bool,
    /// A datagram was fed since the application last read.
    unread: bool,
    handshake_timed_out: bool,
    verify_error: Option<String>,
    established_at: Option<Instant>,
    early_data_noted: bool,
    /// Where a client publishes its latest session ticket.
    session: SessionSlot,
    /// Address and length of the ticket last published.
    session_seen: Option<(usize, usize)>,
    /// A graceful close waiting for the application's data to be acknowledged.
    closing: Option<PendingClose>,
    /// When a flush first found the connection's close unsendable.
    close_stalled_at: Option<Instant>,
    /// The application and the handles were told the connection closed.
    reported: bool,
    /// A client's move to a new socket, until the new path is validated.
    migration: Option<Migration>,
    /// The negotiated cipher suite and key-exchange group, once the handshake
    /// completed.
    cipher: Option<crate::tls::Negotiated>,
    /// The source IDs the peer retired lately; see [`RetiredIds`].
    retired: RetiredIds,
    /// The source IDs the peer has used; see [`Worker::issue_connection_ids`].
    spares: SpareIds,
}

/// Spare source IDs the peer holds unused at a time (RFC 9000 §5.1.1 lets it hold up
/// to its `active_connection_id_limit`). One: a peer given several can skip to a
/// later one and retire the earlier unseen, as quinn's server does when quiche
/// retransmits a lost packet's NEW_CONNECTION_ID frames in reverse order; quiche
/// 0.30 then re-sends the retired ID's frame when the first copy is declared lost,
/// and every later send fails (see [`Worker::fail_send`]). Another is issued as soon
/// as the peer is seen using this one, so each move to a new path finds one.
const SPARE_IDS: usize = 1;

/// Which source IDs the peer has been seen sending to.
struct SpareIds {
    /// Each one the active path's packets came to since it was issued, until retired.
    used: Vec<quiche::ConnectionId<'static>>,
    /// An ID came into use or was retired since spares were last counted.
    changed: bool,
}

impl Default for SpareIds {
    fn default() -> Self {
        Self {
            used: Vec::new(),
            changed: true,
        }
    }
}

/// A close that waits for [`ApplicationOverQuic::delivered`].
struct PendingClose {
    app: bool,
    code: u64,
    reason: Vec<u8>,
    by: Instant,
}

impl<A: ApplicationOverQuic> Worker<A> {
    async fn run(&mut self) {
        if self.setup.conn.is_server() {
            // A client's first flight can span several datagrams (a post-quantum key
            // share does not fit in one). Reading what has arrived since the router
            // took the first one lets the server answer once, with its whole first
            // flight, rather than with an ACK-only Initial padded to full size first.
            self.drain_queue(1);
        }
        // A client's first flight is ready before anything arrives.
        self.flush().await;
        if self.driver.will_establish(&self.setup.conn) {
            // A client resuming with early data: the application sends in 0-RTT now,
            // without waiting for the server's first flight.
            self.run_application();
            self.note_established();
            self.flush().await;
        }
        let reason = loop {
            let established = self.setup.conn.is_established();
            let timer = [
                self.setup.conn.timeout_instant(),
                (!established).then_some(self.handshake_deadline),
                self.batcher.holding(),
                self.closing.as_ref().map(|c| c.by),
                self.close_stalled_at.map(|t| t + CLOSE_STALL_LIMIT),
            ]
            .into_iter()
            .flatten()
            .min();
            let wait_app = self.driver.wants_to_wait(&self.setup.conn);
            let s = &mut self.setup;
            let driver = &mut self.driver;
            tokio::select! {
                // The timer goes first: loss detection and the idle timeout must fire on
                // time even when datagrams keep arriving.
                biased;
                () = sleep_until(timer), if timer.is_some() => {}
                () = s.abort.cancelled() => break CloseReason::Aborted,
                dgram = s.pkt_rx.recv() => {
                    let Some(d) = dgram else {
                        // Every sender is gone: the router has ended (a runtime
                        // shutting down can drop its task before this one), and
                        // nothing can reach the connection any more. Waiting on would
                        // find the queue closed on every turn, without ever yielding.
                        break CloseReason::Aborted;
                    };
                    let fed = d.count();
                    self.recv(d);
                    self.drain_queue(fed);
                }
                cmd = s.ctrl_rx.recv() => {
                    if let Some(cmd) = cmd {
                        self.command(cmd);
                    }
                }
                () = driver.wait_for_data(&mut s.conn), if wait_app => {}
            }
            let now = Instant::now();
            if self.setup.conn.timeout_instant().is_some_and(|t| t <= now) {
                self.setup.conn.on_timeout();
            }
            // A refusal waits for the handshake: before it, the client may not yet have
            // the keys to read a CONNECTION_CLOSE (its first flight can span two
            // Initials, and quiche sends the close at the highest level it has).
            if let Some(code) = self.refuse.take_if(|_| self.setup.conn.is_established()) {
                let _ = self.setup.conn.close(false, code, b"connection refused");
            }
            if !self.setup.conn.is_established()
                && now >= self.handshake_deadline
                && !self.setup.conn.is_closed()
            {
                self.handshake_timed_out = true;
                let _ = self.setup.conn.close(false, 0x0, b"handshake timeout");
                self.flush().await;
                break CloseReason::HandshakeTimeout;
            }
            if !self.setup.conn.is_server()
                && (self.driver.will_establish(&self.setup.conn)
                    || (self.established_at.is_none() && self.setup.conn.is_established()))
            {
                // See `AppDriver::will_establish`: the client's Finished must leave
                // first. This holds too for a client that already runs its application
                // on 0-RTT keys: the turn that completes the handshake may be the one in
                // which the application closes. A server's Finished left with its first
                // flight, so its output of this turn goes out in one flush below.
                self.flush().await;
            }
            if !self.setup.conn.is_server() && self.setup.conn.is_established() {
                // Before the application runs: a response it hands out can start the
                // next connection (the server drained this one) on another thread at
                // once, and that connection resumes with the ticket published here.
                self.note_session();
            }
            if self.refuse.is_none() {
                self.run_application();
                let passes = self.driver.handoff_passes();
                if passes > 0 && self.setup.shared.coalesce_answers {
                    // The tasks just handed work (a request's handler, say) often
                    // answer at once. Letting them run first puts the answer in this
                    // flush, with the acknowledgements, instead of in a second flush
                    // (and system call) of its own. Each pass puts the worker at the
                    // back of the run queue once: one for the task it woke, one more
                    // for each task that task passes the work on to.
                    for _ in 0..passes {
                        requeue().await;
                    }
                    self.run_application();
                }
            }
            self.note_established();
            self.retired.expire(now);
            self.issue_connection_ids();
            self.finish_migration();
            self.close_when_delivered(now);
            self.flush().await;
            if self.setup.conn.is_closed() {
                break self.close_reason();
            }
            if !self.reported
                && self.setup.conn.is_draining()
                && self.setup.conn.peer_error().is_some()
            {
                // The peer closed: nothing more can be sent or read, so the handles
                // (a `connect` waiting for its handshake, say) learn of it now, not
                // at the end of the draining period (three probe timeouts, seconds
                // before the first RTT sample). The worker stays to absorb late
                // packets until then.
                let reason = self.close_reason();
                self.report_closed(reason);
            }
            if self.setup.conn.is_draining() {
                // The close went out after all.
                self.close_stalled_at = None;
            }
            if self
                .close_stalled_at
                .is_some_and(|t| now >= t + CLOSE_STALL_LIMIT)
            {
                tracing::debug!("close could not be sent; connection given up");
                break self.close_reason();
            }
        };
        self.report_closed(reason);
        // The registration unregisters the connection when the worker is dropped.
    }

    /// Feeds `d`, one datagram or a run of them (only 1-RTT packets are merged, so
    /// none of a run's can carry 0-RTT data), to the connection.
    fn recv(&mut self, d: Datagram) {
        let info = quiche::RecvInfo {
            from: d.from,
            to: d.to,
        };
        d.for_each_datagram(|buf| self.recv_one(buf, info));
    }

    fn recv_one(&mut self, buf: &mut [u8], info: quiche::RecvInfo) {
        let was_closed = self.setup.conn.is_closed();
        if self.retired.addressed(buf) {
            tracing::trace!("datagram to a retired connection ID dropped");
            return;
        }
        if self.unread {
            // Between two datagrams of a turn, if the application asks for it.
            self.driver.reads_between(&mut self.setup.conn);
        }
        self.unread = true;
        if let Err(e) = self.setup.conn.recv(buf, info) {
            tracing::trace!(error = %e, "datagram rejected");
        }
        if self.note_retired() {
            // At once, not at the end of the turn: with its last spare in use, quiche
            // 0.30 closes the connection (PROTOCOL_VIOLATION) on any further
            // RETIRE_CONNECTION_ID, even a repeat of one it has just processed, and
            // a peer resending its retirement can land in the same batch.
            self.issue_connection_ids();
        }
        if !self.setup.conn.is_server() && self.verify_error.is_none() {
            self.verify_error = crate::tls::take_verify_error();
        }
        // Taken every time, so that none is left for another connection's turn.
        if let Some(negotiated) = crate::tls::take_cipher() {
            self.cipher = Some(negotiated);
        }
        // quiche marks the connection closed, with no error recorded, when a datagram
        // it cannot decrypt ends with the peer's stateless reset token.
        if !was_closed
            && self.setup.conn.is_closed()
            && self.setup.conn.peer_error().is_none()
            && self.setup.conn.local_error().is_none()
            && !self.setup.conn.is_timed_out()
        {
            self.reset_seen = true;
        }
    }

    /// Feeds every queued datagram, up to a bound.
    fn drain_queue(&mut self, fed: usize) {
        thread_local! {
            /// The datagrams a turn under way has taken from its queue: per thread,
            /// so that no connection keeps storage of its own for them.
            static INBOX: RefCell<VecDeque<Datagram>> = const { RefCell::new(VecDeque::new()) };
        }
        INBOX.with(|inbox| match inbox.try_borrow_mut() {
            Ok(mut inbox) => self.drain_into(&mut inbox, fed),
            // Never in practice (a turn does not start another), but never a panic.
            Err(_) => self.drain_into(&mut VecDeque::new(), fed),
        });
    }

    /// Takes the queued datagrams a burst per lock, never more than the turn still
    /// feeds, so `inbox` is empty when it returns. A merged run counts as its
    /// datagrams; one that alone is over what the turn has left is still taken, so a
    /// turn may go past its bound by the rest of one run. `fed`: the datagrams the
    /// turn has fed already.
    fn drain_into(&mut self, inbox: &mut VecDeque<Datagram>, mut fed: usize) {
        // Left over only if a turn on this thread panicked midway: not this
        // connection's.
        inbox.clear();
        while fed < MAX_DATAGRAMS_PER_TURN {
            if self.in_early_data() {
                // What arrived on 0-RTT keys reaches the application before the next
                // datagram can complete the handshake, so it can tell early data
                // (replayable) from the rest.
                self.run_application();
            }
            if inbox.is_empty()
                && self.setup.pkt_rx.take_within(
                    inbox,
                    MAX_DATAGRAMS_PER_TURN - fed,
                    Datagram::count,
                ) == 0
            {
                return;
            }
            match inbox.pop_front() {
                Some(d) => {
                    fed += d.count();
                    self.recv(d);
                }
                None => return,
            }
        }
    }

    fn command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Close {
                app,
                code,
                reason,
                by: Some(by),
            } => {
                self.closing = Some(PendingClose {
                    app,
                    code,
                    reason,
                    by,
                });
                self.close_when_delivered(Instant::now());
            }
            WorkerCommand::Close {
                app, code, reason, ..
            } => {
                // RFC 9000 §10.2.3: before the handshake is confirmed an application
                // close travels as a transport APPLICATION_ERROR; quiche does this.
                let _ = self.setup.conn.close(app, code, &reason);
            }
            WorkerCommand::Stats(reply) => {
                let _ = reply.send(ConnectionStats::from_connection(&self.setup.conn));
            }
            WorkerCommand::Migrate { socket, reply } => {
                let _ = reply.send(self.migrate(socket));
            }
        }
    }

    /// Carries out a graceful close once the application's data is acknowledged, or
    /// its deadline has come.
    fn close_when_delivered(&mut self, now: Instant) {
        let Some(c) = &self.closing else { return };
        if now < c.by && !self.driver.delivered(&mut self.setup.conn) {
            return;
        }
        if now >= c.by {
            tracing::debug!("closing before the peer acknowledged all data");
        }
        let c = self.closing.take().expect("checked above");
        let _ = self.setup.conn.close(c.app, c.code, &c.reason);
    }

    /// A server that accepted 0-RTT data, before the handshake completed.
    fn in_early_data(&self) -> bool {
        // Cheapest first: after the handshake this is one field read per datagram.
        !self.setup.conn.is_established()
            && self.refuse.is_none()
            && self.setup.conn.is_server()
            && self.setup.conn.is_in_early_data()
    }

    fn run_application(&mut self) {
        self.unread = false;
        let (local, peer, started) = (self.setup.local, self.setup.peer, self.setup.started);
        let cipher = self.cipher;
        self.driver.after_input(&mut self.setup.conn, |c| {
            let mut info = HandshakeInfo::from_connection(c, local, peer, started.elapsed());
            info.cipher = cipher.and_then(|n| n.cipher);
            info.key_exchange = cipher.and_then(|n| n.group);
            info
        });
    }

    /// Publishes the client's newest session ticket, when it changed.
    fn note_session(&mut self) {
        let Some(ticket) = self.setup.conn.session() else {
            return;
        };
        // quiche replaces its ticket with a new allocation: an unchanged address and
        // length is the same ticket, so most turns take no lock and copy nothing.
        let seen = (ticket.as_ptr() as usize, ticket.len());
        if self.session_seen == Some(seen) {
            return;
        }
        self.session_seen = Some(seen);
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = Some(ticket.into());
    }

    fn note_established(&mut self) {
        if !self.setup.conn.is_server() && self.setup.conn.is_established() {
            self.note_session();
        }
        if !self.early_data_noted
            && self.established_at.is_none()
            && self.driver.is_established()
            && !self.setup.conn.is_established()
        {
            self.early_data_noted = true;
            let info = HandshakeInfo::from_connection(
                &self.setup.conn,
                self.setup.local,
                self.setup.peer,
                self.setup.started.elapsed(),
            );
            tracing::debug!("sending 0-RTT data");
            self.state_tx.send_replace(ConnState::EarlyData(info));
        }
        if self.established_at.is_some() || !self.setup.conn.is_established() {
            return;
        }
        let now = Instant::now();
        self.established_at = Some(now);
        let duration = now - self.setup.started;
        self.setup.shared.metrics.handshake_completed(duration);
        let mut info = HandshakeInfo::from_connection(
            &self.setup.conn,
            self.setup.local,
            self.setup.peer,
            duration,
        );
        info.cipher = self.cipher.and_then(|n| n.cipher);
        info.key_exchange = self.cipher.and_then(|n| n.group);
        tracing::debug!(?duration, alpn = %String::from_utf8_lossy(&info.alpn), "handshake complete");
        self.state_tx.send_replace(ConnState::Established(info));
        self.setup.registration.established();
    }

    /// Starts moving a client connection to `socket`: a router for it, routing the
    /// connection's IDs into its queue, and quiche probing the new path (it sends
    /// from there at once). The old socket stays until the path is validated
    /// ([`Self::finish_migration`]).
    fn migrate(&mut self, socket: std::net::UdpSocket) -> Result<SocketAddr, MigrateError> {
        let conn = &mut self.setup.conn;
        // Only a client's worker holds a sender of its own queue.
        let (Some(pkt_tx), Some(issuer)) = (&self.setup.pkt_tx, &self.setup.shared.issuer) else {
            return Err(MigrateError::NotClient);
        };
        if !conn.is_established() || conn.is_closed() || conn.is_draining() {
            return Err(MigrateError::NotEstablished);
        }
        if self.migration.is_some() {
            return Err(MigrateError::InProgress);
        }
        let socket =
            Arc::new(Socket::new(socket, self.setup.shared.gso).map_err(MigrateError::Socket)?);
        let local = socket.local_addr();
        let mut router = crate::router::Router::new(
            Arc::clone(&socket),
            issuer.cids.cid_len(),
            Arc::clone(&self.setup.shared.metrics),
            issuer.reset_key.clone(),
            None,
            self.setup.abort.clone(),
        );
        router.follow(&self.setup.socket);
        let cids = conn.source_ids().map(|c| c.to_vec()).collect();
        let registration = router.adopt(cids, pkt_tx.clone(), self.setup.ctrl_tx.clone());
        conn.migrate_source(local).map_err(MigrateError::Refused)?;
        let span = tracing::info_span!("quic_client_router", %local, server = %self.setup.peer);
        crate::spawn::task(router.run().instrument(span));
        tracing::debug!(from = %self.setup.local, to = %local, "migrating");
        self.migration = Some(Migration {
            socket,
            registration,
        });
        Ok(local)
    }

    /// Once quiche has validated the path a migration probes, its socket becomes the
    /// connection's and the old one is let go (its router ends, the socket closes);
    /// if validation failed, the new socket is let go instead.
    fn finish_migration(&mut self) {
        let Some(m) = &self.migration else { return };
        let new_local = m.socket.local_addr();
        while let Some(event) = self.setup.conn.path_event_next() {
            match event {
                quiche::PathEvent::Validated(local, _) if local == new_local => {
                    let m = self.migration.take().expect("checked above");
                    self.setup.socket = m.socket;
                    self.setup.local = new_local;
                    // Dropping the old registration unregisters the connection from
                    // the old router, which then ends and closes its socket.
                    drop(std::mem::replace(
                        &mut self.setup.registration,
                        m.registration,
                    ));
                    tracing::debug!(local = %new_local, "migrated");
                    return;
                }
                quiche::PathEvent::FailedValidation(local, _) if local == new_local => {
                    tracing::debug!(local = %new_local, "migration failed: path not validated");
                    self.migration = None;
                    return;
                }
                _ => {}
            }
        }
    }

    /// Unroutes the source IDs the peer has just retired, and remembers them: what
    /// was sent to them before and arrives after must not reach quiche.
    /// Returns whether any was.
    fn note_retired(&mut self) -> bool {
        let extra = self.migration.as_ref().map(|m| &m.registration);
        let mut any = false;
        while let Some(cid) = self.setup.conn.retired_scid_next() {
            for r in std::iter::once(&self.setup.registration).chain(extra) {
                r.unroute(cid.to_vec());
            }
            self.retired.push(cid, Instant::now());
            any = true;
        }
        self.spares.changed |= any;
        any
    }

    /// Once established: keeps the peer supplied with [`SPARE_IDS`] unused connection
    /// IDs (routed first), within the limit it allows, noting each time which ID its
    /// packets come to. Each comes from the endpoint's generator, with a reset token
    /// derived from it.
    fn issue_connection_ids(&mut self) {
        let Some(issuer) = &self.setup.shared.issuer else {
            return;
        };
        let conn = &mut self.setup.conn;
        if !conn.is_established() || conn.is_closed() || conn.is_draining() {
            return;
        }
        let spares = &mut self.spares;
        let current = conn.source_id();
        if !spares.used.contains(&current) {
            spares.used.push(current.into_owned());
            spares.changed = true;
        }
        if !spares.changed {
            return;
        }
        spares.changed = false;
        spares.used.retain(|c| conn.source_ids().any(|s| s == c));
        let unused = conn
            .source_ids()
            .filter(|s| !spares.used.contains(s))
            .count();
        let extra = self.migration.as_ref().map(|m| &m.registration);
        // Bounded by SPARE_IDS, and by the peer's active_connection_id_limit through
        // `scids_left`.
        for _ in unused..SPARE_IDS {
            if conn.scids_left() == 0 {
                break;
            }
            let cid = issuer.cids.new_id();
            let token = u128::from_be_bytes(issuer.reset_key.token(&cid));
            for r in std::iter::once(&self.setup.registration).chain(extra) {
                r.route(cid.to_vec());
            }
            if let Err(e) = conn.new_scid(&cid, token, false) {
                tracing::debug!(error = %e, "no spare connection ID issued");
                for r in std::iter::once(&self.setup.registration).chain(extra) {
                    r.unroute(cid.to_vec());
                }
                break;
            }
        }
    }

    /// Sends everything the connection has to send now.
    async fn flush(&mut self) {
        let mut sends = 0;
        let mut closing_datagrams = 0;
        loop {
            let mut max = usize::MAX;
            if self.setup.conn.local_error().is_some() && !self.setup.conn.is_draining() {
                // A close is pending; see `CLOSING_DATAGRAMS_PER_FLUSH`. Once it
                // stalled, one datagram per turn (a timer or a datagram) is plenty.
                let cap = if self.close_stalled_at.is_some() {
                    1
                } else {
                    CLOSING_DATAGRAMS_PER_FLUSH
                };
                if closing_datagrams >= cap {
                    self.close_stalled_at.get_or_insert_with(Instant::now);
                    self.batcher.release();
                    return;
                }
                max = cap - closing_datagrams;
            }
            let next = self.batcher.fill_at_most(&mut self.setup.conn, max);
            if let Some(src) = self.batcher.src() {
                let (buf, batches) = self.batcher.batches();
                if max != usize::MAX {
                    closing_datagrams += batches.iter().map(|b| b.count).sum::<usize>();
                }
                let socket = match &self.migration {
                    Some(m) if m.socket.local_addr() == src => &m.socket,
                    _ => &self.setup.socket,
                };
                let r = socket.send_batches(buf, batches).await;
                self.batcher.sent();
                if let Err(e) = r {
                    // UDP is lossy anyway; QUIC recovers what this loses.
                    tracing::debug!(error = %e, "UDP send failed");
                }
                sends += 1;
                if sends % SENDS_BEFORE_YIELD == 0 {
                    tokio::task::yield_now().await;
                }
            }
            if let Next::Failed(e) = next
                && self.fail_send(e)
            {
                // The close goes out in the next fill.
                continue;
            }
            if next != Next::More {
                self.batcher.release();
                return;
            }
        }
    }

    /// quiche's `send` failed with `e`. Apart from a path briefly without a peer ID
    /// (`OutOfIdentifiers`), such an error repeats at every later send: quiche 0.30,
    /// for one, re-queues a lost NEW_CONNECTION_ID even when the peer has retired
    /// that ID since, and then fails every packet with `InvalidState`. Rather than
    /// wait out the idle timeout unable to send, the connection closes at once
    /// (INTERNAL_ERROR; quiche builds the close without the failing frames), and its
    /// handles learn why. Returns whether a close was started.
    fn fail_send(&mut self, e: quiche::Error) -> bool {
        let conn = &mut self.setup.conn;
        if e == quiche::Error::OutOfIdentifiers || conn.local_error().is_some() {
            tracing::debug!(error = %e, "send failed");
            return false;
        }
        tracing::warn!(error = %e, "quiche cannot build a packet; closing the connection");
        let reason = format!("cannot send: {e:?}");
        conn.close(false, INTERNAL_ERROR, reason.as_bytes()).is_ok()
    }

    fn close_reason(&self) -> CloseReason {
        if self.reset_seen {
            CloseReason::StatelessReset
        } else if self.handshake_timed_out {
            CloseReason::HandshakeTimeout
        } else {
            CloseReason::from_connection(&self.setup.conn)
        }
    }

    /// Tells the application and every handle that the connection closed; once.
    fn report_closed(&mut self, reason: CloseReason) {
        if self.reported {
            return;
        }
        self.reported = true;
        let stats = ConnectionStats::from_connection(&self.setup.conn);
        let metrics = &self.setup.shared.metrics;
        if self.established_at.is_none() {
            metrics.handshake_failed();
        }
        metrics.connection_closed();
        tracing::debug!(%reason, "connection closed");
        self.driver.on_close(&mut self.setup.conn, &reason);
        let established = match &*self.state_tx.borrow() {
            ConnState::Established(info) => Some(info.clone()),
            _ => None,
        };
        self.state_tx.send_replace(ConnState::Closed(
            Arc::new(ConnectionClosed {
                reason,
                stats,
                tls_verify_error: self.verify_error.take(),
            }),
            established,
        ));
    }
}

/// Puts the task at the back of its runtime's run queue, behind the tasks ready now.
/// Unlike `tokio::task::yield_now`, which defers the wake until the scheduler runs out
/// of work (and then polls the I/O driver, and in a multi-threaded runtime wakes the
/// task through the injection queue, a system call), a task that wakes itself is
/// requeued at once.
async fn requeue() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if queued {
            return std::task::Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await;
}

async fn sleep_until(t: Option<Instant>) {
    if let Some(t) = t {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
