//! Session resumption and 0-RTT over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use quic_app::echo::{EchoClient, EchoServer};
use quic_io::{ClientParams, ConnectionHandle, ServerParams};
use tokio::sync::mpsc;

use super::util::{client_params, server_params};

/// An echo listener that also hands out the server side of every connection.
fn listener(
    configure: impl FnOnce(&mut ServerParams),
) -> (
    SocketAddr,
    String,
    mpsc::UnboundedReceiver<ConnectionHandle>,
) {
    let (mut params, cert_pem, _metrics) = server_params();
    configure(&mut params);
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            let _ = tx.send(incoming.start(EchoServer::new()));
        }
    });
    (addr, cert_pem, rx)
}

/// Echoes `bytes` on one stream over a fresh connection; returns the client handle
/// once the echo checked out.
async fn echo_once(addr: SocketAddr, params: ClientParams, bytes: u64) -> ConnectionHandle {
    let (app, report) = EchoClient::new(1, bytes);
    let conn = quic_io::connect(addr, params, app).await.unwrap();
    let report = tokio::time::timeout(Duration::from_secs(20), report)
        .await
        .expect("echo finished")
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), bytes);
    conn.closed().await;
    conn
}

fn early(params: &mut ClientParams) {
    params.settings.enable_early_data = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ticket_resumes_and_carries_0rtt_data() {
    let (addr, cert, mut accepted) = listener(|p| p.settings.enable_early_data = true);
    let mut params = client_params(&cert);
    early(&mut params);

    let first = echo_once(addr, params.clone(), 10_000).await;
    let server_first = accepted.recv().await.unwrap();
    assert!(!server_first.established().await.unwrap().resumed);
    let ticket = first.session().expect("the server sent a session ticket");

    params.session = Some(ticket);
    let (app, report) = EchoClient::new(1, 10_000);
    let second = quic_io::connect(addr, params, app).await.unwrap();
    let server_second = accepted.recv().await.unwrap();
    let server_info = server_second.established().await.unwrap();
    assert!(
        server_info.resumed && server_info.early_data_accepted,
        "{server_info:?}"
    );
    let report = report.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 10_000);
    let info = second.established().await.unwrap();
    assert!(info.resumed && info.early_data_accepted, "{info:?}");
    assert!(second.closed().await.reason.app_code() == Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_0rtt_data_is_sent_again_after_the_handshake() {
    // The ticket comes from one listener; a second listener, with other ticket keys,
    // cannot resume it and rejects the early data.
    let (addr_a, cert, _a) = listener(|p| p.settings.enable_early_data = true);
    let mut params = client_params(&cert);
    early(&mut params);
    let ticket = echo_once(addr_a, params.clone(), 1_000)
        .await
        .session()
        .expect("ticket");

    let (addr_b, cert_b, mut accepted_b) = listener(|p| p.settings.enable_early_data = true);
    let mut params_b = client_params(&cert_b);
    early(&mut params_b);
    params_b.session = Some(ticket);
    let (app, report) = EchoClient::new(2, 200_000);
    let conn = quic_io::connect(addr_b, params_b, app).await.unwrap();
    let report = report.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 400_000);
    let info = conn.established().await.unwrap();
    assert!(!info.resumed, "{info:?}");
    let server_info = accepted_b
        .recv()
        .await
        .unwrap()
        .established()
        .await
        .unwrap();
    assert!(!server_info.early_data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_ticket_falls_back_to_a_full_handshake() {
    let (addr, cert, _accepted) = listener(|p| p.settings.enable_early_data = true);
    let mut params = client_params(&cert);
    early(&mut params);
    params.session = Some(b"not a ticket at all".to_vec());
    let conn = echo_once(addr, params, 5_000).await;
    assert!(!conn.established().await.unwrap().resumed);
}
