//! Defects found under stress: a panicking application, a close quiche cannot send,
//! settings out of range, and Retry tokens that fail validation.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use quic_app::{AppError, ApplicationOverQuic, HandshakeInfo, QuicConnection};
use quic_io::{ConnectError, ListenError, RetryPolicy, ServerParams};

use super::util::{Idle, client_params, server_params};

/// Panics in its first `process_reads` when `panics` is set.
struct Panicky {
    panics: bool,
    panicked: Arc<AtomicUsize>,
}

impl ApplicationOverQuic for Panicky {
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        if self.panics {
            self.panicked.fetch_add(1, Ordering::SeqCst);
            panic!("application failure (expected by the test)");
        }
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_panics_gives_its_connection_slot_back() {
    let (mut params, cert_pem, _metrics) = server_params();
    params.limits.max_connections = 2;
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let panicked = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&panicked);
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok(incoming) = listener.accept().await {
            n += 1;
            incoming.start(Panicky {
                panics: n <= 2,
                panicked: Arc::clone(&count),
            });
        }
    });
    let mut params = client_params(&cert_pem);
    params.settings.handshake_timeout = Duration::from_secs(3);
    params.settings.idle_timeout = Duration::from_secs(1);
    let first = quic_io::connect(addr, params.clone(), Idle).await.unwrap();
    let second = quic_io::connect(addr, params.clone(), Idle).await.unwrap();
    // Both server workers have panicked (at their first turn after the handshake).
    tokio::time::timeout(Duration::from_secs(10), async {
        while panicked.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the server applications never ran");
    // Their slots are free again: two more clients get in. A panic's unwinding gives
    // the slot back just after the count above moved, so a client may arrive before
    // the router has heard of it; it is let in within moments, not after a timeout.
    let mut admitted = Vec::new();
    for i in 0..2 {
        let conn = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match quic_io::connect(addr, params.clone(), Idle).await {
                    Err(ConnectError::Refused { .. }) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("client {i}: the slots were never given back"));
        admitted.push(conn.unwrap_or_else(|e| panic!("client {i} after the panics: {e}")));
    }
    drop((first, second, admitted));
}

/// A client that cuts its own path to the server as the handshake completes (so its
/// Finished is lost and a Handshake probe comes due), then closes in the turn the
/// probe timer fires.
struct CloseOnProbe {
    cut: Arc<AtomicBool>,
    ptos: usize,
    closed: bool,
}

impl ApplicationOverQuic for CloseOnProbe {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.cut.store(true, Ordering::SeqCst);
        self.ptos = conn.path_stats().map(|p| p.total_pto_count).sum();
        Ok(())
    }
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let ptos: usize = conn.path_stats().map(|p| p.total_pto_count).sum();
        if !self.closed && ptos > self.ptos {
            self.closed = true;
            let _ = conn.close(true, 0x100, b"done");
        }
        Ok(())
    }
}

// One thread: the relay cannot forward the client's Finished between its send and the
// application's cut, which run in the same poll of the client's worker.
#[tokio::test]
async fn a_close_quiche_cannot_send_does_not_flood_the_path() {
    let (params, cert_pem, _metrics) = server_params();
    let listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let server_addr = listener.local_addr();
    let _server = super::util::serve_echo(listener);
    let relay = super::util::relay(server_addr, usize::MAX).await;
    let app = CloseOnProbe {
        cut: Arc::clone(&relay.cut),
        ptos: 0,
        closed: false,
    };
    let conn = quic_io::connect(relay.addr, client_params(&cert_pem), app)
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.closed()).await;
    let sent = relay.from_client.load(Ordering::Relaxed);
    assert!(
        closed.is_ok(),
        "the connection never ended; {sent} datagrams sent"
    );
    // The handshake, a probe or two, then a few datagrams per timer: nothing like the
    // unbounded stream of ACK-only Handshake packets quiche produces here.
    assert!(sent <= 60, "{sent} datagrams sent");
}

#[tokio::test]
async fn every_setting_out_of_range_is_refused_with_its_name() {
    type Change = fn(&mut ServerParams);
    let cases: &[(&str, Change)] = &[
        ("settings.max_send_udp_payload", |p| {
            p.settings.max_send_udp_payload = 0
        }),
        ("settings.max_send_udp_payload", |p| {
            p.settings.max_send_udp_payload = 100_000
        }),
        ("settings.idle_timeout", |p| {
            p.settings.idle_timeout = Duration::MAX
        }),
        ("settings.handshake_timeout", |p| {
            p.settings.handshake_timeout = Duration::MAX
        }),
        ("settings.handshake_timeout", |p| {
            p.settings.handshake_timeout = Duration::ZERO
        }),
        ("settings.initial_max_data", |p| {
            p.settings.initial_max_data = u64::MAX
        }),
        ("settings.initial_max_stream_data", |p| {
            p.settings.initial_max_stream_data = 1 << 62
        }),
        ("settings.max_connection_window", |p| {
            p.settings.max_connection_window = 1
        }),
        ("settings.max_stream_window", |p| {
            p.settings.max_stream_window = 1
        }),
        ("settings.max_streams_bidi", |p| {
            p.settings.max_streams_bidi = u64::MAX
        }),
        ("settings.max_streams_uni", |p| {
            p.settings.max_streams_uni = (1 << 60) + 1
        }),
        ("settings.datagram_queue_len", |p| {
            p.settings.enable_datagrams = true;
            p.settings.datagram_queue_len = 0;
        }),
        ("limits.max_connections", |p| p.limits.max_connections = 0),
        ("limits.max_handshakes", |p| p.limits.max_handshakes = 0),
        ("limits.accept_backlog", |p| p.limits.accept_backlog = 0),
        ("retry_token_lifetime", |p| {
            p.retry_token_lifetime = Duration::ZERO
        }),
        ("retry_token_lifetime", |p| {
            p.retry_token_lifetime = Duration::MAX
        }),
        ("cid_len", |p| p.cid_len = 0),
        ("cid_len", |p| p.cid_len = 21),
        ("alpn", |p| p.alpn.clear()),
        ("alpn", |p| p.alpn = vec![Vec::new()]),
        ("alpn", |p| p.alpn = vec![vec![b'a'; 256]]),
    ];
    for (field, change) in cases {
        let (mut params, _, _) = server_params();
        change(&mut params);
        match quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params) {
            Err(ListenError::Invalid(e)) => {
                assert_eq!(e.field, *field, "{e}");
                assert!(e.to_string().contains(field), "{e}");
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // Zero means no idle timeout: accepted.
    let (mut params, _, _) = server_params();
    params.settings.idle_timeout = Duration::ZERO;
    assert!(quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).is_ok());

    // A client validates its own before it sends anything.
    let mut params = quic_io::ClientParams::new(&[quic_app::echo::ALPN]);
    params.settings.max_send_udp_payload = 0;
    match quic_io::connect("127.0.0.1:9".parse().unwrap(), params, Idle).await {
        Err(ConnectError::Invalid(e)) => assert_eq!(e.field, "settings.max_send_udp_payload"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    let mut params = quic_io::ClientParams::new(&[quic_app::echo::ALPN]);
    params.cid_len = 40;
    match quic_io::connect("127.0.0.1:9".parse().unwrap(), params, Idle).await {
        Err(ConnectError::Invalid(e)) => assert_eq!(e.field, "cid_len"),
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_retry_token_is_answered_with_invalid_token() {
    let (mut params, _cert, metrics) = server_params();
    params.retry = RetryPolicy::Always;
    let listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let server = listener.local_addr();
    let _task = super::util::serve_echo(listener);

    let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
    cfg.set_application_protos(&[quic_app::echo::ALPN]).unwrap();
    cfg.verify_peer(false);
    let first = super::util::raw_socket();
    let local = first.local_addr().unwrap();
    let scid = quiche::ConnectionId::from_ref(&[9; 16]);
    let mut conn = quiche::connect(Some("localhost"), &scid, local, server, &mut cfg).unwrap();
    let mut buf = vec![0u8; 1500];
    let (len, _) = conn.send(&mut buf).unwrap();
    first.send_to(&buf[..len], server).unwrap();
    // The Retry, read by the client: its next Initial carries the token.
    let (len, _) = first.recv_from(&mut buf).unwrap();
    let info = quiche::RecvInfo {
        from: server,
        to: local,
    };
    conn.recv(&mut buf[..len], info).unwrap();
    let (len, _) = conn.send(&mut buf).unwrap();
    // Sent from another port, the token no longer matches the address.
    let second = super::util::raw_socket();
    second.send_to(&buf[..len], server).unwrap();
    let (len, _) = second
        .recv_from(&mut buf)
        .expect("an invalid token must be answered, not ignored");
    let _ = conn.recv(&mut buf[..len], info);
    let err = conn.peer_error().expect("a CONNECTION_CLOSE");
    assert!(!err.is_app);
    assert_eq!(err.error_code, 0xb, "INVALID_TOKEN");
    assert_eq!(
        metrics
            .snapshot()
            .rejected(quic_io::RejectReason::InvalidToken),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_dies_ends_the_listener_with_an_error_and_stops_its_connections() {
    let (params, cert_pem, _metrics) = server_params();
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let client = tokio::spawn(quic_io::connect(addr, client_params(&cert_pem), Idle));
    let server_conn = listener.accept().await.unwrap().start(Idle);
    server_conn.established().await.unwrap();
    let _client = client.await.unwrap().unwrap();
    listener.fail_router_for_test();
    match listener.accept().await {
        Err(quic_io::AcceptError::RouterPanicked) => {}
        other => panic!("{other:?}"),
    }
    // The connection stops at once rather than at its idle timeout (30 s).
    let closed = tokio::time::timeout(Duration::from_secs(5), server_conn.closed())
        .await
        .expect("the connection outlived its router");
    assert_eq!(closed.reason, quic_app::CloseReason::Aborted);
}

/// Client parameters that connect from `ip` (any address of 127.0.0.0/8).
fn from(ip: [u8; 4], cert_pem: &str) -> quic_io::ClientParams {
    let mut params = client_params(cert_pem);
    params.bind = Some(SocketAddr::from((ip, 0)));
    params
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_source_address_are_limited_and_refused_promptly() {
    let server = super::util::echo_listener(|p| p.limits.max_connections_per_ip = 2);
    let mut held = Vec::new();
    for _ in 0..2 {
        let c = quic_io::connect(server.addr, from([127, 0, 0, 1], &server.cert_pem), Idle);
        held.push(c.await.unwrap());
    }
    let started = std::time::Instant::now();
    let err = quic_io::connect(server.addr, from([127, 0, 0, 1], &server.cert_pem), Idle)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // Another address is not affected.
    let other = quic_io::connect(server.addr, from([127, 0, 0, 2], &server.cert_pem), Idle);
    held.push(other.await.unwrap());
    let m = server.metrics.snapshot();
    assert!(
        m.rejected(quic_io::RejectReason::SourceConnectionLimit) >= 1,
        "{m:?}"
    );
    // Closing one frees its slot.
    let first = held.remove(0);
    first.close(0, "done").await;
    first.closed().await;
    let again = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let c = quic_io::connect(server.addr, from([127, 0, 0, 1], &server.cert_pem), Idle);
            match c.await {
                Ok(c) => return c,
                // The server may not have seen the close yet.
                Err(ConnectError::Refused { .. }) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await
    .expect("the slot was never given back");
    drop((again, held));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_per_source_address_are_limited() {
    let server = super::util::echo_listener(|p| p.limits.max_handshakes_per_ip = 1);
    // A handshake that never completes, from 127.0.0.1.
    let sock = super::util::raw_socket();
    sock.send_to(&super::util::real_initial(), server.addr)
        .unwrap();
    let mut buf = [0u8; 1500];
    sock.recv_from(&mut buf)
        .expect("the server answers the Initial");
    let err = quic_io::connect(server.addr, from([127, 0, 0, 1], &server.cert_pem), Idle)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    let other = quic_io::connect(server.addr, from([127, 0, 0, 3], &server.cert_pem), Idle);
    other.await.unwrap();
    let m = server.metrics.snapshot();
    assert!(
        m.rejected(quic_io::RejectReason::SourceHandshakeLimit) >= 1,
        "{m:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_log_is_private_and_qlog_files_are_capped() {
    let dir = std::env::temp_dir().join(format!("quay-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let keylog = dir.join("keys.log");
    let qlogs = dir.join("qlog");
    let (mut params, cert_pem, _metrics) = server_params();
    params.settings.keylog_file = Some(keylog.clone());
    params.settings.qlog_dir = Some(qlogs.clone());
    params.settings.qlog_max_bytes = 2_000;
    let listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let _server = super::util::serve_echo(listener);
    let (app, report) = quic_app::echo::EchoClient::new(2, 200_000);
    let conn = quic_io::connect(addr, client_params(&cert_pem), app)
        .await
        .unwrap();
    assert!(report.await.unwrap().is_ok());
    conn.closed().await;
    // The server's side of the connection has closed too, its files flushed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&keylog).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "key log mode {mode:o}");
    assert!(std::fs::metadata(&keylog).unwrap().len() > 0);
    let files: Vec<_> = std::fs::read_dir(&qlogs).unwrap().flatten().collect();
    assert!(!files.is_empty());
    for f in files {
        let len = f.metadata().unwrap().len();
        assert!(
            len > 0 && len <= 2_000,
            "{}: {len} bytes",
            f.path().display()
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
