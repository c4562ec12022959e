use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quic_app::{ApplicationOverQuic, CloseReason};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cid::{DEFAULT_CID_LEN, RandomConnectionIds, ResetKey, random_cid};
use crate::handle::{ConnectionClosed, ConnectionHandle};
use crate::metrics::{Metrics, NoopMetrics};
use crate::router::Router;
use crate::settings::{QuicSettings, SettingError};
use crate::socket::Socket;
use crate::tls::{ClientTlsConfig, TlsError, alert_name};
use crate::worker::WORKER_COMMAND_QUEUE;
use crate::worker::{self, Issuer, WorkerSetup, WorkerShared};

/// Everything a client connection needs.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientParams {
    /// How the server is authenticated; verifies against the system's roots by default.
    pub tls: ClientTlsConfig,
    /// The ALPN protocols offered, most preferred first.
    pub alpn: Vec<Vec<u8>>,
    /// Transport settings.
    pub settings: QuicSettings,
    /// The name sent as SNI and checked against the certificate. Without one, the
    /// certificate must name the server's IP address.
    pub server_name: Option<String>,
    /// The local address to bind; by default the unspecified address of the server's
    /// family, on an ephemeral port.
    pub bind: Option<SocketAddr>,
    /// Length of the connection IDs this client issues (1..=20).
    pub cid_len: usize,
    /// Where events are counted.
    pub metrics: Arc<dyn Metrics>,
    /// A session ticket from an earlier connection to the same server
    /// ([`ConnectionHandle::session`]): offered for resumption, and with
    /// [`QuicSettings::enable_early_data`] used to send 0-RTT data. A ticket the TLS
    /// stack cannot use is logged and ignored (a full handshake follows).
    pub session: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientParams")
            .field("tls", &self.tls)
            .field("alpn", &self.alpn)
            .field("server_name", &self.server_name)
            .field("settings", &self.settings)
            .field("session", &self.session.as_ref().map(|_| "<ticket>"))
            .finish_non_exhaustive()
    }
}

impl ClientParams {
    /// Parameters that verify the server against the system's roots.
    pub fn new(alpn: &[&[u8]]) -> Self {
        Self {
            tls: ClientTlsConfig::new(),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
            settings: QuicSettings::default(),
            server_name: None,
            bind: None,
            cid_len: DEFAULT_CID_LEN,
            metrics: Arc::new(NoopMetrics),
            session: None,
        }
    }
}

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local socket could not be bound or set up.
    #[error("failed to set up the client UDP socket")]
    Socket(#[source] std::io::Error),
    /// The client configuration was refused (local fault).
    #[error("invalid client configuration")]
    Config(#[source] TlsError),
    /// A parameter is out of range (local fault).
    #[error(transparent)]
    Invalid(#[from] SettingError),
    /// No handshake completed in time: nothing answered, or too slowly.
    #[error("handshake with {addr} timed out after {timeout:?}")]
    HandshakeTimeout {
        /// The server address.
        addr: SocketAddr,
        /// The configured handshake timeout.
        timeout: Duration,
    },
    /// TLS failed: a certificate that did not verify, no common ALPN protocol, ...
    #[error("TLS handshake with {addr} failed: {detail}")]
    Tls {
        /// The server address.
        addr: SocketAddr,
        /// The TLS alert (RFC 8446 §6), by name.
        alert: &'static str,
        /// Whether the server sent the alert (otherwise this client did).
        by_peer: bool,
        /// What failed, in words.
        detail: String,
    },
    /// The server refused the connection (CONNECTION_REFUSED).
    #[error("connection refused by {addr}")]
    Refused {
        /// The server address.
        addr: SocketAddr,
    },
    /// The connection closed during the handshake for another reason.
    #[error("connection to {addr} closed during the handshake: {reason}")]
    Closed {
        /// The server address.
        addr: SocketAddr,
        /// How it closed.
        reason: CloseReason,
    },
}

/// Connects to a QUIC server at `addr` and runs `app` on the connection. Resolves when
/// the handshake has completed (or failed). Must be called within a tokio runtime.
///
/// With a [session](ClientParams::session) and early data enabled, it resolves as soon
/// as the application is sending 0-RTT data; a later handshake failure then shows as
/// the connection's close ([`ConnectionHandle::closed`]).
///
/// Each call uses its own UDP socket and router task, released when the connection
/// ends.
///
/// # Cancel safety
///
/// Dropping the future before it resolves stops the connection attempt (nothing is
/// sent to the server; its handshake state times out).
pub async fn connect<A: ApplicationOverQuic>(
    addr: SocketAddr,
    params: ClientParams,
    app: A,
) -> Result<ConnectionHandle, ConnectError> {
    params.settings.validate()?;
    crate::listen::validate_cid_len(params.cid_len)?;
    crate::listen::validate_alpn(&params.alpn)?;
    let bind = params.bind.unwrap_or_else(|| match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    });
    let std_socket = crate::socket::bind(bind).map_err(ConnectError::Socket)?;
    // Connecting the socket fixes the local IP, so every datagram arrives on the path
    // the connection was created with.
    std_socket.connect(addr).map_err(ConnectError::Socket)?;
    let socket = Arc::new(
        Socket::new(std_socket, params.settings.enable_gso).map_err(ConnectError::Socket)?,
    );
    let local = socket.local_addr();

    let verify_ip = params.server_name.is_none().then(|| addr.ip());
    let ctx = params
        .tls
        .client_context(verify_ip)
        .map_err(ConnectError::Config)?;
    let mut cfg = quiche::Config::with_boring_ssl_ctx_builder(quiche::PROTOCOL_VERSION, ctx)
        .map_err(|e| ConnectError::Config(TlsError::Quic(e)))?;
    let alpn: Vec<&[u8]> = params.alpn.iter().map(Vec::as_slice).collect();
    cfg.set_application_protos(&alpn)
        .map_err(|e| ConnectError::Config(TlsError::Quic(e)))?;
    params.settings.apply(&mut cfg);

    let scid = random_cid(params.cid_len);
    let started = Instant::now();
    let mut conn = quiche::connect(params.server_name.as_deref(), &scid, local, addr, &mut cfg)
        .map_err(|e| ConnectError::Config(TlsError::Quic(e)))?;
    if let Some(ticket) = &params.session
        && let Err(e) = conn.set_session(ticket)
    {
        tracing::warn!(error = %e, server = %addr, "session ticket unusable; full handshake");
    }

    let abort = CancellationToken::new();
    // Dropping this future before the handshake resolves (a timeout, a raced attempt
    // that lost) stops the attempt instead of leaving it to run on.
    let mut attempt = StopOnDrop(Some(abort.clone()));
    let reset_key = ResetKey::random();
    let mut router = Router::new(
        Arc::clone(&socket),
        params.cid_len,
        Arc::clone(&params.metrics),
        reset_key.clone(),
        None,
        abort.clone(),
    );
    let (ctrl_tx, ctrl_rx) = quic_app::queue::channel(WORKER_COMMAND_QUEUE);
    let (registration, pkt_tx, pkt_rx) =
        router.register(vec![scid.to_vec()], None, ctrl_tx.clone(), None);
    let shared = WorkerShared::new(
        &params.settings,
        Arc::clone(&params.metrics),
        Some(Issuer {
            cids: Arc::new(RandomConnectionIds::new(params.cid_len)),
            reset_key,
        }),
    );
    let setup = WorkerSetup {
        conn: Box::new(conn),
        registration,
        socket,
        pkt_rx,
        // Kept for the sockets a migration adds.
        pkt_tx: Some(pkt_tx),
        ctrl_rx,
        ctrl_tx,
        shared,
        abort,
        local,
        peer: addr,
        started,
    };
    let span = tracing::info_span!("quic_client_router", %local, server = %addr);
    crate::spawn::task(router.run().instrument(span));
    let handle = worker::spawn(setup, app, None);
    let ready = handle.ready().await;
    attempt.0 = None;
    match ready {
        Ok(_) => Ok(handle),
        Err(closed) => Err(connect_error(
            addr,
            params.settings.handshake_timeout,
            &closed,
        )),
    }
}

/// Cancels the token when dropped, unless taken out first.
struct StopOnDrop(Option<CancellationToken>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(token) = self.0.take() {
            token.cancel();
        }
    }
}

pub(crate) fn connect_error(
    addr: SocketAddr,
    timeout: Duration,
    closed: &ConnectionClosed,
) -> ConnectError {
    let tls = |code: u64, by_peer: bool| {
        alert_name(code).map(|alert| {
            let detail = match (&closed.tls_verify_error, by_peer) {
                (Some(e), false) => format!("certificate verification failed: {e} (alert {alert})"),
                _ if by_peer => format!("server sent alert {alert}"),
                _ => format!("alert {alert}"),
            };
            ConnectError::Tls {
                addr,
                alert,
                by_peer,
                detail,
            }
        })
    };
    match &closed.reason {
        CloseReason::HandshakeTimeout => ConnectError::HandshakeTimeout { addr, timeout },
        CloseReason::Local {
            app: false, code, ..
        } => tls(*code, false).unwrap_or_else(|| ConnectError::Closed {
            addr,
            reason: closed.reason.clone(),
        }),
        CloseReason::Peer {
            app: false,
            code: 0x2,
            ..
        } => ConnectError::Refused { addr },
        CloseReason::Peer {
            app: false, code, ..
        } => tls(*code, true).unwrap_or_else(|| ConnectError::Closed {
            addr,
            reason: closed.reason.clone(),
        }),
        reason => ConnectError::Closed {
            addr,
            reason: reason.clone(),
        },
    }
}
