//! A listener's shutdown closes a connection only once what it sent has been
//! acknowledged: a response whose tail was lost is retransmitted, not cut off.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay::h3::{H3Code, H3Settings, ServerH3Driver};
use quay::io::{ServerParams, TlsConfig};

mod common;

/// Forwards datagrams between one client and a server; while `blackhole` is in the
/// future, drops what the server sends.
struct Relay {
    addr: SocketAddr,
    blackhole: Arc<Mutex<Option<Instant>>>,
}

async fn relay(server: SocketAddr) -> Relay {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    back.connect(server).await.unwrap();
    let addr = front.local_addr().unwrap();
    let blackhole = Arc::new(Mutex::new(None::<Instant>));
    let cut = Arc::clone(&blackhole);
    tokio::spawn(async move {
        let mut client = None;
        let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((len, from)) = r else { return };
                    client = Some(from);
                    let _ = back.send(&a[..len]).await;
                }
                r = back.recv(&mut b) => {
                    let Ok(len) = r else { return };
                    let dropped = cut.lock().unwrap().is_some_and(|t| Instant::now() < t);
                    if let (false, Some(to)) = (dropped, client) {
                        let _ = front.send_to(&b[..len], to).await;
                    }
                }
            }
        }
    });
    Relay { addr, blackhole }
}

fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_shutdown_waits_for_the_last_response_bytes_to_be_acknowledged() {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let params = ServerParams::new(identity.config, &[quay::h3::ALPN]);
    let mut listener = quay::io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let relay = relay(listener.local_addr()).await;
    let body = pattern(1 << 20);
    let served = body.clone();
    let cut = Arc::clone(&relay.blackhole);
    let server = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap();
        let (driver, mut requests) = ServerH3Driver::new(H3Settings::default());
        let _conn = incoming.start(driver);
        let req = requests.next().await.unwrap();
        let mut out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        for chunk in served.chunks(64 * 1024) {
            out.send_data(served.slice_ref(chunk)).await.unwrap();
        }
        out.finish().await.unwrap();
        // The response's tail is lost, then the server shuts down at once.
        *cut.lock().unwrap() = Some(Instant::now() + Duration::from_millis(150));
        listener
            .shutdown(
                H3Code::NO_ERROR.0,
                b"shutting down",
                Duration::from_secs(10),
            )
            .await
    });

    let (_conn, send) = common::connect(relay.addr, &identity.cert_pem).await;
    let req = http::Request::get("https://localhost/big")
        .body(Bytes::new())
        .unwrap();
    let mut resp = send.send(req).await.unwrap();
    let mut got = Vec::new();
    let result = loop {
        match resp.body_mut().chunk().await {
            Ok(Some(c)) => got.extend_from_slice(&c),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(
        result.is_ok(),
        "the body ended in {result:?} after {} of {} bytes",
        got.len(),
        body.len()
    );
    assert!(got == body[..], "the body arrived changed");
    assert!(server.await.unwrap(), "the shutdown was not graceful");
}
