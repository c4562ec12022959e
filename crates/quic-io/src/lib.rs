//! quay's socket and router core: QUIC connections over UDP, driven by tokio.
//!
//! `quic-io` owns the sockets, the timers and the event loops, so a protocol written
//! against [`quic_app::ApplicationOverQuic`] runs over the network unchanged:
//!
//! - one **router** task per UDP socket reads datagrams in batches (`recvmmsg`, GRO)
//!   and routes each by destination connection ID; for unknown IDs it runs the accept
//!   path (version negotiation, Retry with expiring tokens, limits) or answers with a
//!   rate-limited stateless reset;
//! - one **worker** task per connection owns its `quiche::Connection`, feeds it the
//!   routed datagrams, calls the application, and sends in GSO batches.
//!
//! Entry points: [`listen_on`] / [`listen`] for servers, [`connect`] for clients.
//!
//! # Example
//!
//! An echo server and a client that checks every echoed byte, over loopback:
//!
//! ```
//! use quic_app::echo::{ALPN, EchoClient, EchoServer};
//! use quic_io::{ClientParams, ClientTlsConfig, ServerParams, TlsConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = TlsConfig::self_signed(&["localhost"])?;
//! let server = ServerParams::new(identity.config, &[ALPN]);
//! let mut listener = quic_io::listen_on("127.0.0.1:0".parse()?, server)?;
//! let addr = listener.local_addr();
//! tokio::spawn(async move {
//!     while let Ok(incoming) = listener.accept().await {
//!         incoming.start(EchoServer::new());
//!     }
//! });
//!
//! let mut client = ClientParams::new(&[ALPN]);
//! client.tls = ClientTlsConfig::new().add_root_pem(identity.cert_pem.as_bytes())?;
//! client.server_name = Some("localhost".into());
//! let (app, report) = EchoClient::new(2, 10_000);
//! let conn = quic_io::connect(addr, client, app).await?;
//! assert!(report.await?.is_ok());
//! conn.closed().await;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod cid;
pub use cid::quic_lb::{
    MAX_SERVER_ID_LEN, QuicLbConfig, QuicLbError, QuicLbGenerator, ServerId, UNROUTABLE_CONFIG_ID,
};
pub use cid::{ConnectionIdGenerator, DEFAULT_CID_LEN, MAX_SHARDS, RandomConnectionIds, ResetKey};

mod connect;
pub use connect::{ClientParams, ConnectError, connect};

mod handle;
pub use handle::{ConnectionClosed, ConnectionHandle};
pub use worker::MigrateError;

mod listen;
pub use listen::{
    AcceptError, EndpointLimits, EndpointStats, IncomingConnection, ListenError, Listener,
    PreparedTls, ReloadError, RetryPolicy, ServerParams, Sharding, StatsHandle, TlsReloader,
    listen, listen_on, listen_sharded,
};

mod metrics;
pub use metrics::{
    CountingMetrics, DropReason, Metrics, MetricsSnapshot, NoopMetrics, RejectReason,
};

mod settings;
pub use settings::{CongestionControl, KeyExchange, QuicSettings, SettingError};

mod tls;
#[cfg(feature = "self-signed")]
pub use tls::SelfSigned;
pub use tls::{ClientAuth, ClientTlsConfig, TlsConfig, TlsError};

mod router;
mod socket;
mod spawn;
mod worker;

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for the project's own tests and fuzz targets; not a stable API.
    pub use crate::router::header::{Routing, parse as parse_routing_header};

    /// The router's table of connection IDs, for benchmarks: the same lookup every
    /// datagram takes.
    #[derive(Debug, Default)]
    pub struct RouteTable {
        routes: crate::router::Routes<u64>,
    }

    impl RouteTable {
        /// Routes `cid`, an ID this endpoint issued, to connection `id`.
        pub fn insert(&mut self, cid: &[u8], id: u64) {
            self.routes
                .insert(cid.to_vec(), crate::router::ChosenBy::Us, id);
        }

        /// The connection a datagram goes to, with connection IDs of `cid_len` bytes
        /// in short headers.
        pub fn route(&self, datagram: &[u8], cid_len: usize) -> Option<u64> {
            crate::router::lookup(&self.routes, datagram, cid_len).and_then(|(_, id)| id.copied())
        }
    }

    /// A connection's output packed into GSO batches as a worker packs it, without the
    /// socket, for benchmarks.
    #[derive(Debug)]
    pub struct GsoBatches(crate::worker::batch::SendBatcher);

    impl GsoBatches {
        /// Batches of packets up to `max_payload` bytes, at most `max_segments` each.
        pub fn new(max_payload: usize, max_segments: usize) -> Self {
            Self(crate::worker::batch::SendBatcher::new(
                max_payload,
                max_segments,
                false,
                std::sync::Arc::default(),
            ))
        }

        /// Fills batches from `conn` until it has nothing more to send, dropping them
        /// as a send would; returns the number of batches and of bytes.
        pub fn drain(&mut self, conn: &mut quiche::Connection) -> (usize, usize) {
            let (mut batches, mut bytes) = (0, 0);
            loop {
                let next = self.0.fill(conn);
                let (_, filled) = self.0.batches();
                batches += filled.len();
                bytes += filled.iter().map(|b| b.len).sum::<usize>();
                self.0.sent();
                if next != crate::worker::batch::Next::More {
                    self.0.release();
                    return (batches, bytes);
                }
            }
        }
    }

    /// Writes a stateless reset (RFC 9000 §10.3) answering a packet of `received_len`
    /// bytes into `out`; its length, or `None` when none may be sent.
    pub fn write_reset(token: &[u8; 16], received_len: usize, out: &mut [u8]) -> Option<usize> {
        crate::router::reset::write_reset(token, received_len, out)
    }

    /// A listener's router on a loopback socket, driven by hand: every datagram given
    /// to [`route`](Self::route) takes the path a received one takes (routing,
    /// accept path, Retry, stateless reset, version negotiation), answers included.
    pub struct RouterHarness {
        router: crate::router::Router,
        _accept: tokio::sync::mpsc::Receiver<crate::IncomingConnection>,
        rt: tokio::runtime::Runtime,
    }

    impl std::fmt::Debug for RouterHarness {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RouterHarness").finish_non_exhaustive()
        }
    }

    impl RouterHarness {
        /// A router for `params` on a fresh socket at 127.0.0.1.
        pub fn new(params: crate::ServerParams) -> Result<Self, crate::ListenError> {
            params.validate()?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(crate::ListenError::Socket)?;
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
            let socket = crate::socket::bind(addr)
                .map_err(|source| crate::ListenError::Bind { addr, source })?;
            let (router, accept, _abort) = {
                let _g = rt.enter();
                crate::listen::listener_router(socket, &params)?
            };
            Ok(Self {
                router,
                _accept: accept,
                rt,
            })
        }

        /// Routes `datagram`, received from `from`.
        pub fn route(&mut self, datagram: &[u8], from: std::net::SocketAddr) {
            let _g = self.rt.enter();
            self.router.route_for_test(datagram, from);
        }

        /// Connections the router knows.
        pub fn connections(&self) -> usize {
            self.router.connection_count()
        }
    }

    /// Mints and checks Retry tokens for one fixed client address, for fuzzing.
    #[derive(Debug)]
    pub struct RetryTokenCheck(crate::router::retry::RetryTokens);

    impl Default for RetryTokenCheck {
        fn default() -> Self {
            Self::new()
        }
    }

    impl RetryTokenCheck {
        const PEER: std::net::SocketAddr = std::net::SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::new(192, 0, 2, 1),
            4433,
        ));
        const NOW: u64 = 1_000_000;

        /// A checker with a fresh random key.
        pub fn new() -> Self {
            Self(crate::router::retry::RetryTokens::new(
                std::time::Duration::from_secs(10),
            ))
        }

        /// A valid token.
        pub fn mint(&self) -> Vec<u8> {
            let mut buf = [0u8; crate::router::retry::MAX_TOKEN_LEN];
            let len = self.0.mint(
                Self::PEER,
                b"original-dcid",
                b"retry-scid",
                Self::NOW,
                &mut buf,
            );
            buf[..len].to_vec()
        }

        /// Whether `token` is accepted.
        pub fn accepts(&self, token: &[u8]) -> bool {
            self.0
                .validate(token, Self::PEER, b"retry-scid", Self::NOW)
                .is_ok()
        }
    }
}
