//! The server's TLS lifecycle over real sockets: certificates chosen by server name,
//! an identity replaced while a download runs, and client certificates.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quay::h3::{Body, ClientH3Driver, ConnectionInfo, H3Settings, RecvBody, SendRequest, Server};
use quay::io::{
    ClientAuth, ClientParams, ClientTlsConfig, ConnectError, ConnectionHandle, TlsConfig,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// A certificate authority of the test's own.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A leaf for `names`, as (identity, certificate DER).
    fn leaf(&self, names: &[&str]) -> (TlsConfig, Vec<u8>) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0].as_str());
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let identity =
            TlsConfig::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        (identity, cert.der().to_vec())
    }
}

/// A server answering `GET /` with the client certificate it saw (DER, empty for
/// none) and `GET /big` with `BIG` bytes of a counting pattern.
fn start(tls: TlsConfig) -> (Server, CancellationToken) {
    let server = Server::builder()
        .tls(tls)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    (server, CancellationToken::new())
}

const BIG: usize = 8 << 20;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn handle(req: http::Request<RecvBody>) -> Result<http::Response<Body>, Infallible> {
    let body = match req.uri().path() {
        "/big" => Body::from(pattern(BIG)),
        _ => {
            let info = req.extensions().get::<ConnectionInfo>().expect("info");
            Body::from(
                info.peer_certificates()
                    .first()
                    .cloned()
                    .unwrap_or_default(),
            )
        }
    };
    Ok(http::Response::new(body))
}

fn serve(server: Server, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        server
            .with_shutdown_token(stop, Duration::from_secs(5))
            .serve(handle)
            .await
            .unwrap();
    })
}

/// Connects to `addr` asking for `name`, trusting `tls`.
async fn connect(
    addr: SocketAddr,
    name: &str,
    tls: ClientTlsConfig,
) -> Result<(ConnectionHandle, SendRequest), ConnectError> {
    let mut params = ClientParams::new(&[quay::h3::ALPN]);
    params.tls = tls;
    params.server_name = Some(name.into());
    let (driver, send) = ClientH3Driver::new(H3Settings::default());
    let conn = quay::io::connect(addr, params, driver).await?;
    Ok((conn, send))
}

fn trusting(ca: &Ca) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .add_root_pem(ca.pem().as_bytes())
        .unwrap()
}

/// The leaf certificate the server presented on `conn`.
fn served_leaf(conn: &ConnectionHandle) -> Vec<u8> {
    conn.handshake_info()
        .expect("established")
        .peer_certificates[0]
        .clone()
}

async fn get(send: &SendRequest, path: &str) -> Result<Vec<u8>, quay::h3::StreamError> {
    let req = http::Request::get(format!("https://localhost{path}"))
        .body(Bytes::new())
        .unwrap();
    let mut resp = send.send(req).await?;
    let mut out = Vec::new();
    while let Some(chunk) = resp.body_mut().chunk().await? {
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_name_gets_its_own_certificate_and_others_the_default() {
    let ca = Ca::new("sni test CA");
    let (a, a_der) = ca.leaf(&["a.test"]);
    let (b, b_der) = ca.leaf(&["b.test"]);
    let (w, w_der) = ca.leaf(&["*.w.test"]);
    let tls = a
        .with_server_name("B.test", b)
        .with_server_name("*.w.test", w);
    let (server, stop) = start(tls);
    let addr = server.local_addr();
    let task = serve(server, stop.clone());

    for (name, want) in [("a.test", &a_der), ("b.test", &b_der), ("x.w.test", &w_der)] {
        let (conn, send) = connect(addr, name, trusting(&ca)).await.unwrap();
        assert_eq!(&served_leaf(&conn), want, "certificate served for {name}");
        assert_eq!(get(&send, "/").await.unwrap(), b"", "no client certificate");
    }
    // A name with no entry (and a wildcard does not match two labels) gets the
    // default, which a verifying client then refuses for that name.
    for name in ["other.test", "y.x.w.test"] {
        let (conn, _) = connect(addr, name, ClientTlsConfig::insecure())
            .await
            .unwrap();
        assert_eq!(served_leaf(&conn), a_der, "default served for {name}");
        let refused = connect(addr, name, trusting(&ca)).await.err().unwrap();
        assert!(
            matches!(refused, ConnectError::Tls { by_peer: false, .. }),
            "{refused}"
        );
    }
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_new_connections_the_new_certificate_while_a_download_completes() {
    let ca = Ca::new("reload test CA");
    let (old, old_der) = ca.leaf(&["localhost"]);
    let (new, new_der) = ca.leaf(&["localhost"]);
    let (server, stop) = start(old);
    let addr = server.local_addr();
    let reloader = server.tls_reloader();
    let task = serve(server, stop.clone());

    let (conn, send) = connect(addr, "localhost", trusting(&ca)).await.unwrap();
    assert_eq!(served_leaf(&conn), old_der);
    let req = http::Request::get("https://localhost/big")
        .body(Bytes::new())
        .unwrap();
    let mut resp = send.send(req).await.unwrap();
    let mut hash = Sha256::new();
    let mut got = 0;
    // Part of the download, then the reload, then the rest.
    while got < BIG / 4 {
        let chunk = resp.body_mut().chunk().await.unwrap().unwrap();
        got += chunk.len();
        hash.update(&chunk);
    }
    reloader.reload(&new).unwrap();
    let (conn2, send2) = connect(addr, "localhost", trusting(&ca)).await.unwrap();
    assert_eq!(
        served_leaf(&conn2),
        new_der,
        "a new connection gets the new one"
    );
    assert_eq!(get(&send2, "/").await.unwrap(), b"");
    while let Some(chunk) = resp.body_mut().chunk().await.unwrap() {
        got += chunk.len();
        hash.update(&chunk);
    }
    assert_eq!(got, BIG);
    assert_eq!(
        hash.finalize().as_slice(),
        Sha256::digest(pattern(BIG)).as_slice()
    );
    // The old connection still runs on the old certificate.
    assert_eq!(get(&send, "/").await.unwrap(), b"");
    assert_eq!(served_leaf(&conn), old_der);
    stop.cancel();
    task.await.unwrap();
}

/// The TLS alert that ended `conn` or its handshake, by code (RFC 8446 §6).
async fn alert_of(result: Result<(ConnectionHandle, SendRequest), ConnectError>) -> String {
    match result {
        Err(ConnectError::Tls { alert, by_peer, .. }) => {
            assert!(by_peer, "the server refused");
            alert.to_owned()
        }
        Err(e) => panic!("unexpected error {e}"),
        // TLS 1.3: the client is done before the server has checked its
        // certificate; the server's verdict comes as the connection's close.
        Ok((conn, send)) => {
            let _ = get(&send, "/").await;
            let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
                .await
                .expect("the server closes the connection");
            match &closed.reason {
                quay::app::CloseReason::Peer {
                    app: false, code, ..
                } if (0x100..0x200).contains(code) => format!("alert {}", code - 0x100),
                other => panic!("unexpected close {other}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_verified_and_handed_to_the_handler() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let stranger_ca = Ca::new("stranger CA");
    let (identity, _) = server_ca.leaf(&["localhost"]);
    let auth = ClientAuth::from_pem(client_ca.pem().as_bytes()).unwrap();
    let (server, stop) = start(identity.with_client_auth(auth));
    let addr = server.local_addr();
    let task = serve(server, stop.clone());

    let (me, me_der) = client_ca.leaf(&["client.test"]);
    let (conn, send) = connect(addr, "localhost", trusting(&server_ca).with_identity(me))
        .await
        .unwrap();
    assert_eq!(get(&send, "/").await.unwrap(), me_der, "the handler saw it");
    conn.close(0, b"done").await;

    // The paved client presents one the same way.
    let (me_too, me_too_der) = client_ca.leaf(&["client2.test"]);
    let client = quay::h3::Client::builder()
        .add_root_certificate_pem(server_ca.pem().as_bytes())
        .unwrap()
        .identity(me_too)
        .build();
    let mut resp = client
        .get(&format!("https://localhost:{}/", addr.port()))
        .await
        .unwrap();
    assert_eq!(resp.body_mut().collect(1 << 16).await.unwrap(), me_too_der);

    let none = connect(addr, "localhost", trusting(&server_ca)).await;
    let alert = alert_of(none).await;
    assert!(
        alert == "certificate_required" || alert == "alert 116",
        "{alert}"
    );

    let (stranger, _) = stranger_ca.leaf(&["client.test"]);
    let wrong = connect(
        addr,
        "localhost",
        trusting(&server_ca).with_identity(stranger),
    )
    .await;
    let alert = alert_of(wrong).await;
    assert!(alert == "unknown_ca" || alert == "alert 48", "{alert}");
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_client_certificates_let_clients_without_one_in() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let (identity, _) = server_ca.leaf(&["localhost"]);
    let auth = ClientAuth::from_pem(client_ca.pem().as_bytes())
        .unwrap()
        .optional();
    let (server, stop) = start(identity.with_client_auth(auth));
    let addr = server.local_addr();
    let task = serve(server, stop.clone());

    let (_conn, send) = connect(addr, "localhost", trusting(&server_ca))
        .await
        .unwrap();
    assert_eq!(get(&send, "/").await.unwrap(), b"");
    let (me, me_der) = client_ca.leaf(&["client.test"]);
    let (_conn, send) = connect(addr, "localhost", trusting(&server_ca).with_identity(me))
        .await
        .unwrap();
    assert_eq!(get(&send, "/").await.unwrap(), me_der);
    stop.cancel();
    task.await.unwrap();
}
