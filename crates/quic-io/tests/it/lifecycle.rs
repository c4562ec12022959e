use std::time::{Duration, Instant};

use quic_app::CloseReason;
use quic_app::echo::EchoClient;
use quic_io::{ConnectError, RejectReason, ResetKey};

use super::util::{Idle, client_params, echo_listener, serve_echo, server_params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_closes_on_the_idle_timeout() {
    let server = echo_listener(|p| p.settings.idle_timeout = Duration::from_millis(300));
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), Idle)
        .await
        .unwrap();
    let started = Instant::now();
    let closed = conn.closed().await;
    assert_eq!(closed.reason, CloseReason::IdleTimeout);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_closed_with_connection_refused() {
    let (params, cert_pem, metrics) = server_params();
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            incoming.refuse();
        }
    });
    // The refusal follows the handshake (before it, the client might not be able to
    // read it), so the client sees it either as a failed connect or right after.
    let code = match quic_io::connect(addr, client_params(&cert_pem), Idle).await {
        Err(ConnectError::Refused { .. }) => 0x2,
        Err(e) => panic!("unexpected error: {e}"),
        Ok(conn) => match conn.closed().await.reason {
            CloseReason::Peer {
                app: false, code, ..
            } => code,
            ref other => panic!("unexpected close: {other}"),
        },
    };
    assert_eq!(code, 0x2, "CONNECTION_REFUSED");
    assert_eq!(metrics.snapshot().initials_accepted, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_limit_turns_new_clients_away() {
    let server = echo_listener(|p| p.limits.max_connections = 1);
    let first = quic_io::connect(server.addr, client_params(&server.cert_pem), Idle)
        .await
        .unwrap();
    let params = client_params(&server.cert_pem);
    let timeout = params.settings.handshake_timeout;
    let started = Instant::now();
    let err = quic_io::connect(server.addr, params, Idle)
        .await
        .unwrap_err();
    // Told at once (after a Retry proves its address), not left to time out.
    assert!(matches!(err, ConnectError::Refused { .. }), "{err}");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(1),
        "{elapsed:?} (timeout {timeout:?})"
    );
    assert!(
        server
            .metrics
            .snapshot()
            .rejected(RejectReason::ConnectionLimit)
            > 0
    );
    first.close(0, "done").await;
    first.closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_every_connection_with_its_code() {
    let (params, cert_pem, _metrics) = server_params();
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let (handles_tx, mut handles_rx) = tokio::sync::mpsc::channel(4);
    let mut clients = Vec::new();
    let accept = tokio::spawn(async move {
        for _ in 0..3 {
            let incoming = listener.accept().await.unwrap();
            handles_tx.send(incoming.start(Idle)).await.unwrap();
        }
        listener
    });
    for _ in 0..3 {
        clients.push(
            quic_io::connect(addr, client_params(&cert_pem), Idle)
                .await
                .unwrap(),
        );
    }
    for _ in 0..3 {
        handles_rx
            .recv()
            .await
            .unwrap()
            .established()
            .await
            .unwrap();
    }
    let listener = accept.await.unwrap();
    assert!(
        listener
            .shutdown(0x77, b"going away", Duration::from_secs(5))
            .await
    );
    for c in clients {
        let closed = c.closed().await;
        assert_eq!(closed.reason.app_code(), Some(0x77), "{:?}", closed.reason);
    }
    // The port is free again once the listener has shut down (the last worker task
    // may still be dropping its handle on the socket for an instant).
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::UdpSocket::bind(addr).is_err() {
        assert!(Instant::now() < deadline, "the port stayed in use");
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_recognises_the_stateless_reset_of_a_restarted_server() {
    let key = [0x24; 32];
    let (mut params, cert_pem, _) = server_params();
    params.reset_key = ResetKey::from_bytes(key);
    let listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params.clone()).unwrap();
    let addr = listener.local_addr();
    serve_echo_until_abort(listener, addr, key, params, cert_pem).await;
}

async fn serve_echo_until_abort(
    mut listener: quic_io::Listener,
    addr: std::net::SocketAddr,
    _key: [u8; 32],
    params: quic_io::ServerParams,
    cert_pem: String,
) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let accept = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap();
        let handle = incoming.start(quic_app::echo::EchoServer::new());
        let _ = started_tx.send(handle);
        listener
    });
    // A long transfer: the client is still sending when the server loses its state.
    let (app, report) = EchoClient::new(1, 1 << 30);
    let conn = quic_io::connect(addr, client_params(&cert_pem), app)
        .await
        .unwrap();
    let server_conn = started_rx.await.unwrap();
    server_conn.established().await.unwrap();
    let listener = accept.await.unwrap();
    listener.abort();
    // A new server with the same reset key on the same address; the old socket is
    // released as soon as its tasks have seen the abort.
    let deadline = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        match quic_io::listen_on(addr, params.clone()) {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    };
    let _task = serve_echo(restarted);
    let started = Instant::now();
    let closed = conn.closed().await;
    assert_eq!(closed.reason, CloseReason::StatelessReset);
    // Long before the 30 s idle timeout.
    assert!(started.elapsed() < Duration::from_secs(10));
    let report = report.await.unwrap();
    assert_eq!(report.close_reason, Some(CloseReason::StatelessReset));
}

/// A worker whose router is gone (the runtime shutting down drops the router's task
/// first, in some orders) can receive nothing more: it ends at once, instead of
/// finding its queue closed on every turn and spinning until its idle timeout, which
/// also held the runtime's shutdown (and a program's exit) for that long.
#[test]
fn dropping_the_runtime_does_not_wait_for_live_connections() {
    const IDLE: Duration = Duration::from_secs(20);
    for round in 0..12 {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let held = rt.block_on(async {
            let server = echo_listener(|p| p.settings.idle_timeout = IDLE);
            let mut params = client_params(&server.cert_pem);
            params.settings.idle_timeout = IDLE;
            let conn = quic_io::connect(server.addr, params, Idle).await.unwrap();
            (server, conn)
        });
        let started = Instant::now();
        drop(rt);
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "round {round}: the runtime took {took:?} to shut down"
        );
        drop(held);
    }
}
