use std::time::Duration;

use bytes::Bytes;
use quic_app::CloseReason;
use quic_h3::{H3Code, H3Settings, StreamError};

use super::util::{LIMIT, pair, pattern};

#[tokio::test]
async fn goaway_lets_earlier_requests_finish_and_refuses_later_ones_retryably() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let control = requests.control();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // Take the first request, drain, then answer it.
        let first = requests.next().await.unwrap();
        control.goaway().await;
        release_rx.await.unwrap();
        let mut out = first
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        out.send_data(Bytes::from_static(b"first")).await.unwrap();
        out.finish().await.unwrap();
        // No other request reaches the application.
        requests.next().await.is_none()
    });
    let (first, second) = pair
        .run_with(LIMIT, async {
            let req = http::Request::get("https://localhost/1").body(()).unwrap();
            let (body, first) = send.send_request(req).await.unwrap();
            body.finish().await.unwrap();
            // Give the GOAWAY time to arrive: the second request must see it.
            while !send.is_draining() {
                tokio::task::yield_now().await;
            }
            let second = send
                .send(
                    http::Request::get("https://localhost/2")
                        .body(Bytes::new())
                        .unwrap(),
                )
                .await
                .map(|r| r.status());
            release_tx.send(()).unwrap();
            let mut first = first.await.unwrap();
            (first.body_mut().collect(100).await.unwrap(), second)
        })
        .await
        .unwrap();
    assert_eq!(first, "first");
    let err = second.unwrap_err();
    assert_eq!(err, StreamError::Refused);
    assert!(err.is_retryable());
    // Drained, the connection closes with H3_NO_ERROR (the client, done with its
    // last request, or the server, drained, whichever comes first).
    pair.run_until(LIMIT, |p| p.client().close_reason().is_some())
        .await
        .unwrap();
    assert_eq!(
        pair.client().close_reason().and_then(CloseReason::app_code),
        Some(H3Code::NO_ERROR.0)
    );
    // The server's request stream ends when its side has closed too: keep the pair
    // running until then.
    assert!(
        pair.run_with(LIMIT, server).await.unwrap().unwrap(),
        "a request after GOAWAY reached the application"
    );
}

#[tokio::test]
async fn a_slow_reader_keeps_what_the_client_buffers_bounded() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let mut out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        let mut rest = pattern(20 * 1024 * 1024);
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(64 * 1024));
            if out.send_data(chunk).await.is_err() {
                return;
            }
        }
        let _ = out.finish().await;
    });
    let mut resp = pair
        .run_with(LIMIT, async {
            send.send(
                http::Request::get("https://localhost/big")
                    .body(Bytes::new())
                    .unwrap(),
            )
            .await
            .unwrap()
        })
        .await
        .unwrap();
    // The reader takes one chunk, then stalls while the connection keeps running.
    let first = pair
        .run_with(LIMIT, resp.body_mut().chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    let stall = pair
        .run_with(Duration::from_millis(300), std::future::pending::<()>())
        .await;
    assert!(stall.is_err(), "the stall ran its course");
    // What crossed the link is bounded by the flow-control windows (stream window
    // 1 MiB, connection window 2 MiB in this pair) plus the driver's small queue,
    // nowhere near the 20 MiB the server wants to send.
    let received = pair.client().conn().stats().recv_bytes;
    assert!(
        received < 3 * 1024 * 1024,
        "client took in {received} bytes"
    );
    // Reading resumes where it stopped and the whole body arrives.
    let mut total = first.len();
    let total = pair
        .run_with(LIMIT, async {
            while let Some(c) = resp.body_mut().chunk().await.unwrap() {
                total += c.len();
            }
            total
        })
        .await
        .unwrap();
    assert_eq!(total, 20 * 1024 * 1024);
}

#[tokio::test]
async fn dropping_a_response_body_stops_the_server_sending() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let mut out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        let mut sent = 0usize;
        loop {
            match out.send_data(pattern(64 * 1024)).await {
                Ok(()) => sent += 64 * 1024,
                Err(e) => return (e, sent),
            }
        }
    });
    pair.run_with(LIMIT, async {
        let mut resp = send
            .send(
                http::Request::get("https://localhost/endless")
                    .body(Bytes::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let _ = resp.body_mut().chunk().await.unwrap();
        drop(resp);
        while !server.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let (err, sent) = server.await.unwrap();
    assert_eq!(err, StreamError::Cancelled);
    assert!(
        sent < 10 * 1024 * 1024,
        "the server kept sending: {sent} bytes"
    );
}
