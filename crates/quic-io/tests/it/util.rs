use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use quic_app::echo::{ALPN, EchoServer};
use quic_io::{ClientParams, ClientTlsConfig, CountingMetrics, Listener, ServerParams, TlsConfig};

/// Logs to the test output when `RUST_LOG` is set.
pub(super) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// An echo listener on 127.0.0.1 with a fresh self-signed certificate.
pub(super) struct EchoListener {
    pub addr: SocketAddr,
    pub cert_pem: String,
    pub metrics: Arc<CountingMetrics>,
    /// Serves until the test ends (and its runtime with it).
    _task: tokio::task::JoinHandle<()>,
}

pub(super) fn server_params() -> (ServerParams, String, Arc<CountingMetrics>) {
    init_tracing();
    let identity = TlsConfig::self_signed(&["localhost", "127.0.0.1"]).unwrap();
    let mut params = ServerParams::new(identity.config, &[ALPN]);
    let metrics = Arc::new(CountingMetrics::default());
    params.metrics = metrics.clone();
    (params, identity.cert_pem, metrics)
}

/// Serves echo on `listener` until it stops.
pub(super) fn serve_echo(mut listener: Listener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            incoming.start(EchoServer::new());
        }
    })
}

pub(super) fn echo_listener(configure: impl FnOnce(&mut ServerParams)) -> EchoListener {
    let (mut params, cert_pem, metrics) = server_params();
    configure(&mut params);
    let listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    EchoListener {
        addr,
        cert_pem,
        metrics,
        _task: serve_echo(listener),
    }
}

/// Client parameters that trust `cert_pem` for `localhost`.
pub(super) fn client_params(cert_pem: &str) -> ClientParams {
    let mut params = ClientParams::new(&[ALPN]);
    params.tls = ClientTlsConfig::new()
        .add_root_pem(cert_pem.as_bytes())
        .unwrap();
    params.server_name = Some("localhost".into());
    params
}

pub(super) use quic_app::testing::Idle;

/// A real client Initial (the first datagram of a quiche client), padded to 1200+ bytes.
pub(super) fn real_initial() -> Vec<u8> {
    let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    cfg.set_application_protos(&[ALPN]).unwrap();
    cfg.verify_peer(false);
    let scid = quiche::ConnectionId::from_ref(&[7; 16]);
    let mut conn = quiche::connect(
        Some("localhost"),
        &scid,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        &mut cfg,
    )
    .unwrap();
    let mut buf = vec![0u8; 1500];
    let (len, _) = conn.send(&mut buf).unwrap();
    buf.truncate(len);
    buf
}

/// A UDP socket on loopback that answers nothing, with a receive timeout.
pub(super) fn raw_socket() -> std::net::UdpSocket {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s
}

/// Moves `conn` to a new socket on `local` as soon as the server's spare connection
/// IDs have arrived (right after the handshake); the new local address.
pub(super) async fn migrate_when_ready(
    conn: &quic_io::ConnectionHandle,
    local: SocketAddr,
) -> SocketAddr {
    loop {
        match conn.migrate(local).await {
            Err(quic_io::MigrateError::Refused(quiche::Error::OutOfIdentifiers)) => {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            other => return other.unwrap(),
        }
    }
}

/// Forwards datagrams between one client and a server, as a path between them would.
/// It drops every UDP payload over `limit` bytes (a link with a smaller MTU), and
/// everything the client sends while `cut` is set. Counts what the client sent and
/// what was dropped for size, and records the largest payload forwarded each way.
pub(super) struct Relay {
    pub addr: SocketAddr,
    pub cut: Arc<AtomicBool>,
    pub from_client: Arc<AtomicU64>,
    pub dropped: Arc<AtomicU64>,
    pub largest_from_client: Arc<AtomicUsize>,
    pub largest_from_server: Arc<AtomicUsize>,
}

pub(super) async fn relay(server: SocketAddr, limit: usize) -> Relay {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let relay = Relay {
        addr: front.local_addr().unwrap(),
        cut: Arc::default(),
        from_client: Arc::default(),
        dropped: Arc::default(),
        largest_from_client: Arc::default(),
        largest_from_server: Arc::default(),
    };
    let (cut, sent, dropped) = (
        Arc::clone(&relay.cut),
        Arc::clone(&relay.from_client),
        Arc::clone(&relay.dropped),
    );
    let (up, down) = (
        Arc::clone(&relay.largest_from_client),
        Arc::clone(&relay.largest_from_server),
    );
    tokio::spawn(async move {
        let mut client = None;
        let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((len, from)) = r else { return };
                    client = Some(from);
                    sent.fetch_add(1, Ordering::Relaxed);
                    if len > limit {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else if !cut.load(Ordering::Relaxed) {
                        up.fetch_max(len, Ordering::Relaxed);
                        let _ = back.send(&a[..len]).await;
                    }
                }
                r = back.recv(&mut b) => {
                    let Ok(len) = r else { return };
                    if len > limit {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else if let Some(to) = client {
                        down.fetch_max(len, Ordering::Relaxed);
                        let _ = front.send_to(&b[..len], to).await;
                    }
                }
            }
        }
    });
    relay
}
