use quic_app::echo::EchoClient;
use quic_io::RetryPolicy;
use sha2::{Digest, Sha256};

use super::util::{client_params, echo_listener};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_echoes_streams_and_reports_live_stats() {
    let server = echo_listener(|_| {});
    let (app, report) = EchoClient::new(4, 100_000);
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), app)
        .await
        .unwrap_or_else(|e| panic!("{e}: {:?}", server.metrics.snapshot()));
    let info = conn.handshake_info().expect("established");
    assert_eq!(info.alpn, quic_app::echo::ALPN);
    assert!(
        matches!(
            info.cipher,
            Some(
                "TLS_AES_128_GCM_SHA256"
                    | "TLS_AES_256_GCM_SHA384"
                    | "TLS_CHACHA20_POLY1305_SHA256"
            )
        ),
        "{:?}",
        info.cipher
    );
    let report = report.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 400_000);
    let stats = conn.stats().await;
    assert!(stats.bytes_recv >= 400_000, "{stats:?}");
    let closed = conn.closed().await;
    assert_eq!(closed.reason.app_code(), Some(0));
    assert_eq!(server.metrics.snapshot().initials_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_echo_64_kib_each() {
    const CONNS: usize = 200;
    const BYTES: u64 = 64 * 1024;
    let server = echo_listener(|p| {
        p.retry = RetryPolicy::Never;
        // Every client comes from 127.0.0.1.
        p.limits.max_handshakes_per_ip = CONNS;
    });
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let params = client_params(&server.cert_pem);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let (app, report) = EchoClient::new(1, BYTES);
            let conn = quic_io::connect(addr, params, app).await?;
            let report = report.await?;
            conn.closed().await;
            anyhow::Ok(report)
        }));
    }
    // The bytes every client sent: pattern of stream 0, 64 KiB.
    let expected: [u8; 32] = Sha256::digest(
        (0..BYTES)
            .map(|i| quic_app::echo::pattern_byte(0, i))
            .collect::<Vec<u8>>(),
    )
    .into();
    let mut ok = 0;
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        let s = &report.streams[0];
        assert_eq!(s.received, BYTES);
        assert_eq!(s.received_sha256, expected);
        assert!(s.is_ok());
        ok += 1;
    }
    assert_eq!(ok, CONNS);
    assert_eq!(server.metrics.snapshot().initials_accepted, CONNS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_on_the_handshake_completes_and_the_retry_counter_moves() {
    let server = echo_listener(|p| p.retry = RetryPolicy::Always);
    let (app, report) = EchoClient::new(2, 50_000);
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), app)
        .await
        .unwrap();
    assert!(report.await.unwrap().is_ok());
    conn.closed().await;
    let m = server.metrics.snapshot();
    // One Retry per Initial datagram of the client's first flight (a post-quantum key
    // share can make it two).
    assert!(m.retries_sent >= 1, "{m:?}");
    assert_eq!(m.initials_accepted, 1, "{m:?}");
    assert_eq!(m.rejected(quic_io::RejectReason::InvalidToken), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_server_name_checks_the_ip_address() {
    // The test certificate names both localhost and 127.0.0.1.
    let server = echo_listener(|_| {});
    let mut params = client_params(&server.cert_pem);
    params.server_name = None;
    let (app, report) = EchoClient::new(1, 1000);
    let conn = quic_io::connect(server.addr, params, app).await.unwrap();
    assert!(report.await.unwrap().is_ok());
    conn.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pacing_and_one_datagram_per_send_still_echo_everything() {
    let server = echo_listener(|p| {
        p.settings.pacing = true;
        p.settings.enable_gso = false;
    });
    let mut params = client_params(&server.cert_pem);
    params.settings.pacing = true;
    let (app, report) = EchoClient::new(2, 2 * 1024 * 1024);
    let conn = quic_io::connect(server.addr, params, app).await.unwrap();
    let report = report.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 4 * 1024 * 1024);
    conn.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qlog_and_key_log_files_are_written() {
    let dir = std::env::temp_dir().join(format!("quay-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = echo_listener(|_| {});
    let mut params = client_params(&server.cert_pem);
    params.settings.qlog_dir = Some(dir.join("qlog"));
    params.settings.keylog_file = Some(dir.join("keys.log"));
    let (app, report) = EchoClient::new(1, 1000);
    let conn = quic_io::connect(server.addr, params, app).await.unwrap();
    assert!(report.await.unwrap().is_ok());
    conn.closed().await;
    let keys = std::fs::read_to_string(dir.join("keys.log")).unwrap();
    assert!(keys.contains("CLIENT_HANDSHAKE_TRAFFIC_SECRET"), "{keys}");
    assert!(keys.contains("SERVER_TRAFFIC_SECRET_0"), "{keys}");
    let qlogs: Vec<_> = std::fs::read_dir(dir.join("qlog"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(qlogs.len(), 1);
    let name = qlogs[0].file_name().to_string_lossy().into_owned();
    assert_eq!(name, format!("{}-client.sqlog", conn.scid()));
    let qlog = std::fs::read_to_string(qlogs[0].path()).unwrap();
    assert!(qlog.contains("packet_sent"), "qlog has no packet events");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_name_a_certificate_not_naming_the_ip_is_refused() {
    // A certificate for localhost only: connecting by IP must not accept it.
    let identity = quic_io::TlsConfig::self_signed(&["localhost"]).unwrap();
    let params = quic_io::ServerParams::new(identity.config, &[quic_app::echo::ALPN]);
    let listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let _task = super::util::serve_echo(listener);
    let mut params = client_params(&identity.cert_pem);
    params.server_name = None;
    let (app, _report) = EchoClient::new(1, 10);
    let err = quic_io::connect(addr, params, app).await.unwrap_err();
    assert!(
        matches!(err, quic_io::ConnectError::Tls { by_peer: false, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("certificate verification failed"),
        "{err}"
    );
}
