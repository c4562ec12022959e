//! Path MTU discovery: packets grow to the configured ceiling on a wide path, settle
//! below a narrow one without losing data, and stay at the configured size when
//! discovery is off.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use quic_app::echo::EchoClient;
use quic_io::ClientParams;

use super::util::{client_params, echo_listener};

/// Forwards datagrams between one client and a server, dropping any UDP payload
/// larger than `limit` bytes, as a link with a smaller MTU would. Records the largest
/// payload forwarded in each direction and counts the drops.
struct NarrowPath {
    addr: SocketAddr,
    largest_from_client: Arc<AtomicUsize>,
    largest_from_server: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

async fn narrow_path(server: SocketAddr, limit: usize) -> NarrowPath {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let path = NarrowPath {
        addr: front.local_addr().unwrap(),
        largest_from_client: Arc::default(),
        largest_from_server: Arc::default(),
        dropped: Arc::default(),
    };
    let (up, down, dropped) = (
        Arc::clone(&path.largest_from_client),
        Arc::clone(&path.largest_from_server),
        Arc::clone(&path.dropped),
    );
    tokio::spawn(async move {
        let mut client = None;
        let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((len, from)) = r else { return };
                    client = Some(from);
                    if len > limit {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    } else {
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
    path
}

/// Echoes 4 streams of `bytes` each through `addr`; returns the client's path MTU at
/// the end. Panics unless every byte came back intact within 30 s.
async fn echo_through(addr: SocketAddr, params: ClientParams, bytes: u64) -> usize {
    let (app, report) = EchoClient::new(4, bytes);
    let conn = quic_io::connect(addr, params, app).await.unwrap();
    let Ok(report) = tokio::time::timeout(Duration::from_secs(30), report).await else {
        panic!("the echo did not finish in 30 s: {:?}", conn.stats().await);
    };
    let report = report.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 4 * bytes);
    conn.stats().await.pmtu
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_grow_to_the_configured_ceiling_on_a_wide_path() {
    let server = echo_listener(|_| {});
    let path = narrow_path(server.addr, 65_535).await;
    let pmtu = echo_through(path.addr, client_params(&server.cert_pem), 1_000_000).await;
    assert_eq!(pmtu, 1452);
    // The probes are the ceiling's size exactly, in both directions.
    assert_eq!(path.largest_from_client.load(Ordering::Relaxed), 1452);
    assert_eq!(path.largest_from_server.load(Ordering::Relaxed), 1452);
    assert_eq!(path.dropped.load(Ordering::Relaxed), 0);
}

// With the earlier defaults (1350-byte packets from the start, no discovery) every
// packet after the handshake was dropped here and the echo never finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_narrower_than_the_ceiling_loses_only_probes() {
    const LIMIT: usize = 1300;
    let server = echo_listener(|_| {});
    let path = narrow_path(server.addr, LIMIT).await;
    let pmtu = echo_through(path.addr, client_params(&server.cert_pem), 1_000_000).await;
    assert!((1201..=LIMIT).contains(&pmtu), "pmtu {pmtu}");
    // Larger probes were tried and lost, in each direction, and the data went through.
    assert!(path.dropped.load(Ordering::Relaxed) >= 2);
    for largest in [&path.largest_from_client, &path.largest_from_server] {
        let largest = largest.load(Ordering::Relaxed);
        assert!((1200..=LIMIT).contains(&largest), "largest {largest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_discovery_packets_are_the_configured_size_from_the_start() {
    let server = echo_listener(|p| {
        p.settings.discover_pmtu = false;
        p.settings.max_send_udp_payload = 1350;
    });
    let path = narrow_path(server.addr, 65_535).await;
    let mut params = client_params(&server.cert_pem);
    params.settings.discover_pmtu = false;
    params.settings.max_send_udp_payload = 1350;
    let pmtu = echo_through(path.addr, params, 1_000_000).await;
    assert_eq!(pmtu, 1350);
    assert_eq!(path.largest_from_client.load(Ordering::Relaxed), 1350);
    assert_eq!(path.largest_from_server.load(Ordering::Relaxed), 1350);
}
