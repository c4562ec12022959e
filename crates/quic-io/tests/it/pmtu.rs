//! Path MTU discovery: packets grow to the configured ceiling on a wide path, settle
//! below a narrow one without losing data, and stay at the configured size when
//! discovery is off.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use quic_app::echo::EchoClient;
use quic_io::ClientParams;

use super::util::{client_params, echo_listener, relay};

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
    let path = relay(server.addr, usize::MAX).await;
    let pmtu = echo_through(path.addr, client_params(&server.cert_pem), 1_000_000).await;
    assert_eq!(pmtu, 1452);
    // The probes are the ceiling's size exactly, in both directions.
    assert_eq!(path.largest_from_client.load(Ordering::Relaxed), 1452);
    assert_eq!(path.largest_from_server.load(Ordering::Relaxed), 1452);
}

// With 1350-byte packets from the start and no discovery, every packet after the
// handshake would be dropped here and the echo would never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_narrower_than_the_ceiling_loses_only_probes() {
    const LIMIT: usize = 1300;
    let server = echo_listener(|_| {});
    let path = relay(server.addr, LIMIT).await;
    let pmtu = echo_through(path.addr, client_params(&server.cert_pem), 1_000_000).await;
    assert!((1201..=LIMIT).contains(&pmtu), "pmtu {pmtu}");
    // Larger probes were tried and lost, and each side found more than QUIC's minimum.
    assert!(path.dropped.load(Ordering::Relaxed) >= 2);
    for largest in [&path.largest_from_client, &path.largest_from_server] {
        let largest = largest.load(Ordering::Relaxed);
        assert!(largest > 1200, "largest {largest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_discovery_packets_are_the_configured_size_from_the_start() {
    let server = echo_listener(|p| {
        p.settings.discover_pmtu = false;
        p.settings.max_send_udp_payload = 1350;
    });
    let path = relay(server.addr, usize::MAX).await;
    let mut params = client_params(&server.cert_pem);
    params.settings.discover_pmtu = false;
    params.settings.max_send_udp_payload = 1350;
    let pmtu = echo_through(path.addr, params, 1_000_000).await;
    assert_eq!(pmtu, 1350);
    assert_eq!(path.largest_from_client.load(Ordering::Relaxed), 1350);
    assert_eq!(path.largest_from_server.load(Ordering::Relaxed), 1350);
}
