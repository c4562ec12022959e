//! CONNECT-UDP through `quay::masque` over loopback: tunnels carry UDP both ways (in
//! QUIC datagrams and in capsules), through the async API and a local socket; the
//! proxy refuses what it must with clear statuses, and counts and closes tunnels.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quay::h3::{Client, H3Settings, Server};
use quay::io::{ClientTlsConfig, QuicSettings, TlsConfig};
use quay::masque::{ConnectUdpError, OpenError, Proxy, ProxyConfig, ProxyHandler, UdpTunnel};

/// A UDP echo service on loopback, prefixing each answer.
async fn udp_echo() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut back = b"echo:".to_vec();
            back.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&back, from).await;
        }
    });
    addr
}

struct Setup {
    proxy: Arc<Proxy>,
    url: http::Uri,
    client: Client,
}

/// A proxy with `tls`, configured by `configure`, QUIC datagrams as asked; its URL.
fn proxy_with(
    tls: TlsConfig,
    quic_datagrams: bool,
    configure: impl FnOnce(&mut ProxyConfig),
) -> (Arc<Proxy>, http::Uri) {
    let mut h3 = H3Settings::default();
    h3.enable_extended_connect = true;
    let mut settings = QuicSettings::default();
    settings.enable_datagrams = quic_datagrams;
    let server = Server::builder()
        .tls(tls)
        .h3_settings(h3)
        .settings(settings)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let url: http::Uri = format!("https://localhost:{}/", server.local_addr().port())
        .parse()
        .unwrap();
    let mut config = ProxyConfig::default();
    configure(&mut config);
    let proxy = Proxy::new(config);
    tokio::spawn(server.serve(ProxyHandler::new(Arc::clone(&proxy))));
    (proxy, url)
}

/// A proxy configured by `configure`, and a client trusting it; QUIC datagrams on
/// both as asked.
fn setup(quic_datagrams: bool, configure: impl FnOnce(&mut ProxyConfig)) -> Setup {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let (proxy, url) = proxy_with(identity.config, quic_datagrams, configure);
    let mut settings = QuicSettings::default();
    settings.enable_datagrams = quic_datagrams;
    let client = Client::builder()
        .tls(
            ClientTlsConfig::new()
                .add_root_pem(identity.cert_pem.as_bytes())
                .unwrap(),
        )
        .settings(settings)
        .build();
    Setup { proxy, url, client }
}

fn allow_loopback(c: &mut ProxyConfig) {
    c.targets.allow("127.0.0.1/32".parse().unwrap());
}

/// Sends `payload` until its echo comes back (a QUIC datagram may be lost).
async fn round_trip(tunnel: &mut UdpTunnel, payload: &[u8]) -> bytes::Bytes {
    for _ in 0..10 {
        tunnel.send(payload).await.unwrap();
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), tunnel.recv()).await {
            return r.unwrap().expect("tunnel open");
        }
    }
    panic!("no echo of {} bytes", payload.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_flows_through_a_tunnel_in_datagrams_and_in_capsules() {
    let target = udp_echo().await;
    for quic_datagrams in [true, false] {
        let s = setup(quic_datagrams, allow_loopback);
        let mut tunnel =
            quay::masque::connect_udp(&s.client, &s.url, "127.0.0.1", target.port(), None)
                .await
                .unwrap();
        for i in 0..50u32 {
            let payload = format!("{quic_datagrams}:{i}");
            let echoed = round_trip(&mut tunnel, payload.as_bytes()).await;
            assert_eq!(&echoed[..], format!("echo:{payload}").as_bytes());
        }
        // A payload larger than a QUIC datagram travels only in capsules.
        if !quic_datagrams {
            let big = vec![0x5a; 20_000];
            let echoed = round_trip(&mut tunnel, &big).await;
            assert_eq!(echoed.len(), 20_005);
        } else {
            assert!(tunnel.max_payload() < 1500, "{}", tunnel.max_payload());
        }
        let open = s.proxy.tunnels();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].addr, target);
        assert!(open[0].stats.packets_to_target >= 50, "{:?}", open[0].stats);
        assert_eq!(
            open[0].stats.packets_from_target,
            open[0].stats.packets_to_target
        );
        tunnel.close().await.unwrap();
        let closed = async {
            while !s.proxy.tunnels().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), closed)
            .await
            .expect("the proxy closes the tunnel with the stream");
        assert!(s.proxy.totals().packets_to_target >= 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_socket_carries_any_programs_udp_through_the_tunnel() {
    let target = udp_echo().await;
    let s = setup(true, allow_loopback);
    let tunnel = quay::masque::connect_udp(&s.client, &s.url, "127.0.0.1", target.port(), None)
        .await
        .unwrap();
    let local = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local_addr = local.local_addr().unwrap();
    tokio::spawn(tunnel.relay(local));
    let app = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    app.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut echoed = 0;
    for i in 0..20 {
        let msg = format!("app {i}");
        for _ in 0..10 {
            app.send_to(msg.as_bytes(), local_addr).unwrap();
            if let Ok((n, from)) = app.recv_from(&mut buf) {
                assert_eq!(from, local_addr);
                assert_eq!(&buf[..n], format!("echo:{msg}").as_bytes());
                echoed += 1;
                break;
            }
        }
    }
    assert_eq!(echoed, 20);
}

/// The status and `proxy-status` error of a refused tunnel.
async fn refused(s: &Setup, host: &str, port: u16, token: Option<&str>) -> (u16, String) {
    match quay::masque::connect_udp(&s.client, &s.url, host, port, token).await {
        Err(ConnectUdpError::Open(OpenError::Refused {
            status,
            proxy_status,
        })) => (status.as_u16(), proxy_status.unwrap_or_default()),
        Err(e) => panic!("{host}:{port}: {e}"),
        Ok(_) => panic!("{host}:{port}: a tunnel opened"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_inside_targets_bad_requests_and_strangers() {
    let target = udp_echo().await;
    // Defaults: no loopback, private or link-local target, by address or by name.
    let s = setup(true, |_| {});
    for host in [
        "127.0.0.1",
        "localhost",
        "10.0.0.1",
        "169.254.169.254",
        "::1",
        "fe80::1",
    ] {
        let (status, why) = refused(&s, host, target.port(), None).await;
        assert_eq!(status, 403, "{host}");
        assert!(
            why.contains("error=destination_ip_prohibited"),
            "{host}: {why}"
        );
    }
    let (status, why) = refused(&s, "name.invalid", 53, None).await;
    assert_eq!(status, 502);
    assert!(why.contains("error=dns_error"), "{why}");
    // Not a CONNECT-UDP request: an ordinary GET, and a path outside the template.
    let resp = s.client.get(&s.url.to_string()).await.unwrap();
    assert_eq!(resp.status(), 400);
    let req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://{}/elsewhere/", s.url.authority().unwrap()))
        .extension(quay::h3::Protocol("connect-udp".into()))
        .body(())
        .unwrap();
    let stream = s.client.send_connect(req).await.unwrap();
    let err = UdpTunnel::open(stream).await.unwrap_err();
    assert!(
        matches!(err, OpenError::Refused { status, .. } if status == 404),
        "{err}"
    );
    assert!(s.proxy.tunnels().is_empty());

    // A token: missing or wrong is 407, right opens.
    let s = setup(true, |c| {
        allow_loopback(c);
        c.bearer_token = Some("s3cret".into());
    });
    for token in [None, Some("guess")] {
        let (status, why) = refused(&s, "127.0.0.1", target.port(), token).await;
        assert_eq!(status, 407);
        assert!(why.contains("http_request_denied"), "{why}");
    }
    let mut tunnel = quay::masque::connect_udp(
        &s.client,
        &s.url,
        "127.0.0.1",
        target.port(),
        Some("s3cret"),
    )
    .await
    .unwrap();
    assert_eq!(&round_trip(&mut tunnel, b"ok").await[..], b"echo:ok");

    // The tunnel limit.
    let s = setup(true, |c| {
        allow_loopback(c);
        c.max_tunnels = 1;
    });
    let _first = quay::masque::connect_udp(&s.client, &s.url, "127.0.0.1", target.port(), None)
        .await
        .unwrap();
    let (status, why) = refused(&s, "127.0.0.1", target.port(), None).await;
    assert_eq!(status, 503);
    assert!(why.contains("connection_limit_reached"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tunnel_is_closed() {
    let target = udp_echo().await;
    let s = setup(true, |c| {
        allow_loopback(c);
        c.idle_timeout = Duration::from_millis(300);
    });
    let mut tunnel = quay::masque::connect_udp(&s.client, &s.url, "127.0.0.1", target.port(), None)
        .await
        .unwrap();
    assert_eq!(&round_trip(&mut tunnel, b"once").await[..], b"echo:once");
    let end = tokio::time::timeout(Duration::from_secs(5), tunnel.recv())
        .await
        .expect("the proxy ends an idle tunnel");
    assert_eq!(end.unwrap(), None);
    assert!(s.proxy.tunnels().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_can_require_a_client_certificate() {
    let target = udp_echo().await;
    let client_identity = TlsConfig::self_signed(&["client.test"]).unwrap();
    let server_identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    // Clients may come without a certificate (the TLS layer lets them in); the proxy
    // then refuses their tunnels.
    let auth = quay::io::ClientAuth::from_pem(client_identity.cert_pem.as_bytes())
        .unwrap()
        .optional();
    let (proxy, url) = proxy_with(server_identity.config.with_client_auth(auth), true, |c| {
        allow_loopback(c);
        c.require_client_certificate = true;
    });
    let client = |identity: Option<TlsConfig>| {
        let mut b = Client::builder()
            .add_root_certificate_pem(server_identity.cert_pem.as_bytes())
            .unwrap();
        if let Some(id) = identity {
            b = b.identity(id);
        }
        b.build()
    };
    let s = Setup {
        proxy: Arc::clone(&proxy),
        url: url.clone(),
        client: client(None),
    };
    let (status, why) = refused(&s, "127.0.0.1", target.port(), None).await;
    assert_eq!(status, 403);
    assert!(why.contains("http_request_denied"), "{why}");
    let with_cert = client(Some(client_identity.config));
    let mut tunnel = quay::masque::connect_udp(&with_cert, &url, "127.0.0.1", target.port(), None)
        .await
        .unwrap();
    assert_eq!(&round_trip(&mut tunnel, b"mtls").await[..], b"echo:mtls");
}
