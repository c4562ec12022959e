//! What the facade's test binaries share: a client connection and a GET.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::Bytes;
use quay::h3::{ClientH3Driver, H3Settings, SendRequest, StreamError};
use quay::io::{ClientParams, ClientTlsConfig, ConnectionHandle};

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
