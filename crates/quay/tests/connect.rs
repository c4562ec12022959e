//! Extended CONNECT on the paved path: a handler takes the stream's tunnel, the client
//! opens one with `send_connect`, and HTTP Datagrams flow both ways, in QUIC DATAGRAM
//! frames or in capsules.

use std::convert::Infallible;

use bytes::Bytes;
use quay::h3::{
    Body, Client, ConnectUpgrade, DatagramTunnel, H3Settings, Protocol, RecvBody, Server,
};
use quay::io::{ClientTlsConfig, QuicSettings, TlsConfig};

/// Echoes each HTTP Datagram of a `connect-udp` request with a prefix; refuses other
/// requests with 400.
async fn echo(req: http::Request<RecvBody>) -> Result<http::Response<Body>, Infallible> {
    let on = req
        .extensions()
        .get::<ConnectUpgrade>()
        .and_then(ConnectUpgrade::take);
    let Some(on) = on else {
        let mut resp = http::Response::new(Body::from("not a CONNECT"));
        *resp.status_mut() = http::StatusCode::BAD_REQUEST;
        return Ok(resp);
    };
    let recv = req.into_body();
    tokio::spawn(async move {
        let mut tunnel = on.tunnel(recv).await.unwrap();
        while let Ok(Some(d)) = tunnel.recv().await {
            let mut back = b"echo:".to_vec();
            back.extend_from_slice(&d);
            if tunnel.send(back.into()).await.is_err() {
                return;
            }
        }
        let _ = tunnel.close().await;
    });
    Ok(http::Response::builder()
        .header("capsule-protocol", "?1")
        .body(Body::from("this body is not sent"))
        .unwrap())
}

fn connect_udp(port: u16) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!(
            "https://localhost:{port}/.well-known/masque/udp/192.0.2.1/53/"
        ))
        .extension(Protocol("connect-udp".into()))
        .header("capsule-protocol", "?1")
        .body(())
        .unwrap()
}

/// A server of `echo` with extended CONNECT, QUIC datagrams as asked; its port and
/// CA.
fn serve(quic_datagrams: bool) -> (u16, ClientTlsConfig) {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let mut h3 = H3Settings::default();
    h3.enable_extended_connect = true;
    let mut settings = QuicSettings::default();
    settings.enable_datagrams = quic_datagrams;
    let server = Server::builder()
        .tls(identity.config)
        .h3_settings(h3)
        .settings(settings)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.serve(echo));
    let ca = ClientTlsConfig::new()
        .add_root_pem(identity.cert_pem.as_bytes())
        .unwrap();
    (port, ca)
}

/// Each direction carries HTTP Datagrams in QUIC DATAGRAM frames when its receiver
/// enabled them, and in capsules on the stream otherwise: with both, with the client's
/// off, with the server's off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_takes_an_extended_connect_and_datagrams_flow_both_ways() {
    for (server_dgrams, client_dgrams) in [(true, true), (true, false), (false, true)] {
        let (port, ca) = serve(server_dgrams);
        let mut client_settings = QuicSettings::default();
        client_settings.enable_datagrams = client_dgrams;
        let client = Client::builder().tls(ca).settings(client_settings).build();
        let c = client.send_connect(connect_udp(port)).await.unwrap();
        let resp = c.response.await.unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(resp.headers()["capsule-protocol"], "?1");
        let mut tunnel = DatagramTunnel::new(c.datagrams, resp.into_body(), c.send);
        // The client sends QUIC datagrams only where both enabled them.
        let native = server_dgrams && client_dgrams;
        assert_eq!(
            tunnel.uses_capsules(),
            !native,
            "{server_dgrams} {client_dgrams}"
        );
        for i in 0..20u32 {
            let payload = Bytes::from(format!("{server_dgrams} {client_dgrams} {i}"));
            // A QUIC datagram may be lost even on loopback: sent again until echoed.
            let echoed = loop {
                tunnel.send(payload.clone()).await.unwrap();
                let wait = std::time::Duration::from_secs(1);
                match tokio::time::timeout(wait, tunnel.recv()).await {
                    Ok(r) => break r.unwrap().unwrap(),
                    Err(_) if native => continue,
                    Err(_) => panic!("a capsule was lost"),
                }
            };
            let mut want = b"echo:".to_vec();
            want.extend_from_slice(&payload);
            assert_eq!(echoed, Bytes::from(want));
        }
        tunnel.close().await.unwrap();
        // A plain request on the same server is an ordinary one.
        let resp = client
            .get(&format!("https://localhost:{port}/"))
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::BAD_REQUEST);
    }
}

/// The same through `serve_service`: a tower service sees the `ConnectUpgrade` too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tower_service_takes_an_extended_connect() {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let mut h3 = H3Settings::default();
    h3.enable_extended_connect = true;
    let server = Server::builder()
        .tls(identity.config)
        .h3_settings(h3)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.serve_service(tower::service_fn(echo)));
    let client = Client::builder()
        .tls(
            ClientTlsConfig::new()
                .add_root_pem(identity.cert_pem.as_bytes())
                .unwrap(),
        )
        .build();
    let c = client.send_connect(connect_udp(port)).await.unwrap();
    let resp = c.response.await.unwrap();
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut tunnel = DatagramTunnel::new(c.datagrams, resp.into_body(), c.send);
    assert!(tunnel.uses_capsules());
    tunnel.send(Bytes::from_static(b"tower")).await.unwrap();
    assert_eq!(
        tunnel.recv().await.unwrap().unwrap(),
        Bytes::from_static(b"echo:tower")
    );
    tunnel.close().await.unwrap();
}
