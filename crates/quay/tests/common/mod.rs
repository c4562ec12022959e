//! What the facade's test binaries share: a server on loopback, a client connection
//! and a GET.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use quay::h3::{ClientH3Driver, H3Settings, SendRequest, Server, StreamError};
use quay::io::{ClientParams, ClientTlsConfig, ConnectionHandle, TlsConfig};

/// A server on a free port of 127.0.0.1 with a new self-signed certificate for
/// `localhost`, and that certificate (PEM), for clients to trust.
pub(crate) fn loopback_server() -> (Server, String) {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let server = Server::builder()
        .tls(identity.config)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    (server, identity.cert_pem)
}

/// A client of the facade that trusts `cert_pem`.
pub(crate) fn client_trusting(cert_pem: &str) -> quay::h3::Client {
    quay::h3::Client::builder()
        .add_root_certificate_pem(cert_pem.as_bytes())
        .unwrap()
        .build()
}

/// An HTTP/3 connection to `addr` for the name `localhost`, trusting `cert_pem`.
pub(crate) async fn connect(addr: SocketAddr, cert_pem: &str) -> (ConnectionHandle, SendRequest) {
    let mut params = ClientParams::new(&[quay::h3::ALPN]);
    params.tls = ClientTlsConfig::new()
        .add_root_pem(cert_pem.as_bytes())
        .unwrap();
    params.server_name = Some("localhost".into());
    let (driver, send) = ClientH3Driver::new(H3Settings::default());
    let conn = quay::io::connect(addr, params, driver).await.unwrap();
    (conn, send)
}

/// GETs `https://localhost{path}`: the body (at most 64 bytes) of its 200 response.
pub(crate) async fn get(send: &SendRequest, path: &str) -> Result<Bytes, StreamError> {
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(Bytes::new())
        .unwrap();
    let mut resp = send.send(req).await?;
    assert_eq!(resp.status(), 200);
    resp.body_mut().collect(64).await
}
