use quic_app::echo::EchoClient;

use super::util::{client_params, echo_listener};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_echoes_streams() {
    let server = echo_listener(|_| {});
    let (app, report) = EchoClient::new(4, 100_000);
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), app)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", server.metrics.snapshot()));
    let report = report.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 400_000);
    let closed = conn.closed().await;
    assert_eq!(closed.reason.app_code(), Some(0));
}
