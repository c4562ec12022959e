use std::time::{Duration, Instant};

use quic_app::echo::EchoClient;
use quic_io::{ConnectError, ListenError, TlsConfig};

use super::util::{Idle, client_params, echo_listener, raw_socket, server_params};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_gives_a_typed_handshake_timeout() {
    let hole = raw_socket();
    let mut params = quic_io::ClientParams::new(&[quic_app::echo::ALPN]);
    params.tls = quic_io::ClientTlsConfig::insecure();
    params.settings.handshake_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = quic_io::connect(hole.local_addr().unwrap(), params, Idle)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectError::HandshakeTimeout { timeout, .. } if timeout == Duration::from_millis(500)),
        "{err}"
    );
    // Generous bounds: it neither gave up at once nor hung.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(400) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );
    // The black hole did hear the client's Initials.
    let mut buf = [0u8; 2000];
    let (len, _) = hole.recv_from(&mut buf).unwrap();
    assert!(len >= 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_the_wrong_ca_fails_naming_certificate_verification() {
    let server = echo_listener(|_| {});
    let other = TlsConfig::self_signed(&["localhost"]).unwrap();
    let (app, _report) = EchoClient::new(1, 10);
    let err = quic_io::connect(server.addr, client_params(&other.cert_pem), app)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, ConnectError::Tls { by_peer: false, .. }),
        "{text}"
    );
    assert!(text.contains("certificate verification failed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_name_is_refused() {
    let server = echo_listener(|_| {});
    let mut params = client_params(&server.cert_pem);
    params.server_name = Some("example.org".into());
    let (app, _report) = EchoClient::new(1, 10);
    let err = quic_io::connect(server.addr, params, app)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("certificate verification failed"),
        "{err}"
    );
}

#[tokio::test]
async fn binding_a_busy_port_gives_a_clear_error() {
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let (params, _, _) = server_params();
    let err = quic_io::listen_on(addr, params).unwrap_err();
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
    match err {
        ListenError::Bind { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse)
        }
        other => panic!("unexpected error: {other}"),
    }
}

#[tokio::test]
async fn tls_inputs_are_checked() {
    let a = TlsConfig::self_signed(&["localhost"]).unwrap();
    let b = TlsConfig::self_signed(&["localhost"]).unwrap();
    assert!(matches!(
        TlsConfig::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()),
        Err(quic_io::TlsError::KeyMismatch(_))
    ));
    assert!(matches!(
        TlsConfig::from_pem(b"not pem", a.key_pem.as_bytes()),
        Err(quic_io::TlsError::NoCertificate(_))
    ));
    let corrupt = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    assert!(matches!(
        TlsConfig::from_pem(corrupt.as_bytes(), a.key_pem.as_bytes()),
        Err(quic_io::TlsError::Parse { .. })
    ));
    let err =
        TlsConfig::from_pem_files("/nonexistent/cert.pem", "/nonexistent/key.pem").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    assert!(TlsConfig::from_pem(a.cert_pem.as_bytes(), a.key_pem.as_bytes()).is_ok());
}
