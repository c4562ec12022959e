use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use quic_app::{AppError, ApplicationOverQuic, HandshakeInfo, QuicConnection};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cid::{
    ConnectionIdGenerator, DEFAULT_CID_LEN, MAX_SHARDS, RandomConnectionIds, ResetKey, ShardIds,
};
use crate::handle::ConnectionHandle;
use crate::metrics::{Metrics, NoopMetrics};
use crate::router::retry::RetryTokens;
use crate::router::{
    Accept, CONNECTION_REFUSED, Failure, Router, RouterCommand, RouterFailure, SHARD_QUEUE,
    ShardLinks, rate_limiter,
};
use crate::settings::{QuicSettings, SettingError};
use crate::socket::Socket;
use crate::tls::{TlsConfig, TlsError};
use crate::worker::{self, Issuer, WorkerSetup, WorkerShared};

/// When a listener answers a new client with Retry (RFC 9000 §8.1.2) to prove the
/// client's address before it spends any state on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryPolicy {
    /// Never send Retry.
    Never,
    /// Always send Retry: one more round trip per connection, no state before the
    /// client's address is proven.
    Always,
    /// Send Retry while this many handshakes are in flight: the usual defence against
    /// spoofed Initial floods.
    UnderLoad {
        /// Handshakes in flight from which Retry starts.
        handshakes: usize,
    },
}

/// Limits that keep a listener's memory and work bounded under load and attack.
///
/// A client refused by a connection limit is told so at once (CONNECTION_REFUSED)
/// rather than left to time out; an address that has not proven itself is first sent
/// a Retry, so refusals (which cost the server a TLS read of the client's first
/// message) go only to real addresses, at most `resets_per_second` of them.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointLimits {
    /// Connections at once. Default 10,000.
    pub max_connections: usize,
    /// Connections at once from one source: one IPv4 address, or one IPv6 /64 (what
    /// one host usually holds). Default 256, room for many users behind one NAT.
    pub max_connections_per_ip: usize,
    /// Handshakes in flight at once. Default 1,000.
    pub max_handshakes: usize,
    /// Handshakes in flight at once from one source (as above). Default 32.
    pub max_handshakes_per_ip: usize,
    /// New connections waiting for the application to accept them; beyond it new
    /// Initials are dropped. Default 1,024.
    pub accept_backlog: usize,
    /// Stateless resets per second, and the burst allowed above that rate; closes
    /// answering an invalid Retry token (INVALID_TOKEN) or a limit
    /// (CONNECTION_REFUSED) have a budget of the same size of their own. Default 100.
    pub resets_per_second: u32,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_handshakes: 1_000,
            max_handshakes_per_ip: 32,
            accept_backlog: 1_024,
            resets_per_second: 100,
        }
    }
}

/// Everything a listener needs: identity, protocols, settings, limits.
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerParams {
    /// The server's certificate chain and key.
    pub tls: TlsConfig,
    /// The ALPN protocols offered, most preferred first.
    pub alpn: Vec<Vec<u8>>,
    /// Transport settings.
    pub settings: QuicSettings,
    /// Resource limits.
    pub limits: EndpointLimits,
    /// When to answer with Retry.
    pub retry: RetryPolicy,
    /// How long a Retry token stays valid.
    pub retry_token_lifetime: Duration,
    /// The secret stateless reset tokens are derived from. Give restarted or sibling
    /// servers the same key so they can reset connections they do not know.
    pub reset_key: ResetKey,
    /// Length of the connection IDs this listener issues (1..=20). With a
    /// [`cid_generator`](Self::cid_generator), its length.
    pub cid_len: usize,
    /// Makes the connection IDs this listener issues: each new connection's, each
    /// Retry's, and the spare ones given to clients. `None`: random IDs of
    /// [`cid_len`](Self::cid_len) bytes. Set with
    /// [`set_cid_generator`](Self::set_cid_generator).
    pub cid_generator: Option<Arc<dyn ConnectionIdGenerator>>,
    /// Where events are counted.
    pub metrics: Arc<dyn Metrics>,
}

impl std::fmt::Debug for ServerParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerParams")
            .field("alpn", &self.alpn)
            .field("settings", &self.settings)
            .field("limits", &self.limits)
            .field("retry", &self.retry)
            .field("cid_len", &self.cid_len)
            .field("cid_generator", &self.cid_generator)
            .finish_non_exhaustive()
    }
}

impl ServerParams {
    /// Parameters with default settings and limits, Retry under load (from 200
    /// handshakes in flight), a random reset key and no metrics.
    pub fn new(tls: TlsConfig, alpn: &[&[u8]]) -> Self {
        Self {
            tls,
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
            settings: QuicSettings::default(),
            limits: EndpointLimits::default(),
            retry: RetryPolicy::UnderLoad { handshakes: 200 },
            retry_token_lifetime: Duration::from_secs(10),
            reset_key: ResetKey::random(),
            cid_len: DEFAULT_CID_LEN,
            cid_generator: None,
            metrics: Arc::new(NoopMetrics),
        }
    }

    /// Issues connection IDs from `generator` (a
    /// [`QuicLbGenerator`](crate::QuicLbGenerator), say); sets
    /// [`cid_len`](Self::cid_len) to its length.
    pub fn set_cid_generator(&mut self, generator: Arc<dyn ConnectionIdGenerator>) {
        self.cid_len = generator.cid_len();
        self.cid_generator = Some(generator);
    }

    /// The generator of this listener's connection IDs.
    pub(crate) fn cids(&self) -> Arc<dyn ConnectionIdGenerator> {
        match &self.cid_generator {
            Some(g) => Arc::clone(g),
            None => Arc::new(RandomConnectionIds::new(self.cid_len)),
        }
    }

    /// Checks every parameter against its range; the error names the first one out
    /// of range. [`listen`] calls this before it starts.
    pub fn validate(&self) -> Result<(), SettingError> {
        let err = SettingError::new;
        self.settings.validate()?;
        validate_cid_len(self.cid_len)?;
        if let Some(g) = &self.cid_generator
            && g.cid_len() != self.cid_len
        {
            return Err(err(
                "cid_len",
                "differs from the length of the cid_generator's IDs",
            ));
        }
        validate_alpn(&self.alpn)?;
        let l = &self.limits;
        if l.max_connections == 0 {
            return Err(err("limits.max_connections", "zero"));
        }
        if l.max_handshakes == 0 {
            return Err(err("limits.max_handshakes", "zero"));
        }
        if l.max_connections_per_ip == 0 {
            return Err(err("limits.max_connections_per_ip", "zero"));
        }
        if l.max_handshakes_per_ip == 0 {
            return Err(err("limits.max_handshakes_per_ip", "zero"));
        }
        if l.accept_backlog == 0 {
            return Err(err("limits.accept_backlog", "zero"));
        }
        if self.retry_token_lifetime.is_zero() {
            return Err(err("retry_token_lifetime", "zero"));
        }
        if self.retry_token_lifetime > crate::settings::MAX_TIMEOUT {
            return Err(err("retry_token_lifetime", "longer than 7 days"));
        }
        Ok(())
    }

    fn quiche_config(&self) -> Result<quiche::Config, TlsError> {
        let ctx = self.tls.server_context()?;
        let mut cfg = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, ctx)
            .map_err(TlsError::Quic)?;
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        cfg.set_application_protos(&alpn).map_err(TlsError::Quic)?;
        self.settings.apply(&mut cfg);
        Ok(cfg)
    }
}

/// Connection IDs are 1 to 20 bytes (RFC 9000 §17.2).
pub(crate) fn validate_cid_len(len: usize) -> Result<(), SettingError> {
    if (1..=quiche::MAX_CONN_ID_LEN).contains(&len) {
        Ok(())
    } else {
        Err(SettingError::new("cid_len", "outside 1..=20"))
    }
}

/// At least one protocol, each 1 to 255 bytes (RFC 7301 §3.1).
pub(crate) fn validate_alpn(alpn: &[Vec<u8>]) -> Result<(), SettingError> {
    if alpn.is_empty() {
        return Err(SettingError::new(
            "alpn",
            "empty: at least one protocol is required",
        ));
    }
    if alpn.iter().any(|a| a.is_empty() || a.len() > 255) {
        return Err(SettingError::new(
            "alpn",
            "a protocol name outside 1..=255 bytes",
        ));
    }
    Ok(())
}

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("failed to bind UDP {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The socket could not be set up for QUIC.
    #[error("failed to set up the UDP socket")]
    Socket(#[source] std::io::Error),
    /// The TLS identity or QUIC settings were refused.
    #[error("invalid server configuration")]
    Config(#[source] TlsError),
    /// A parameter is out of range.
    #[error(transparent)]
    Invalid(#[from] SettingError),
}

/// Binds `addr` and listens on it. Must be called within a tokio runtime.
pub fn listen_on(addr: SocketAddr, params: ServerParams) -> Result<Listener, ListenError> {
    // Checked before binding: a bad parameter takes no port.
    params.validate()?;
    let socket = crate::socket::bind(addr).map_err(|source| ListenError::Bind { addr, source })?;
    start(vec![socket], &params, false)
}

/// Listens on a bound UDP socket. Must be called within a tokio runtime.
pub fn listen(socket: std::net::UdpSocket, params: ServerParams) -> Result<Listener, ListenError> {
    params.validate()?;
    start(vec![socket], &params, false)
}

/// How a [sharded listener](listen_sharded) spreads over its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sharding {
    /// Shards: sockets, each with a router task of its own (1..=32).
    pub shards: usize,
    /// Steers each short-header datagram in the kernel to the socket of the shard its
    /// connection ID names (a classic BPF program on the SO_REUSEPORT group). Off, or
    /// where the kernel refuses it, the kernel spreads datagrams by a hash of their
    /// 4-tuple and a router that gets one for another shard's connection forwards it
    /// there. Default on.
    pub kernel_steering: bool,
}

impl Sharding {
    /// `shards` shards, with kernel steering.
    pub fn new(shards: usize) -> Self {
        Self {
            shards,
            kernel_steering: true,
        }
    }

    /// Turns kernel steering on or off.
    pub fn kernel_steering(mut self, on: bool) -> Self {
        self.kernel_steering = on;
        self
    }

    /// Checks the shard count, and that `params`' connection IDs have room for a shard
    /// number.
    pub fn validate(&self, params: &ServerParams) -> Result<(), SettingError> {
        if !(1..=MAX_SHARDS).contains(&self.shards) {
            return Err(SettingError::new("shards", "outside 1..=32"));
        }
        if self.shards > 1 {
            if !cfg!(target_os = "linux") {
                return Err(SettingError::new(
                    "shards",
                    "more than one needs Linux (SO_REUSEPORT spreading datagrams over sockets)",
                ));
            }
            if !params.cids().first_octet_bits_free() {
                return Err(SettingError::new(
                    "cid_generator",
                    "its IDs leave no bits of the first octet free for a shard number (a QUIC-LB configuration that encodes the ID's length there?)",
                ));
            }
        }
        Ok(())
    }
}

impl From<usize> for Sharding {
    fn from(shards: usize) -> Self {
        Self::new(shards)
    }
}

/// Binds `addr` with `sharding.shards` UDP sockets in one SO_REUSEPORT group and listens
/// on them as one listener, each socket read by a router task of its own: the way to
/// spread a busy listener's receive work over several cores (Linux). Must be called
/// within a tokio runtime (a multi-threaded one, for the shards to run in parallel).
///
/// Each connection belongs to the shard that accepted it, whose number its connection
/// IDs carry in the low five bits of their first octet (random bits otherwise; a
/// QUIC-LB configuration must not encode the ID length there). The kernel hands each
/// new client to a shard by a hash of its 4-tuple; a datagram whose 4-tuple later
/// changes (NAT rebinding, migration) reaches its shard by [kernel
/// steering](Sharding::kernel_steering), or is forwarded there by the shard that got
/// it. The shards share one accept queue, one TLS configuration (session tickets work
/// across them) and one Retry key; each enforces its share of the
/// [limits](EndpointLimits) (a shard count's fraction of each, rounded up), so a
/// source whose connections hash unevenly may be refused a little before its limit.
///
/// ```no_run
/// # fn run(params: quic_io::ServerParams) -> Result<(), quic_io::ListenError> {
/// let listener = quic_io::listen_sharded("[::]:443".parse().unwrap(), 4, params)?;
/// assert_eq!(listener.shards(), 4);
/// # Ok(()) }
/// # let _ = run;
/// ```
pub fn listen_sharded(
    addr: SocketAddr,
    sharding: impl Into<Sharding>,
    params: ServerParams,
) -> Result<Listener, ListenError> {
    let sharding = sharding.into();
    params.validate()?;
    sharding.validate(&params)?;
    if sharding.shards == 1 {
        return listen_on(addr, params);
    }
    let sockets = crate::socket::bind_shards(addr, sharding.shards)
        .map_err(|source| ListenError::Bind { addr, source })?;
    let steering = sharding.kernel_steering && attach_steering(&sockets[0]);
    start(sockets, &params, steering)
}

/// Attaches the kernel steering program to a shard group; whether it took.
fn attach_steering(socket: &std::net::UdpSocket) -> bool {
    #[cfg(target_os = "linux")]
    match crate::socket::steer::attach(socket) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "kernel steering refused; shards forward datagrams instead");
            false
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = socket;
        false
    }
}

/// One shard's part of `params`: limits and the Retry threshold divided among `n`
/// shards, rounded up.
fn shard_params(params: &ServerParams, n: usize) -> ServerParams {
    let mut p = params.clone();
    if n > 1 {
        let share = |v: usize| v.div_ceil(n);
        let l = &mut p.limits;
        l.max_connections = share(l.max_connections);
        l.max_connections_per_ip = share(l.max_connections_per_ip);
        l.max_handshakes = share(l.max_handshakes);
        l.max_handshakes_per_ip = share(l.max_handshakes_per_ip);
        l.resets_per_second = l.resets_per_second.div_ceil(n as u32);
        if let RetryPolicy::UnderLoad { handshakes } = &mut p.retry {
            *handshakes = share(*handshakes);
        }
    }
    p
}

/// Starts a listener on validated parameters: one router per socket (one socket
/// unless sharded).
fn start(
    sockets: Vec<std::net::UdpSocket>,
    params: &ServerParams,
    steering: bool,
) -> Result<Listener, ListenError> {
    let n = sockets.len();
    let (common, accept_rx) = Common::new(params)?;
    let shard_params = shard_params(params, n);
    let (inbox_tx, inbox_rx): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel(SHARD_QUEUE)).unzip();
    let inboxes: Arc<[mpsc::Sender<crate::socket::Datagram>]> = inbox_tx.into();
    let mut routers = Vec::with_capacity(n);
    for (i, (socket, inbox)) in sockets.into_iter().zip(inbox_rx).enumerate() {
        let cids: Arc<dyn ConnectionIdGenerator> = if n > 1 {
            Arc::new(ShardIds {
                inner: params.cids(),
                shard: i as u8,
            })
        } else {
            params.cids()
        };
        let mut router = common.router(socket, &shard_params, cids)?;
        if n > 1 {
            router.set_shard(ShardLinks {
                me: i,
                inboxes: Arc::clone(&inboxes),
                inbox,
            });
        }
        routers.push(router);
    }
    let local_addr = routers[0].local_addr();
    let shards = routers
        .into_iter()
        .enumerate()
        .map(|(i, router)| {
            let cmd_tx = router.command_sender();
            let failure = router.failure();
            let span = if n > 1 {
                tracing::info_span!("quic_listener", local = %local_addr, shard = i)
            } else {
                tracing::info_span!("quic_listener", local = %local_addr)
            };
            Shard {
                cmd_tx,
                failure,
                router: crate::spawn::task(router.run().instrument(span)),
            }
        })
        .collect();
    Ok(Listener {
        accept_rx,
        shards,
        local_addr,
        abort: common.abort,
        steering,
        params: Arc::new(params.clone()),
    })
}

/// What the shards of one listener share.
struct Common {
    config: crate::router::SharedConfig,
    accept_tx: mpsc::Sender<IncomingConnection>,
    retry: RetryTokens,
    abort: CancellationToken,
}

impl Common {
    fn new(
        params: &ServerParams,
    ) -> Result<(Self, mpsc::Receiver<IncomingConnection>), ListenError> {
        let config = params.quiche_config().map_err(ListenError::Config)?;
        let (accept_tx, accept_rx) = mpsc::channel(params.limits.accept_backlog);
        let common = Self {
            config: Arc::new(std::sync::Mutex::new(config)),
            accept_tx,
            retry: RetryTokens::new(params.retry_token_lifetime),
            abort: CancellationToken::new(),
        };
        Ok((common, accept_rx))
    }

    /// A router for `socket` with (its shard's) `params`, issuing `cids`.
    fn router(
        &self,
        socket: std::net::UdpSocket,
        params: &ServerParams,
        cids: Arc<dyn ConnectionIdGenerator>,
    ) -> Result<Router, ListenError> {
        let socket =
            Arc::new(Socket::new(socket, params.settings.enable_gso).map_err(ListenError::Socket)?);
        let shared = WorkerShared::new(
            &params.settings,
            Arc::clone(&params.metrics),
            Some(Issuer {
                cids: Arc::clone(&cids),
                reset_key: params.reset_key.clone(),
            }),
        );
        let accept = Accept {
            config: Arc::clone(&self.config),
            cids,
            retry: self.retry.clone(),
            reset_limiter: rate_limiter(params.limits.resets_per_second),
            close_limiter: rate_limiter(params.limits.resets_per_second),
            accept_tx: self.accept_tx.clone(),
            shared,
            shutdown: None,
            shutting_down: false,
            params: params.clone(),
        };
        Ok(Router::new(
            socket,
            params.cid_len,
            Arc::clone(&params.metrics),
            params.reset_key.clone(),
            Some(accept),
            self.abort.clone(),
        ))
    }
}

/// A listener's router on validated parameters, not yet running, with the receiving
/// end of its accept backlog and the token that stops its connections. Within a tokio
/// runtime.
pub(crate) fn listener_router(
    socket: std::net::UdpSocket,
    params: &ServerParams,
) -> Result<
    (
        Router,
        mpsc::Receiver<IncomingConnection>,
        CancellationToken,
    ),
    ListenError,
> {
    let (common, accept_rx) = Common::new(params)?;
    let router = common.router(socket, params, params.cids())?;
    Ok((router, accept_rx, common.abort))
}

/// A listener's tables, as its router sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Connections the router knows (open, closing or draining).
    pub connections: usize,
    /// Of those, the ones still in their handshake.
    pub handshakes: usize,
    /// Connection IDs routed.
    pub routes: usize,
    /// Source addresses (IPv4, IPv6 /64) holding connections.
    pub sources: usize,
    /// Connections admitted since the listener started.
    pub accepted: u64,
    /// Datagrams a shard handed to the shard owning their connection (a sharded
    /// listener's; 0 otherwise).
    pub forwarded: u64,
}

/// Shards' tables summed: a sharded listener's whole.
impl<'a> std::iter::Sum<&'a EndpointStats> for EndpointStats {
    fn sum<I: Iterator<Item = &'a EndpointStats>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut t, s| {
            t.connections += s.connections;
            t.handshakes += s.handshakes;
            t.routes += s.routes;
            t.sources += s.sources;
            t.accepted += s.accepted;
            t.forwarded += s.forwarded;
            t
        })
    }
}

/// Reads a listener's [`EndpointStats`]; cloneable, and usable after the listener
/// moved into a server.
#[derive(Debug, Clone)]
pub struct StatsHandle {
    cmd_tx: Vec<mpsc::UnboundedSender<RouterCommand>>,
}

impl StatsHandle {
    /// The listener's tables now, summed over its shards (a source holding
    /// connections in two shards counts twice); `None` once it has stopped.
    pub async fn get(&self) -> Option<EndpointStats> {
        let shards = self.shards().await?;
        Some(shards.iter().sum())
    }

    /// Each shard's tables now, by shard number (one, unless the listener is
    /// [sharded](listen_sharded)); `None` once it has stopped.
    pub async fn shards(&self) -> Option<Vec<EndpointStats>> {
        let mut replies = Vec::with_capacity(self.cmd_tx.len());
        for cmd_tx in &self.cmd_tx {
            let (tx, rx) = oneshot::channel();
            cmd_tx.send(RouterCommand::Stats(tx)).ok()?;
            replies.push(rx);
        }
        let mut stats = Vec::with_capacity(replies.len());
        for rx in replies {
            stats.push(rx.await.ok()?);
        }
        Some(stats)
    }
}

/// Replaces a running listener's TLS identity (certificates, server names, client
/// authentication); made by [`Listener::tls_reloader`], cloneable.
///
/// Connections accepted from then on get the new identity; established ones keep
/// theirs and run on. Sessions resumed across a reload start with a full handshake.
#[derive(Debug, Clone)]
pub struct TlsReloader {
    cmd_tx: mpsc::UnboundedSender<RouterCommand>,
    params: Arc<ServerParams>,
}

/// A new identity, checked and ready to install; see [`TlsReloader::prepare`].
pub struct PreparedTls(pub(crate) Box<quiche::Config>);

impl std::fmt::Debug for PreparedTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedTls").finish_non_exhaustive()
    }
}

/// Why a TLS identity was not installed; the listener keeps its current one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The new identity was refused: nothing changed.
    #[error("the new TLS identity was refused")]
    Tls(#[source] TlsError),
    /// The listener has stopped.
    #[error("the listener has stopped")]
    Stopped,
}

impl TlsReloader {
    /// Checks `tls` and installs it for new connections.
    pub fn reload(&self, tls: &TlsConfig) -> Result<(), ReloadError> {
        let prepared = self.prepare(tls)?;
        self.install(prepared)
    }

    /// Builds the listener's configuration with `tls` without installing it: to
    /// check a new identity, or several listeners' at once before any changes.
    pub fn prepare(&self, tls: &TlsConfig) -> Result<PreparedTls, ReloadError> {
        let mut params = (*self.params).clone();
        params.tls = tls.clone();
        let config = params.quiche_config().map_err(ReloadError::Tls)?;
        Ok(PreparedTls(Box::new(config)))
    }

    /// Installs an identity [`prepare`](Self::prepare) checked.
    pub fn install(&self, prepared: PreparedTls) -> Result<(), ReloadError> {
        self.cmd_tx
            .send(RouterCommand::ReplaceConfig(prepared))
            .map_err(|_| ReloadError::Stopped)
    }
}

/// Why [`Listener::accept`] returned no connection.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    /// The listener stopped accepting: it was shut down or aborted.
    #[error("the listener stopped")]
    Stopped,
    /// The listener's UDP socket failed; every connection on it was stopped.
    #[error("the listener's UDP socket failed")]
    Socket(#[source] Arc<std::io::Error>),
    /// The listener's router task panicked; every connection on it was stopped.
    #[error("the listener's router task panicked")]
    RouterPanicked,
}

/// A listening endpoint: yields the connections clients start.
///
/// Also a [`Stream`](futures_core::Stream) of [`IncomingConnection`]s.
///
/// # Drop behavior
///
/// Dropping the listener stops accepting: new clients are turned away, connections
/// that were started keep running until they close, and the socket is released after
/// the last one. [`shutdown`](Self::shutdown) closes them all; [`abort`](Self::abort)
/// drops them without a word to the peers.
#[derive(Debug)]
pub struct Listener {
    accept_rx: mpsc::Receiver<IncomingConnection>,
    /// One per socket: one, unless sharded.
    shards: Vec<Shard>,
    local_addr: SocketAddr,
    abort: CancellationToken,
    steering: bool,
    /// What the listener was started with, for a new TLS identity.
    params: Arc<ServerParams>,
}

/// One socket of a listener and its router.
#[derive(Debug)]
struct Shard {
    cmd_tx: mpsc::UnboundedSender<RouterCommand>,
    router: tokio::task::JoinHandle<()>,
    failure: Failure,
}

impl Listener {
    /// The next connection a client started; once the listener has stopped, why.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a connection is only taken from the queue when this resolves.
    pub async fn accept(&mut self) -> Result<IncomingConnection, AcceptError> {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection, as [`accept`](Self::accept) waits for it: for
    /// callers that wait on several listeners at once.
    pub fn poll_accept(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<IncomingConnection, AcceptError>> {
        match std::task::ready!(self.accept_rx.poll_recv(cx)) {
            Some(incoming) => Poll::Ready(Ok(incoming)),
            None => Poll::Ready(Err(
                match self.shards.iter().find_map(|s| s.failure.get()) {
                    Some(RouterFailure::Socket(e)) => AcceptError::Socket(Arc::clone(e)),
                    Some(RouterFailure::Panicked) => AcceptError::RouterPanicked,
                    None => AcceptError::Stopped,
                },
            )),
        }
    }

    /// A handle that reads the listener's tables (connections, routes, sources).
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle {
            cmd_tx: self.shards.iter().map(|s| s.cmd_tx.clone()).collect(),
        }
    }

    /// A handle that replaces the listener's TLS identity while it runs.
    pub fn tls_reloader(&self) -> TlsReloader {
        // The shards share one configuration: any of them installs it for all.
        TlsReloader {
            cmd_tx: self.shards[0].cmd_tx.clone(),
            params: Arc::clone(&self.params),
        }
    }

    /// Its shards: sockets, each with a router task (1 unless made by
    /// [`listen_sharded`]).
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Whether the kernel steers datagrams to their connection's shard (see
    /// [`Sharding::kernel_steering`]); `false` when not sharded.
    pub fn kernel_steering(&self) -> bool {
        self.steering
    }

    #[doc(hidden)]
    /// Makes the (first) router task panic, for the project's tests.
    pub fn fail_router_for_test(&self) {
        let _ = self.shards[0].cmd_tx.send(RouterCommand::FailForTest);
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Starts minting Retry tokens under a new key. Tokens minted under the previous
    /// key stay valid until they expire; those of older keys no longer are.
    pub async fn rotate_retry_key(&self) {
        let mut key = [0u8; 32];
        crate::cid::random_bytes(&mut key);
        for s in &self.shards {
            let _ = s.cmd_tx.send(RouterCommand::RotateRetryKey(key));
        }
    }

    /// Stops accepting, closes every connection with application code `code`, and
    /// waits up to `deadline` for them to close; connections still open then are
    /// dropped. Returns whether every connection closed in time.
    ///
    /// A connection closes once its application's exchanges are over and the peer
    /// has acknowledged what it sent ([`ApplicationOverQuic::delivered`]: for HTTP/3,
    /// every request finished and every response acknowledged), so a close does not
    /// cut off data that was lost on the way and is being retransmitted; at the latest
    /// it closes when half of `deadline` has passed, leaving the rest for the close
    /// itself.
    pub async fn shutdown(mut self, code: u64, reason: &[u8], deadline: Duration) -> bool {
        self.accept_rx.close();
        while let Ok(incoming) = self.accept_rx.try_recv() {
            incoming.refuse();
        }
        let by = std::time::Instant::now()
            .checked_add(deadline / 2)
            .unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86_400));
        let mut done = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let (done_tx, done_rx) = oneshot::channel();
            let cmd = RouterCommand::Shutdown {
                code,
                reason: reason.to_vec(),
                by,
                done: done_tx,
            };
            // A router that is gone has no connection left.
            if s.cmd_tx.send(cmd).is_ok() {
                done.push(done_rx);
            }
        }
        let all_closed = async {
            for rx in done {
                if rx.await.is_err() {
                    return false;
                }
            }
            true
        };
        let graceful = matches!(tokio::time::timeout(deadline, all_closed).await, Ok(true));
        if !graceful {
            self.abort.cancel();
        }
        // The routers end once no connection is left (or at the abort): after this
        // the sockets are about to be released.
        for s in &mut self.shards {
            let _ = (&mut s.router).await;
        }
        graceful
    }

    /// Stops the listener and every connection at once, sending nothing: peers find
    /// out from their idle timeout, or from a stateless reset if a new listener with
    /// the same reset key takes over the address.
    pub fn abort(self) {
        self.abort.cancel();
    }
}

impl futures_core::Stream for Listener {
    type Item = IncomingConnection;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.accept_rx.poll_recv(cx)
    }
}

/// A connection a client started, waiting to be started with an application or
/// refused.
///
/// # Drop behavior
///
/// Dropping it refuses the connection (CONNECTION_REFUSED).
#[must_use = "an incoming connection is refused when dropped"]
pub struct IncomingConnection {
    setup: Option<WorkerSetup>,
}

impl std::fmt::Debug for IncomingConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnection")
            .field("peer", &self.peer_addr())
            .finish_non_exhaustive()
    }
}

impl IncomingConnection {
    pub(crate) fn new(setup: WorkerSetup) -> Self {
        Self { setup: Some(setup) }
    }

    /// The client's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.setup.as_ref().map(|s| s.peer)
    }

    /// Starts the connection's worker with `app`; the handshake proceeds and the app
    /// is told when it completes.
    pub fn start<A: ApplicationOverQuic>(mut self, app: A) -> ConnectionHandle {
        let setup = self
            .setup
            .take()
            .expect("set until started, refused or dropped");
        worker::spawn(setup, app, None)
    }

    /// Refuses the connection: the client gets CONNECTION_REFUSED.
    pub fn refuse(mut self) {
        if let Some(setup) = self.setup.take() {
            worker::spawn(setup, Refused, Some(CONNECTION_REFUSED));
        }
    }
}

impl Drop for IncomingConnection {
    fn drop(&mut self) {
        if let Some(setup) = self.setup.take() {
            // A runtime is present: incoming connections are only made by a router
            // task. Without one (runtime shutting down) the connection just ends.
            if tokio::runtime::Handle::try_current().is_ok() {
                worker::spawn(setup, Refused, Some(CONNECTION_REFUSED));
            }
        }
    }
}

/// The application of a refused connection: never called but to be told it closed.
struct Refused;

impl ApplicationOverQuic for Refused {
    fn on_conn_established(
        &mut self,
        _conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        Err(AppError::close(CONNECTION_REFUSED, "refused"))
    }
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}
