//! A handler that answers at once gets its answer into the flight that acknowledges
//! the request: one server packet per small request, not an ACK-only packet first and
//! the response after it. So does one that waits first, in a task of its own, while
//! `coalesce_answers` is on.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use quay::h3::{Body, Server};
use quay::io::{QuicSettings, TlsConfig};

mod common;

const REQUESTS: usize = 100;

#[tokio::test(flavor = "current_thread")]
async fn each_small_answer_shares_a_packet_with_the_acknowledgement_of_its_request() {
    // Answered in the connection's task, and in the request's own after a wait.
    for wait in [false, true] {
        let packets = server_packets(QuicSettings::default(), wait).await;
        // One packet per answer when it carries the acknowledgement; two when an
        // ACK-only packet leaves first. The bound leaves room for flow control updates
        // and the odd ACK that cannot wait.
        assert!(
            packets <= REQUESTS * 3 / 2,
            "{packets} server packets for {REQUESTS} one-packet answers (wait: {wait})"
        );
        assert!(packets >= REQUESTS, "{packets} packets, fewer than answers");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn without_coalescing_the_acknowledgement_leaves_before_an_answer_from_another_task() {
    let mut settings = QuicSettings::default();
    settings.coalesce_answers = false;
    let packets = server_packets(settings.clone(), true).await;
    assert!(
        packets >= REQUESTS * 9 / 5,
        "{packets} server packets for {REQUESTS} answers, each after an ACK"
    );
    // An answer given without waiting is in the connection's task before it sends.
    let packets = server_packets(settings, false).await;
    assert!(
        packets <= REQUESTS * 3 / 2,
        "{packets} server packets for {REQUESTS} answers given at once"
    );
}

/// Serves `REQUESTS` small GETs one at a time with `settings`, by a handler that first
/// yields to the runtime once if `wait`; returns how many packets the server sent for
/// them.
async fn server_packets(settings: QuicSettings, wait: bool) -> usize {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let server = Server::builder()
        .tls(identity.config)
        .settings(settings)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let addr = server.local_addr();
    tokio::spawn(server.serve(move |_req| async move {
        if wait {
            tokio::task::yield_now().await;
        }
        Ok::<_, Infallible>(http::Response::new(Body::from(Bytes::from_static(b"ok"))))
    }));

    let (conn, send) = common::connect(addr, &identity.cert_pem).await;

    let run = async {
        // Warm up: the handshake's tail (HANDSHAKE_DONE, tickets, SETTINGS) is over
        // once one request has been answered.
        get(&send).await;
        let before = conn.stats().await.packets_recv;
        for _ in 0..REQUESTS {
            get(&send).await;
        }
        conn.stats().await.packets_recv - before
    };
    let packets = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("requests finish");
    println!("{packets} server packets for {REQUESTS} requests");
    packets
}

async fn get(send: &quay::h3::SendRequest) {
    let req = http::Request::get("https://localhost/").body(()).unwrap();
    let (body, response) = send.send_request(req).await.unwrap();
    body.finish().await.unwrap();
    let mut resp = response.await.unwrap();
    assert_eq!(resp.status(), 200);
    let got = resp.body_mut().collect(1024).await.unwrap();
    assert_eq!(got, "ok");
}
