//! The inbound packet router: one task per UDP socket, its only reader.
//!
//! The router reads datagrams in batches and routes each by destination connection ID
//! to its connection's worker through a bounded queue. Datagrams for no known
//! connection take the accept path on a listener: version negotiation, Retry, limits,
//! then a new connection offered to the application; or get a stateless reset.
//!
//! On a sharded listener each shard's socket has a router of its own. A datagram for
//! no connection of its shard whose destination connection ID names another shard
//! (the kernel hashed a changed 4-tuple to the wrong socket) is forwarded to that
//! shard's router, which routes it as if it had read it.

mod accept;
pub(crate) mod header;
pub(crate) mod reset;
pub(crate) mod retry;
mod routes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use quic_app::queue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

pub(crate) use accept::{Accept, CONNECTION_REFUSED, SharedConfig, rate_limiter};

use crate::cid::ResetKey;
use crate::metrics::{DropReason, Metrics};
use crate::socket::{Datagram, Receiver, Socket};
use crate::worker::{COPY_SHARED_AFTER, WORKER_QUEUE, WORKER_QUEUE_BYTES, WorkerCommand};
use header::Routing;
pub(crate) use routes::{ChosenBy, Routes};

/// Receive batches the router reads before it checks its commands again.
const RECV_BATCHES_PER_TURN: usize = 16;

/// RFC 9000 §14.1: a server must discard an Initial carried in a datagram shorter
/// than 1200 bytes; §6.1/§5.2.2: nor answer such a datagram with Version Negotiation.
pub(crate) const MIN_INITIAL_DATAGRAM: usize = 1200;

/// The unit the per-source limits count: one IPv4 address, or one IPv6 /64 (what one
/// host usually holds; an attacker has the whole prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    pub(crate) fn of(ip: std::net::IpAddr) -> Self {
        match ip {
            std::net::IpAddr::V4(a) => Self::V4(a.into()),
            std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Self::V4(v4.into()),
                None => Self::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// What one source holds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SourceCount {
    pub(crate) conns: usize,
    pub(crate) handshakes: usize,
}

/// Source ports of UDP services that reflection and amplification attacks abuse:
/// tcpmux/echo/chargen, DNS, portmap, NTP, NetBIOS, SNMP, LDAP, IKE. Port 0 is never a
/// real source. Nothing is sent in answer to them.
pub(crate) const REFLECTION_PORTS: [u16; 12] =
    [0, 7, 17, 19, 53, 111, 123, 137, 138, 161, 389, 500];

/// Messages into the router task.
///
/// Their channel is unbounded so that no message is ever lost or waited for (a lost
/// `Established` would count a handshake forever; a lost `Unregister` would leak a
/// connection's routes and slot), yet bounded in practice: each connection sends
/// `Established` and `Unregister` once, and a `Route` and an `Unroute` per connection
/// ID it issues, which it does only as the peer retires IDs (at most
/// `active_connection_id_limit` outstanding, each retirement a packet of the peer's
/// that the router processed first, its commands going before its datagrams);
/// connections are bounded by
/// [`EndpointLimits::max_connections`](crate::EndpointLimits::max_connections);
/// handles send the rare others.
#[derive(Debug)]
pub(crate) enum RouterCommand {
    /// The connection completed its handshake: it no longer counts as in flight.
    Established { id: u64 },
    /// The connection's worker ended: forget its connection IDs.
    Unregister { id: u64 },
    /// The connection issued a new connection ID: route it.
    Route { id: u64, cid: Vec<u8> },
    /// The peer retired one of the connection's IDs: stop routing it.
    Unroute { id: u64, cid: Vec<u8> },
    /// Start minting Retry tokens under this new key (the same for every shard).
    RotateRetryKey([u8; 32]),
    /// Accept new connections with this configuration (a new TLS identity).
    ReplaceConfig(crate::listen::PreparedTls),
    /// Report the router's tables.
    Stats(oneshot::Sender<crate::listen::EndpointStats>),
    /// Panic: lets the project's tests check what a dying router leaves behind.
    FailForTest,
    /// Stop accepting, close every connection once its data is acknowledged (at the
    /// latest at `by`); answer when none is left.
    Shutdown {
        code: u64,
        reason: Vec<u8>,
        by: Instant,
        done: oneshot::Sender<()>,
    },
}

/// Why a router stopped without being asked to; set once, read by its listener.
pub(crate) type Failure = Arc<std::sync::OnceLock<RouterFailure>>;

/// What ended a router abnormally.
#[derive(Debug, Clone)]
pub(crate) enum RouterFailure {
    /// Its socket failed.
    Socket(Arc<std::io::Error>),
    /// The task panicked.
    Panicked,
}

/// Held by a running router: if the task unwinds, the failure is recorded and every
/// connection's worker is told to stop, instead of waiting for an idle timeout that
/// no datagram can reset any more.
struct PanicGuard {
    failure: Failure,
    abort: CancellationToken,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self.failure.set(RouterFailure::Panicked);
            self.abort.cancel();
        }
    }
}

/// A connection's place in its router, held by its worker: reports the end of the
/// handshake once, and unregisters the connection when dropped, whichever way the
/// worker ends (returned, panicked, aborted, or never started), so its routes and its
/// slots are never leaked.
#[derive(Debug)]
pub(crate) struct Registration {
    id: u64,
    tx: mpsc::UnboundedSender<RouterCommand>,
    established: bool,
}

impl Registration {
    /// Routes `cid` to the connection from now on.
    pub(crate) fn route(&self, cid: Vec<u8>) {
        let _ = self.tx.send(RouterCommand::Route { id: self.id, cid });
    }

    /// Stops routing `cid` (if it is still the connection's).
    pub(crate) fn unroute(&self, cid: Vec<u8>) {
        let _ = self.tx.send(RouterCommand::Unroute { id: self.id, cid });
    }

    /// The handshake completed: the connection no longer counts as in flight.
    pub(crate) fn established(&mut self) {
        if !std::mem::replace(&mut self.established, true) {
            let _ = self.tx.send(RouterCommand::Established { id: self.id });
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Fails only when the router is gone, and its table with it.
        let _ = self.tx.send(RouterCommand::Unregister { id: self.id });
    }
}

/// One connection as the router sees it.
#[derive(Debug)]
struct ConnEntry {
    cids: Vec<Vec<u8>>,
    handshaking: bool,
    /// Where a server's connection came from, for the per-source limits.
    source: Option<SourceKey>,
    ctrl_tx: queue::Sender<WorkerCommand>,
    /// Its datagram queue, for the IDs it issues later.
    pkt_tx: queue::Sender<Datagram>,
}

/// The routing step every datagram takes: the destination connection ID of its first
/// packet, looked up. `None` if the header is malformed.
pub(crate) fn lookup<'r, 'b, V>(
    routes: &'r Routes<V>,
    buf: &'b [u8],
    cid_len: usize,
) -> Option<(Routing<'b>, Option<&'r V>)> {
    let routing = header::parse(buf, cid_len)?;
    let dcid = match routing {
        Routing::Short { dcid } | Routing::Long { dcid, .. } => dcid,
    };
    Some((routing, routes.get(dcid)))
}

/// A datagram about to be queued behind `queued` others.
fn prepare_queued(mut d: Datagram, queued: usize) -> Datagram {
    if d.shared && queued >= COPY_SHARED_AFTER {
        // Behind many others it may wait long: it stops keeping the rest of its
        // receive batch (other senders' bytes) alive.
        d.buf = bytes::BytesMut::from(&d.buf[..]);
        d.shared = false;
    }
    d
}

/// The destination ID of a short-header packet (what [`header::parse`] reads as
/// `Routing::Short`), or `None`.
fn short_dcid(buf: &[u8], cid_len: usize) -> Option<&[u8]> {
    match buf.first() {
        Some(first) if first & 0x80 == 0 => buf.get(1..1 + cid_len),
        _ => None,
    }
}

/// Whether `buf` is a short-header packet for `dcid`.
fn has_short_dcid(buf: &[u8], dcid: &[u8]) -> bool {
    short_dcid(buf, dcid.len()) == Some(dcid)
}

/// Whether every datagram `d` holds (one, or a GRO read's several) is a short-header
/// packet for `dcid`.
fn all_for(d: &Datagram, dcid: &[u8]) -> bool {
    if d.segment == 0 {
        has_short_dcid(&d.buf, dcid)
    } else {
        d.buf.chunks(d.segment).all(|one| has_short_dcid(one, dcid))
    }
}

/// Datagrams one shard's router hands another: bounded, and dropped when full like a
/// worker's queue.
pub(crate) const SHARD_QUEUE: usize = 1024;

/// A shard's links to its sibling shards.
#[derive(Debug)]
pub(crate) struct ShardLinks {
    /// This router's shard number.
    pub(crate) me: usize,
    /// Every shard's inbox, by shard number (this one's included).
    pub(crate) inboxes: Arc<[mpsc::Sender<Datagram>]>,
    /// Datagrams other shards forwarded to this one.
    pub(crate) inbox: mpsc::Receiver<Datagram>,
}

/// Waits for a datagram another shard forwarded; never, when not sharded.
async fn forwarded(shards: &mut Option<ShardLinks>) -> Option<Datagram> {
    match shards {
        Some(s) => s.inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// The router task's state.
pub(crate) struct Router {
    socket: Arc<Socket>,
    receiver: Receiver,
    /// The datagrams of one receive batch; keeps its capacity between batches.
    batch: Vec<Datagram>,
    routes: Routes<(u64, queue::Sender<Datagram>)>,
    conns: HashMap<u64, ConnEntry>,
    /// Connections still in their handshake: kept as a count so the accept path does
    /// not walk every connection for each Initial.
    handshaking: usize,
    /// Connections and handshakes per source; a source leaves with its last
    /// connection.
    sources: HashMap<SourceKey, SourceCount>,
    next_id: u64,
    cid_len: usize,
    cmd_rx: mpsc::UnboundedReceiver<RouterCommand>,
    cmd_tx: mpsc::UnboundedSender<RouterCommand>,
    metrics: Arc<dyn Metrics>,
    reset_key: ResetKey,
    accept: Option<Accept>,
    abort: CancellationToken,
    failure: Failure,
    out: Box<[u8]>,
    shards: Option<ShardLinks>,
    /// Connections admitted since the router started.
    accepted: u64,
    /// Datagrams handed to another shard.
    forwarded: u64,
    /// A migrating client's previous socket, read dry before each read of this one.
    predecessor: Option<Predecessor>,
}

/// The socket a migrating client is moving away from, as the router of its new socket
/// sees it.
///
/// Both sockets' routers feed the one worker queue. A router that is not scheduled
/// for a moment leaves datagrams in its socket while the other delivers later ones:
/// the connection then sees the old path's packets after the new path's, and a
/// packet number sent short (one byte, which the peer may use once little is in
/// flight) is decoded against the newer packets, wrongly, and the packet is lost. A
/// peer that does not declare lost what it sent on a path it left (quiche,
/// cloudflare/quiche#2452) never sends those bytes again, and the transfer stalls. So the new socket's router first takes
/// whatever the old socket holds, and everything that arrived there before what it is
/// about to read is routed first.
struct Predecessor {
    /// Weak: the old socket closes once the worker and the old router let it go.
    socket: std::sync::Weak<Socket>,
    receiver: Receiver,
}

impl Router {
    pub(crate) fn new(
        socket: Arc<Socket>,
        cid_len: usize,
        metrics: Arc<dyn Metrics>,
        reset_key: ResetKey,
        accept: Option<Accept>,
        abort: CancellationToken,
    ) -> Self {
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        Self {
            receiver: Receiver::new(&socket),
            batch: Vec::with_capacity(quinn_udp::BATCH_SIZE * 64),
            socket,
            routes: Routes::default(),
            conns: HashMap::new(),
            handshaking: 0,
            sources: HashMap::new(),
            next_id: 0,
            cid_len,
            cmd_rx,
            cmd_tx,
            metrics,
            reset_key,
            accept,
            abort,
            failure: Failure::default(),
            out: vec![0; crate::socket::MAX_UDP_PAYLOAD].into_boxed_slice(),
            shards: None,
            accepted: 0,
            forwarded: 0,
            predecessor: None,
        }
    }

    /// Makes this router, of a migrating client's new socket, read `old` dry before
    /// each read of its own socket, for as long as `old` is open.
    pub(crate) fn follow(&mut self, old: &Arc<Socket>) {
        self.predecessor = Some(Predecessor {
            receiver: Receiver::new(old),
            socket: Arc::downgrade(old),
        });
    }

    /// Makes this router one shard of a sharded listener.
    pub(crate) fn set_shard(&mut self, links: ShardLinks) {
        self.shards = Some(links);
    }

    pub(crate) fn command_sender(&self) -> mpsc::UnboundedSender<RouterCommand> {
        self.cmd_tx.clone()
    }

    /// The socket's local address.
    pub(crate) fn local_addr(&self) -> std::net::SocketAddr {
        self.socket.local_addr()
    }

    /// Routes one datagram as if the socket had just read it.
    pub(crate) fn route_for_test(&mut self, buf: &[u8], from: std::net::SocketAddr) {
        let to = self.socket.local_addr();
        self.route(Datagram {
            buf: bytes::BytesMut::from(buf),
            segment: 0,
            shared: false,
            from,
            to,
        });
    }

    /// Connections the router knows.
    pub(crate) fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Where the router records why it failed, if it does.
    pub(crate) fn failure(&self) -> Failure {
        Arc::clone(&self.failure)
    }

    /// Registers a connection; returns its registration and queue.
    pub(crate) fn register(
        &mut self,
        cids: Vec<Vec<u8>>,
        peer_cid: Option<Vec<u8>>,
        ctrl_tx: queue::Sender<WorkerCommand>,
        source: Option<SourceKey>,
    ) -> (
        Registration,
        queue::Sender<Datagram>,
        queue::Receiver<Datagram>,
    ) {
        let (tx, rx) =
            queue::weighted(WORKER_QUEUE, WORKER_QUEUE_BYTES, |d: &Datagram| d.buf.len());
        let registration = self.insert(cids, peer_cid, tx.clone(), ctrl_tx, source, true);
        (registration, tx, rx)
    }

    /// Routes `cids` into an existing connection's queue: a client connection that
    /// moves to this router's socket. Its handshake is done.
    pub(crate) fn adopt(
        &mut self,
        cids: Vec<Vec<u8>>,
        pkt_tx: queue::Sender<Datagram>,
        ctrl_tx: queue::Sender<WorkerCommand>,
    ) -> Registration {
        self.insert(cids, None, pkt_tx, ctrl_tx, None, false)
    }

    /// Routes `cids` (this endpoint's IDs) and `peer_cid` (the ID a client chose for
    /// its first Initial, if it is not one of ours) to a new connection.
    fn insert(
        &mut self,
        mut cids: Vec<Vec<u8>>,
        peer_cid: Option<Vec<u8>>,
        tx: queue::Sender<Datagram>,
        ctrl_tx: queue::Sender<WorkerCommand>,
        source: Option<SourceKey>,
        handshaking: bool,
    ) -> Registration {
        let id = self.next_id;
        self.next_id += 1;
        for cid in &cids {
            self.routes
                .insert(cid.clone(), ChosenBy::Us, (id, tx.clone()));
        }
        if let Some(cid) = peer_cid {
            self.routes
                .insert(cid.clone(), ChosenBy::Peer, (id, tx.clone()));
            cids.push(cid);
        }
        self.conns.insert(
            id,
            ConnEntry {
                cids,
                handshaking,
                source,
                ctrl_tx,
                pkt_tx: tx,
            },
        );
        if handshaking {
            self.handshaking += 1;
        }
        if let Some(key) = source {
            let count = self.sources.entry(key).or_default();
            count.conns += 1;
            count.handshakes += usize::from(handshaking);
        }
        Registration {
            id,
            tx: self.cmd_tx.clone(),
            established: !handshaking,
        }
    }

    /// Runs until aborted, or (a client's router, or a listener's whose application
    /// stopped accepting) until no connection is left.
    pub(crate) async fn run(mut self) {
        let _guard = PanicGuard {
            failure: Arc::clone(&self.failure),
            abort: self.abort.clone(),
        };
        loop {
            tokio::select! {
                // Commands first: registration changes must apply before datagrams for
                // those connections are routed.
                biased;
                () = self.abort.cancelled() => return,
                cmd = self.cmd_rx.recv() => {
                    // The router holds a sender itself, so `None` never comes.
                    if let Some(cmd) = cmd {
                        self.handle(cmd);
                    }
                }
                r = self.socket.readable() => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "UDP socket failed; router stops");
                        let _ = self.failure.set(RouterFailure::Socket(Arc::new(e)));
                        self.abort.cancel();
                        return;
                    }
                    self.read_batches();
                }
                d = forwarded(&mut self.shards) => {
                    // Every shard holds a sender of every inbox: `None` never comes.
                    if let Some(d) = d {
                        self.route_from_shard(d);
                    }
                }
            }
            if self.conns.is_empty() && !self.accepting() {
                return;
            }
        }
    }

    fn accepting(&self) -> bool {
        self.accept
            .as_ref()
            .is_some_and(|a| !a.shutting_down && !a.accept_tx.is_closed())
    }

    fn handle(&mut self, cmd: RouterCommand) {
        match cmd {
            RouterCommand::Established { id } => {
                if let Some(c) = self.conns.get_mut(&id)
                    && c.handshaking
                {
                    c.handshaking = false;
                    self.handshaking -= 1;
                    if let Some(count) = c.source.and_then(|k| self.sources.get_mut(&k)) {
                        count.handshakes -= 1;
                    }
                }
            }
            RouterCommand::Unregister { id } => {
                if let Some(entry) = self.conns.remove(&id) {
                    if entry.handshaking {
                        self.handshaking -= 1;
                    }
                    if let Some(key) = entry.source
                        && let Some(count) = self.sources.get_mut(&key)
                    {
                        count.conns -= 1;
                        if entry.handshaking {
                            count.handshakes -= 1;
                        }
                        if count.conns == 0 {
                            self.sources.remove(&key);
                        }
                    }
                    for cid in entry.cids {
                        self.routes.remove_if(&cid, |(owner, _)| *owner == id);
                    }
                }
                if self.conns.is_empty()
                    && let Some(done) = self.accept.as_mut().and_then(|a| a.shutdown.take())
                {
                    let _ = done.send(());
                }
            }
            RouterCommand::Route { id, cid } => {
                if let Some(entry) = self.conns.get_mut(&id) {
                    self.routes
                        .insert(cid.clone(), ChosenBy::Us, (id, entry.pkt_tx.clone()));
                    entry.cids.push(cid);
                }
            }
            RouterCommand::Unroute { id, cid } => {
                if let Some(entry) = self.conns.get_mut(&id) {
                    entry.cids.retain(|c| *c != cid);
                    self.routes.remove_if(&cid, |(owner, _)| *owner == id);
                }
            }
            RouterCommand::FailForTest => panic!("router failure requested by a test"),
            RouterCommand::Stats(reply) => {
                let _ = reply.send(crate::listen::EndpointStats {
                    connections: self.conns.len(),
                    handshakes: self.handshaking,
                    routes: self.routes.len(),
                    sources: self.sources.len(),
                    accepted: self.accepted,
                    forwarded: self.forwarded,
                });
            }
            RouterCommand::RotateRetryKey(key) => {
                if let Some(a) = &mut self.accept {
                    a.retry.rotate_to(key);
                }
            }
            RouterCommand::ReplaceConfig(config) => {
                if let Some(a) = &mut self.accept {
                    *a.config
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = *config.0;
                }
            }
            RouterCommand::Shutdown {
                code,
                reason,
                by,
                done,
            } => {
                if let Some(a) = &mut self.accept {
                    a.shutting_down = true;
                    if self.conns.is_empty() {
                        let _ = done.send(());
                    } else {
                        a.shutdown = Some(done);
                    }
                }
                for c in self.conns.values() {
                    let cmd = WorkerCommand::Close {
                        app: true,
                        code,
                        reason: reason.clone(),
                        by: Some(by),
                    };
                    // A full command queue means the worker is already closing or
                    // busy; the deadline in `Listener::shutdown` covers it.
                    let _ = c.ctrl_tx.try_send(cmd);
                }
            }
        }
    }

    fn read_batches(&mut self) {
        self.read_predecessor();
        for _ in 0..RECV_BATCHES_PER_TURN {
            let mut batch = std::mem::take(&mut self.batch);
            let r = self.receiver.recv_batch(&self.socket, &mut batch);
            self.route_batch(&mut batch);
            self.batch = batch;
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // ICMP errors surface here on some systems; they concern one peer.
                    tracing::debug!(error = %e, "UDP receive error");
                    return;
                }
            }
        }
    }

    /// Routes what a migrating client's old socket holds; forgets the socket once it
    /// is closed.
    fn read_predecessor(&mut self) {
        let Some(mut p) = self.predecessor.take() else {
            return;
        };
        let Some(old) = p.socket.upgrade() else {
            return;
        };
        for _ in 0..RECV_BATCHES_PER_TURN {
            let mut batch = std::mem::take(&mut self.batch);
            let r = p.receiver.recv_batch(&old, &mut batch);
            self.route_batch(&mut batch);
            self.batch = batch;
            match r {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Empty (WouldBlock), or an error its own router reports.
                Err(_) => break,
            }
        }
        self.predecessor = Some(p);
    }

    /// Routes one datagram another shard forwarded, and any others waiting.
    fn route_from_shard(&mut self, dgram: Datagram) {
        self.route_inner(dgram, false);
        for _ in 0..quinn_udp::BATCH_SIZE {
            let Some(Ok(d)) = self.shards.as_mut().map(|s| s.inbox.try_recv()) else {
                return;
            };
            self.route_inner(d, false);
        }
    }

    /// The shard that owns the connection ID `dcid` of a datagram this shard has no
    /// route for, when it is another one.
    fn owning_shard(&self, dcid: &[u8]) -> Option<usize> {
        let shards = self.shards.as_ref()?;
        let owner = crate::cid::shard_of(dcid)?;
        (owner != shards.me && owner < shards.inboxes.len()).then_some(owner)
    }

    /// Hands a datagram to the shard that owns its connection.
    fn forward(&mut self, owner: usize, mut dgram: Datagram) {
        let Some(shards) = &self.shards else {
            return;
        };
        if dgram.shared {
            // It may wait in another queue: it stops keeping its batch alive.
            dgram.buf = bytes::BytesMut::from(&dgram.buf[..]);
            dgram.shared = false;
        }
        match shards.inboxes[owner].try_send(dgram) {
            Ok(()) => {
                self.forwarded += 1;
                self.metrics.datagram_forwarded();
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.metrics.queue_full_drop(),
            // The shard has stopped: so has its connection.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.metrics.datagram_dropped(DropReason::UnknownConnection);
            }
        }
    }

    /// Routes a receive batch, leaving `batch` empty. A run of consecutive
    /// short-header datagrams with one destination ID (a GRO read, a burst from one
    /// peer) is looked up once and queued to its connection under one lock; every
    /// other datagram takes [`route`](Self::route), a GRO read whose datagrams are
    /// not all for one connection taken apart first.
    fn route_batch(&mut self, batch: &mut Vec<Datagram>) {
        let cid_len = self.cid_len;
        let mut datagrams = batch.drain(..).peekable();
        while let Some(d) = datagrams.next() {
            let Some(dcid) = short_dcid(&d.buf, cid_len).filter(|dcid| {
                dcid.len() <= quiche::MAX_CONN_ID_LEN
                    && if d.segment == 0 {
                        // A single datagram starts a run only with a neighbour.
                        datagrams.peek().is_some_and(|n| all_for(n, dcid))
                    } else {
                        all_for(&d, dcid)
                    }
            }) else {
                self.route(d);
                continue;
            };
            let Some((_, tx)) = self.routes.get(dcid) else {
                self.route(d);
                continue;
            };
            // Copied out: the run's first datagram moves into the queue.
            let mut id = [0u8; quiche::MAX_CONN_ID_LEN];
            id[..cid_len].copy_from_slice(dcid);
            let id = &id[..cid_len];
            let mut same = std::iter::from_fn(|| datagrams.next_if(|n| all_for(n, id)));
            // Datagrams that lie end to end in one receive buffer (a bulk flow's
            // consecutive GRO reads) go as one item, which the worker splits again.
            let mut pending = Some(d);
            let run = std::iter::from_fn(|| {
                let mut item = pending.take()?;
                for next in same.by_ref() {
                    if let Err(next) = item.try_merge(next) {
                        pending = Some(next);
                        break;
                    }
                }
                Some(item)
            });
            let metrics = &self.metrics;
            tx.try_send_each(run, prepare_queued, |e| match e {
                queue::TrySendError::Full(_) => metrics.queue_full_drop(),
                // The worker ended and its Unregister is on the way.
                queue::TrySendError::Closed(_) => {}
            });
        }
    }

    /// Routes one datagram: to its connection, or down the accept or reset path. A
    /// GRO read's datagrams go one by one.
    fn route(&mut self, dgram: Datagram) {
        if dgram.segment == 0 {
            return self.route_inner(dgram, true);
        }
        for one in dgram.into_singles() {
            self.route_inner(one, true);
        }
    }

    /// Routes one datagram; one for no connection of this shard goes to the shard its
    /// connection ID names if `may_forward` (a datagram is forwarded once at most).
    fn route_inner(&mut self, dgram: Datagram, may_forward: bool) {
        let Some((routing, route)) = lookup(&self.routes, &dgram.buf, self.cid_len) else {
            self.metrics.datagram_dropped(DropReason::Malformed);
            return;
        };
        if let Some((_, tx)) = route {
            let queued = tx.try_send_with(dgram, prepare_queued);
            match queued {
                Ok(()) => {}
                Err(queue::TrySendError::Full(_)) => self.metrics.queue_full_drop(),
                // The worker ended and its Unregister is on the way.
                Err(queue::TrySendError::Closed(_)) => {}
            }
            return;
        }
        if may_forward {
            // Short headers and Handshake packets carry a DCID this listener issued
            // (Initials and 0-RTT packets may carry the one the client picked).
            let dcid = match routing {
                Routing::Short { dcid } => Some(dcid),
                Routing::Long {
                    version, ty, dcid, ..
                } if ty == header::TYPE_HANDSHAKE && quiche::version_is_supported(version) => {
                    Some(dcid)
                }
                Routing::Long { .. } => None,
            };
            if let Some(owner) = dcid.and_then(|d| self.owning_shard(d)) {
                return self.forward(owner, dgram);
            }
        }
        match routing {
            Routing::Short { .. } if self.accept.is_none() => self.route_to_only_connection(dgram),
            Routing::Short { .. } => self.stateless_reset(&dgram),
            Routing::Long { version: 0, .. } => {
                // A Version Negotiation packet for no connection: never answered.
                self.metrics
                    .datagram_dropped(DropReason::VersionNegotiationSuppressed);
            }
            Routing::Long { version, .. } if !quiche::version_is_supported(version) => {
                self.version_negotiation(&dgram);
            }
            Routing::Long { ty, .. } if ty == header::TYPE_INITIAL && self.accept.is_some() => {
                self.accept_initial(dgram);
            }
            Routing::Long { .. } => self.metrics.datagram_dropped(DropReason::UnknownConnection),
        }
    }

    /// A client's socket serves one connection; a short-header packet whose DCID is
    /// not ours can only be a stateless reset from the server (RFC 9000 §10.3: its
    /// DCID is random), which the connection recognises by its token.
    fn route_to_only_connection(&mut self, dgram: Datagram) {
        let mut conns = self.conns.keys();
        let (Some(id), None) = (conns.next(), conns.next()) else {
            self.metrics.datagram_dropped(DropReason::UnknownConnection);
            return;
        };
        let id = *id;
        let route = self.routes.values().find(|(owner, _)| *owner == id);
        match route.map(|(_, tx)| tx.try_send(dgram)) {
            Some(Ok(())) => {}
            Some(Err(queue::TrySendError::Full(_))) => self.metrics.queue_full_drop(),
            _ => self.metrics.datagram_dropped(DropReason::UnknownConnection),
        }
    }

    fn stateless_reset(&mut self, dgram: &Datagram) {
        let Some(accept) = &mut self.accept else {
            return;
        };
        if REFLECTION_PORTS.contains(&dgram.from.port())
            || !accept.reset_limiter.try_take(Instant::now())
        {
            self.metrics.datagram_dropped(DropReason::ResetSuppressed);
            return;
        }
        let dcid = &dgram.buf[1..1 + self.cid_len];
        let token = self.reset_key.token(dcid);
        let Some(len) = reset::write_reset(&token, dgram.buf.len(), &mut self.out) else {
            self.metrics.datagram_dropped(DropReason::ResetSuppressed);
            return;
        };
        if self
            .socket
            .try_send_one(dgram.from, &self.out[..len])
            .is_ok()
        {
            self.metrics.stateless_reset_sent();
        }
    }

    fn version_negotiation(&mut self, dgram: &Datagram) {
        if dgram.buf.len() < MIN_INITIAL_DATAGRAM
            || REFLECTION_PORTS.contains(&dgram.from.port())
            || self.accept.is_none()
        {
            self.metrics
                .datagram_dropped(DropReason::VersionNegotiationSuppressed);
            return;
        }
        let Some(Routing::Long { dcid, scid, .. }) = header::parse(&dgram.buf, self.cid_len) else {
            return;
        };
        // RFC 9000 §17.2.1: the VN packet's DCID is the client's SCID and vice versa;
        // quiche swaps them itself.
        let (scid, dcid) = (
            quiche::ConnectionId::from_ref(scid),
            quiche::ConnectionId::from_ref(dcid),
        );
        match quiche::negotiate_version(&scid, &dcid, &mut self.out) {
            Ok(len) => {
                if self
                    .socket
                    .try_send_one(dgram.from, &self.out[..len])
                    .is_ok()
                {
                    self.metrics.version_negotiation_sent();
                }
            }
            Err(_) => self
                .metrics
                .datagram_dropped(DropReason::VersionNegotiationSuppressed),
        }
    }
}

#[cfg(test)]
mod tests;
