use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use quic_app::testing::{Pair, PairConfig};
use quic_app::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};
use quic_h3::{H3Code, H3Settings, StreamError};

use super::browser_fields::BROWSER_FIELDS;
use super::util::{LIMIT, pair, pattern, read_to_end, sha256};

/// Serves every request by echoing its body back, with the request's trailers (if
/// any) returned as response trailers.
async fn echo_server(mut requests: quic_h3::RequestStream) {
    while let Some(req) = requests.next().await {
        tokio::spawn(async move {
            let (parts, mut body) = req.request.into_parts();
            let resp = http::Response::builder()
                .status(StatusCode::OK)
                .header("x-method", parts.method.as_str())
                .header("x-path", parts.uri.path())
                .body(())
                .unwrap();
            let mut out = req.responder.send_response(resp).await?;
            while let Some(chunk) = body.chunk().await? {
                out.send_data(chunk).await?;
            }
            match body.trailers().await? {
                Some(t) => out.send_trailers(t).await,
                None => out.finish().await,
            }
        });
    }
}

#[tokio::test]
async fn a_request_and_its_response_carry_method_uri_headers_and_body() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let mut requests = requests;
        let req = requests.next().await.unwrap();
        let (parts, mut body) = req.request.into_parts();
        assert_eq!(parts.method, Method::PUT);
        assert_eq!(parts.uri.scheme_str(), Some("https"));
        assert_eq!(parts.uri.authority().unwrap().as_str(), "localhost:4433");
        assert_eq!(parts.uri.path_and_query().unwrap().as_str(), "/a/b?x=1");
        assert_eq!(parts.headers["x-custom"], "yes");
        assert_eq!(body.collect(1024).await.unwrap(), "request body");
        let resp = http::Response::builder()
            .status(StatusCode::CREATED)
            .header("x-answer", "42")
            .body(())
            .unwrap();
        let mut out = req.responder.send_response(resp).await.unwrap();
        out.send_data(Bytes::from_static(b"created")).await.unwrap();
        out.finish().await.unwrap();
    });
    let resp = pair
        .run_with(LIMIT, async {
            let req = http::Request::put("https://localhost:4433/a/b?x=1")
                .header("x-custom", "yes")
                .body(Bytes::from_static(b"request body"))
                .unwrap();
            let mut resp = send.send(req).await.unwrap();
            let body = resp.body_mut().collect(1024).await.unwrap();
            (resp.status(), resp.headers().clone(), body)
        })
        .await
        .unwrap();
    assert_eq!(resp.0, StatusCode::CREATED);
    assert_eq!(resp.1["x-answer"], "42");
    assert_eq!(resp.2, "created");
    server.await.unwrap();
}

#[tokio::test]
async fn a_whole_response_gains_the_content_length_of_its_body() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    tokio::spawn(async move {
        let mut requests = requests;
        while let Some(req) = requests.next().await {
            let mut resp = http::Response::new(Bytes::new());
            match req.request.uri().path() {
                "/hello" => *resp.body_mut() = Bytes::from_static(b"hello"),
                "/own" => {
                    *resp.body_mut() = Bytes::from_static(b"hello");
                    resp.headers_mut()
                        .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("5"));
                }
                "/no-content" => *resp.status_mut() = StatusCode::NO_CONTENT,
                "/not-modified" => *resp.status_mut() = StatusCode::NOT_MODIFIED,
                _ => {}
            }
            if req.request.method() == Method::HEAD {
                resp.body_mut().clear();
            }
            req.responder.send_whole_response(resp).await.unwrap();
        }
    });
    let got = pair
        .run_with(LIMIT, async {
            let mut out = Vec::new();
            for (method, path) in [
                (Method::GET, "/hello"),
                (Method::GET, "/empty"),
                (Method::GET, "/own"),
                (Method::GET, "/no-content"),
                (Method::GET, "/not-modified"),
                (Method::HEAD, "/hello"),
            ] {
                let req = http::Request::builder()
                    .method(method.clone())
                    .uri(format!("https://localhost{path}"))
                    .body(Bytes::new())
                    .unwrap();
                let mut resp = send.send(req).await.unwrap();
                let lengths: Vec<HeaderValue> = resp
                    .headers()
                    .get_all(http::header::CONTENT_LENGTH)
                    .iter()
                    .cloned()
                    .collect();
                let body = resp.body_mut().collect(1024).await.unwrap();
                out.push((format!("{method} {path}"), lengths, body));
            }
            out
        })
        .await
        .unwrap();
    let expect: [(&str, &[&str], &[u8]); 6] = [
        ("GET /hello", &["5"], b"hello"),
        ("GET /empty", &["0"], b""),
        // The handler's own is kept, not repeated.
        ("GET /own", &["5"], b"hello"),
        ("GET /no-content", &[], b""),
        ("GET /not-modified", &[], b""),
        // After HEAD a content-length counts the body GET would have: none is made up.
        ("HEAD /hello", &[], b""),
    ];
    for ((what, lengths, body), (want, want_lengths, want_body)) in got.iter().zip(expect) {
        assert_eq!(what, want);
        assert_eq!(lengths, want_lengths, "{what}");
        assert_eq!(body, want_body, "{what}");
    }
}

/// A response body of given frames: the first once `gate` opens (if there is one),
/// and an error after the last if `fail`.
struct Frames {
    gate: Option<tokio::sync::oneshot::Receiver<()>>,
    frames: std::collections::VecDeque<http_body::Frame<Bytes>>,
    fail: bool,
}

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if let Some(gate) = self.gate.as_mut() {
            let _ = std::task::ready!(std::future::Future::poll(std::pin::Pin::new(gate), cx));
            self.gate = None;
        }
        std::task::Poll::Ready(match self.frames.pop_front() {
            Some(frame) => Some(Ok(frame)),
            None if std::mem::take(&mut self.fail) => Some(Err(std::io::Error::other("failed"))),
            None => None,
        })
    }
}

#[tokio::test]
async fn a_body_response_streams_its_frames_sends_its_head_before_a_late_body_and_resets_on_failure()
 {
    let (mut pair, send, requests) = pair(H3Settings::default());
    let (open, gate) = tokio::sync::oneshot::channel();
    let (outcomes_tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut requests = requests;
        let mut gate = Some(gate);
        while let Some(req) = requests.next().await {
            let path = req.request.uri().path().to_owned();
            let data = |s: &'static str| http_body::Frame::data(Bytes::from_static(s.as_bytes()));
            let mut trailers = HeaderMap::new();
            trailers.insert("x-sum", HeaderValue::from_static("ab"));
            let (frames, fail, gate, status) = match path.as_str() {
                "/trailers" => (
                    vec![
                        data("a"),
                        data(""),
                        data("b"),
                        http_body::Frame::trailers(trailers),
                    ],
                    false,
                    None,
                    200,
                ),
                "/fails" => (vec![data("a")], true, None, 200),
                "/late" => (vec![data("late")], false, gate.take(), 200),
                _ => (vec![data("early")], false, None, 103),
            };
            let body = Frames {
                gate,
                frames: frames.into(),
                fail,
            };
            let resp = http::Response::builder().status(status).body(body).unwrap();
            let sent = req.responder.send_body_response(resp);
            let outcomes_tx = outcomes_tx.clone();
            tokio::spawn(async move {
                let _ = outcomes_tx.send((path, sent.await));
            });
        }
    });
    let got = pair
        .run_with(LIMIT, async {
            let get = |path: &str| {
                send.send(
                    http::Request::get(format!("https://localhost{path}"))
                        .body(Bytes::new())
                        .unwrap(),
                )
            };
            let mut resp = get("/trailers").await.unwrap();
            // A body of no stated size: no content-length.
            assert!(!resp.headers().contains_key(http::header::CONTENT_LENGTH));
            let body = resp.body_mut().collect(64).await.unwrap();
            let trailers = resp.body_mut().trailers().await.unwrap().unwrap();
            let failed = match get("/fails").await {
                Ok(mut resp) => resp.body_mut().collect(64).await.map(|b| b.to_vec()),
                Err(e) => Err(e),
            };
            // The head of a body that is not ready arrives all the same.
            let mut late = get("/late").await.unwrap();
            open.send(()).unwrap();
            let late_body = late.body_mut().collect(64).await.unwrap();
            let early = get("/early").await.map(|r| r.status());
            (body, trailers, failed, late.status(), late_body, early)
        })
        .await
        .unwrap();
    let (body, trailers, failed, late_status, late_body, early) = got;
    assert_eq!(body, "ab");
    assert_eq!(trailers["x-sum"], "ab");
    assert!(matches!(failed, Err(StreamError::Reset(_))), "{failed:?}");
    assert_eq!(
        (late_status, &late_body[..]),
        (StatusCode::OK, &b"late"[..])
    );
    assert!(early.is_err(), "{early:?}");
    let mut by_path = std::collections::HashMap::new();
    while by_path.len() < 4 {
        let (path, outcome) = outcomes.recv().await.unwrap();
        by_path.insert(path, outcome);
    }
    assert_eq!(by_path["/trailers"], Ok(2));
    assert_eq!(by_path["/late"], Ok(4));
    assert_eq!(by_path["/fails"], Err(StreamError::Cancelled));
    assert!(matches!(by_path["/early"], Err(StreamError::Malformed(_))));
}

#[tokio::test]
async fn whole_responses_arrive_intact_large_or_empty() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    // Larger than the stream's flow control window: the body leaves in parts, the
    // end with the last.
    let payload = pattern(3 * 1024 * 1024);
    let expected = sha256(&payload);
    let body = payload;
    tokio::spawn(async move {
        let mut requests = requests;
        while let Some(req) = requests.next().await {
            let body = body.clone();
            tokio::spawn(async move {
                let path = req.request.uri().path().to_owned();
                if path == "/1xx" {
                    let early = http::Response::builder().status(103).body(Bytes::new());
                    let refused = req.responder.send_whole_response(early.unwrap()).await;
                    assert!(matches!(refused, Err(StreamError::Malformed(_))));
                    return;
                }
                let body = if path == "/large" { body } else { Bytes::new() };
                let resp = http::Response::builder()
                    .status(StatusCode::ACCEPTED)
                    .header("x-path", path)
                    .body(body)
                    .unwrap();
                req.responder.send_whole_response(resp).await.unwrap();
            });
        }
    });
    let got = pair
        .run_with(LIMIT, async {
            let mut out = Vec::new();
            for path in ["/large", "/empty"] {
                let req = http::Request::get(format!("https://localhost{path}"))
                    .body(Bytes::new())
                    .unwrap();
                let mut resp = send.send(req).await.unwrap();
                let body = resp.body_mut().collect(8 * 1024 * 1024).await.unwrap();
                out.push((resp.status(), resp.headers()["x-path"].clone(), body));
            }
            let req = http::Request::get("https://localhost/1xx").body(Bytes::new());
            let refused = send.send(req.unwrap()).await;
            (out, refused.map(|r| r.status()))
        })
        .await
        .unwrap();
    let (out, refused) = got;
    assert_eq!(out[0].0, StatusCode::ACCEPTED);
    assert_eq!(out[0].1, "/large");
    assert_eq!(sha256(&out[0].2), expected);
    assert_eq!(out[1].0, StatusCode::ACCEPTED);
    assert_eq!(out[1].1, "/empty");
    assert!(out[1].2.is_empty());
    // The refused whole response dropped its responder: the stream is reset.
    assert!(refused.is_err(), "{refused:?}");
}

#[tokio::test]
async fn ten_mib_bodies_cross_both_ways_intact() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    tokio::spawn(echo_server(requests));
    let payload = pattern(10 * 1024 * 1024);
    let expected = sha256(&payload);
    let (status, got) = pair
        .run_with(LIMIT, async {
            let req = http::Request::post("https://localhost/echo")
                .body(())
                .unwrap();
            let (mut body, response) = send.send_request(req).await.unwrap();
            // Upload in 64 KiB chunks while the response streams back.
            let upload = async {
                let mut rest = payload.clone();
                while !rest.is_empty() {
                    let chunk = rest.split_to(rest.len().min(64 * 1024));
                    body.send_data(chunk).await.unwrap();
                }
                body.finish().await.unwrap();
            };
            let download = async {
                let mut resp = response.await.unwrap();
                let mut got = Vec::with_capacity(payload.len());
                while let Some(c) = resp.body_mut().chunk().await.unwrap() {
                    got.extend_from_slice(&c);
                }
                (resp.status(), got)
            };
            tokio::join!(upload, download).1
        })
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got.len(), 10 * 1024 * 1024);
    assert_eq!(sha256(&got), expected);
}

#[tokio::test]
async fn trailers_travel_both_ways() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    tokio::spawn(echo_server(requests));
    let (data, trailers) = pair
        .run_with(LIMIT, async {
            let req = http::Request::post("https://localhost/echo")
                .body(())
                .unwrap();
            let (mut body, response) = send.send_request(req).await.unwrap();
            body.send_data(Bytes::from_static(b"payload"))
                .await
                .unwrap();
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            t.insert("x-checksum", HeaderValue::from_static("abc"));
            body.send_trailers(t).await.unwrap();
            let mut resp = response.await.unwrap();
            let mut data = Vec::new();
            while let Some(c) = resp.body_mut().chunk().await.unwrap() {
                data.extend_from_slice(&c);
            }
            (data, resp.body_mut().trailers().await.unwrap())
        })
        .await
        .unwrap();
    assert_eq!(data, b"payload");
    let trailers = trailers.expect("trailers arrived");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-checksum"], "abc");
}

#[tokio::test]
async fn a_client_dropping_its_body_mid_way_is_seen_as_a_reset_by_the_server() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        read_to_end(&mut req.request.into_body()).await
    });
    pair.run_with(LIMIT, async {
        let req = http::Request::post("https://localhost/upload")
            .body(())
            .unwrap();
        let (mut body, _response) = send.send_request(req).await.unwrap();
        body.send_data(pattern(100_000)).await.unwrap();
        drop(body);
        // Keep the connection going until the server has seen the end of it.
        while !server.is_finished() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    let (err, _got) = server
        .await
        .unwrap()
        .expect_err("a cancelled body must not look complete");
    assert_eq!(err, StreamError::Reset(H3Code::REQUEST_CANCELLED));
}

#[tokio::test]
async fn a_body_that_arrives_with_its_head_is_handed_over_whole() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let (_, mut body) = req.request.into_parts();
        // Whole: its size is known before a read, and it ends with its one chunk.
        let hint = http_body::Body::size_hint(&body).exact();
        let first = body.chunk().await.unwrap();
        let ended = http_body::Body::is_end_stream(&body);
        let rest = body.chunk().await.unwrap();
        req.responder
            .send_whole_response(http::Response::new(Bytes::from_static(b"ok")))
            .await
            .unwrap();
        (hint, first, ended, rest)
    });
    let resp = pair
        .run_with(LIMIT, async {
            let req = http::Request::post("https://localhost/small")
                .body(Bytes::from_static(b"a body in the head's packet"))
                .unwrap();
            send.send(req).await.unwrap()
        })
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (hint, first, ended, rest) = server.await.unwrap();
    assert_eq!(hint, Some(27));
    assert_eq!(first.as_deref(), Some(&b"a body in the head's packet"[..]));
    assert!(ended);
    assert_eq!(rest, None);
}

#[tokio::test]
async fn a_handler_dropping_a_request_body_stops_the_client_sending_it() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let (_, mut body) = req.request.into_parts();
        let first = body.chunk().await.unwrap().expect("a first chunk").len();
        // Not interested in the rest: the client is asked to stop (STOP_SENDING), and
        // the answer goes out all the same.
        drop(body);
        let out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        out.finish().await.unwrap();
        first
    });
    const OFFERED: usize = 64 * 1024 * 1024;
    let (sent, failed, status) = pair
        .run_with(LIMIT, async {
            let req = http::Request::post("https://localhost/upload")
                .body(())
                .unwrap();
            let (mut body, response) = send.send_request(req).await.unwrap();
            let mut sent = 0;
            let mut failed = None;
            while sent < OFFERED {
                if let Err(e) = body.send_data(pattern(64 * 1024)).await {
                    failed = Some(e);
                    break;
                }
                sent += 64 * 1024;
            }
            (sent, failed, response.await.unwrap().status())
        })
        .await
        .unwrap();
    let first = server.await.unwrap();
    assert!(first > 0);
    assert_eq!(status, StatusCode::OK);
    // Without the STOP_SENDING the server's flow control would hold the body, and
    // the client's sends would wait until the connection timed out (and then fail
    // as `ConnectionClosed`).
    assert_eq!(failed, Some(StreamError::Cancelled), "after {sent} bytes");
    assert!(sent < OFFERED, "{sent} bytes sent");
}

#[tokio::test]
async fn a_server_dropping_its_body_mid_way_is_seen_as_a_reset_by_the_client() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let mut out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        out.send_data(pattern(50_000)).await.unwrap();
        drop(out);
    });
    let result = pair
        .run_with(LIMIT, async {
            let req = http::Request::get("https://localhost/")
                .body(Bytes::new())
                .unwrap();
            let mut resp = send.send(req).await.unwrap();
            let mut got = 0;
            loop {
                match resp.body_mut().chunk().await {
                    Ok(Some(c)) => got += c.len(),
                    Ok(None) => return Ok(got),
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(result, Err(StreamError::Reset(H3Code::REQUEST_CANCELLED)));
}

#[tokio::test]
async fn a_thousand_sequential_and_a_hundred_concurrent_requests_on_one_connection() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    tokio::spawn(echo_server(requests));
    let (sequential, concurrent) = pair
        .run_with(LIMIT, async {
            let mut sequential = 0;
            for i in 0..1000 {
                let body = Bytes::from(format!("request {i}"));
                let req = http::Request::post(format!("https://localhost/{i}"))
                    .body(body.clone())
                    .unwrap();
                let mut resp = send.send(req).await.unwrap();
                assert_eq!(resp.headers()["x-path"], format!("/{i}").as_str());
                assert_eq!(resp.body_mut().collect(1024).await.unwrap(), body);
                sequential += 1;
            }
            let mut tasks = Vec::new();
            for i in 0..100 {
                let send = send.clone();
                tasks.push(tokio::spawn(async move {
                    let body = pattern(1000 + i);
                    let req = http::Request::post("https://localhost/c")
                        .body(body.clone())
                        .unwrap();
                    let mut resp = send.send(req).await.unwrap();
                    resp.body_mut().collect(10_000).await.unwrap() == body
                }));
            }
            let mut concurrent = 0;
            for t in tasks {
                if t.await.unwrap() {
                    concurrent += 1;
                }
            }
            (sequential, concurrent)
        })
        .await
        .unwrap();
    assert_eq!(sequential, 1000);
    assert_eq!(concurrent, 100);
}

#[tokio::test]
async fn a_client_does_not_send_headers_larger_than_the_server_accepts() {
    let mut settings = H3Settings::default();
    settings.max_field_section_size = 1024;
    let (mut pair, send, requests) = pair(settings);
    tokio::spawn(echo_server(requests));
    let (small, big) = pair
        .run_with(LIMIT, async {
            // The first exchange makes sure the server's SETTINGS have arrived.
            let small = send
                .send(
                    http::Request::get("https://localhost/")
                        .body(Bytes::new())
                        .unwrap(),
                )
                .await
                .map(|r| r.status());
            let req = http::Request::get("https://localhost/")
                .header("x-big", "a".repeat(4096))
                .body(Bytes::new())
                .unwrap();
            (small, send.send(req).await.map(|r| r.status()))
        })
        .await
        .unwrap();
    assert_eq!(small, Ok(StatusCode::OK));
    match big {
        Err(StreamError::HeadersTooLarge { size, limit }) => {
            assert_eq!(limit, 1024);
            assert!(size > 4096, "{size}");
        }
        other => panic!("unexpected: {other:?}"),
    }
}

/// A bare quiche HTTP/3 client that sends one request with an oversized header
/// section, ignoring the server's limit.
struct OversizedClient {
    h3: Option<quiche::h3::Connection>,
}

impl ApplicationOverQuic for OversizedClient {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        let cfg = quiche::h3::Config::new().unwrap();
        let mut h3 = quiche::h3::Connection::with_transport(conn, &cfg).unwrap();
        let big = "a".repeat(4096);
        let fields = [
            quiche::h3::Header::new(b":method", b"GET"),
            quiche::h3::Header::new(b":scheme", b"https"),
            quiche::h3::Header::new(b":authority", b"localhost"),
            quiche::h3::Header::new(b":path", b"/"),
            quiche::h3::Header::new(b"x-big", big.as_bytes()),
        ];
        h3.send_request(conn, &fields, true).unwrap();
        self.h3 = Some(h3);
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        if let Some(h3) = self.h3.as_mut() {
            while h3.poll(conn).is_ok() {}
        }
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

#[tokio::test]
async fn an_oversized_header_list_from_a_peer_is_refused_with_excessive_load() {
    let mut settings = H3Settings::default();
    settings.max_field_section_size = 1024;
    let (server, requests) = quic_h3::ServerH3Driver::new(settings);
    tokio::spawn(echo_server(requests));
    let mut pair = Pair::new(
        PairConfig::new(quic_h3::ALPN),
        OversizedClient { h3: None },
        server,
    )
    .unwrap();
    pair.run_until(LIMIT, |p| p.client().close_reason().is_some())
        .await
        .unwrap();
    // RFC 9114 §4.2.2 / §8.1: quiche treats it as H3_EXCESSIVE_LOAD on the connection.
    assert_eq!(
        pair.client().close_reason().and_then(CloseReason::app_code),
        Some(H3Code::EXCESSIVE_LOAD.0)
    );
}

#[tokio::test]
async fn a_request_body_over_the_limit_is_refused_and_can_be_answered() {
    let mut settings = H3Settings::default();
    settings.max_request_body_size = Some(10_000);
    let (mut pair, send, mut requests) = pair(settings);
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let (err, got) = read_to_end(&mut req.request.into_body())
            .await
            .expect_err("a body over the limit must not end normally");
        let mut resp = http::Response::new(());
        *resp.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
        req.responder
            .send_response(resp)
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        (err, got)
    });
    let status = pair
        .run_with(LIMIT, async {
            let req = http::Request::post("https://localhost/upload")
                .body(())
                .unwrap();
            let (mut body, response) = send.send_request(req).await.unwrap();
            // The server stops reading: these may fail, the response still comes.
            let _ = body.send_data(pattern(50_000)).await;
            let _ = body.finish().await;
            response.await.unwrap().status()
        })
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (err, got) = server.await.unwrap();
    assert_eq!(err, StreamError::BodyTooLarge { limit: 10_000 });
    assert!(got <= 10_000, "{got} bytes reached the handler");
}

#[tokio::test]
async fn a_connection_lost_while_a_body_queue_is_full_reads_as_an_error_not_an_end() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let (got_request, request_seen) = tokio::sync::oneshot::channel();
    let (go, read_now) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let _ = got_request.send(());
        // Read nothing until the connection is gone: the body's queue fills up.
        let _ = read_now.await;
        read_to_end(&mut req.request.into_body()).await
    });
    pair.run_with(LIMIT, async {
        let req = http::Request::post("https://localhost/upload")
            .body(())
            .unwrap();
        let (mut body, _response) = send.send_request(req).await.unwrap();
        body.send_data(pattern(512 * 1024)).await.unwrap();
        request_seen.await.unwrap();
        // Let the body arrive until flow control or the full queue holds it.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        drop(body);
    })
    .await
    .unwrap();
    pair.client_mut()
        .conn_mut()
        .close(true, 0x100, b"gone")
        .unwrap();
    pair.run_until_closed(LIMIT).await.unwrap();
    go.send(()).unwrap();
    let (err, got) = server
        .await
        .unwrap()
        .expect_err("a body cut by a lost connection must not look complete");
    assert_eq!(err, StreamError::ConnectionClosed);
    assert!(got > 0 && got < 512 * 1024, "{got} bytes before the error");
}

/// Body chunks are read into memory that later chunks reuse once it is free: a chunk
/// a handler keeps stays as it arrived while megabytes of other bodies are read
/// after it.
#[tokio::test]
async fn a_body_chunk_kept_by_its_reader_is_not_overwritten_by_later_reads() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let first_body = Bytes::from(vec![0xa5; 3000]);
    let (kept_tx, kept_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn({
        let first_body = first_body.clone();
        async move {
            // The first request's body: read, kept, not answered yet.
            let first = requests.next().await.unwrap();
            let (_, mut body) = first.request.into_parts();
            let mut kept = Vec::new();
            while let Some(c) = body.chunk().await.unwrap() {
                kept.push(c);
            }
            kept_tx.send(()).unwrap();
            // Eight more requests, 1 MiB each, echoed in full.
            for _ in 0..8 {
                let req = requests.next().await.unwrap();
                let (_, mut body) = req.request.into_parts();
                let mut out = req
                    .responder
                    .send_response(http::Response::new(()))
                    .await
                    .unwrap();
                while let Some(c) = body.chunk().await.unwrap() {
                    out.send_data(c).await.unwrap();
                }
                out.finish().await.unwrap();
            }
            let kept: Vec<u8> = kept.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(kept, first_body, "the kept chunks changed");
            let mut out = first
                .responder
                .send_response(http::Response::new(()))
                .await
                .unwrap();
            out.send_data(Bytes::from(kept)).await.unwrap();
            out.finish().await.unwrap();
        }
    });
    let payload = pattern(1024 * 1024);
    let expected = sha256(&payload);
    let answers = pair
        .run_with(LIMIT, async {
            let first = tokio::spawn({
                let (send, body) = (send.clone(), first_body.clone());
                async move {
                    let req = http::Request::post("https://localhost/first")
                        .body(body)
                        .unwrap();
                    let mut resp = send.send(req).await.unwrap();
                    resp.body_mut().collect(10_000).await.unwrap()
                }
            });
            kept_rx.await.unwrap();
            let mut hashes = Vec::new();
            for _ in 0..8 {
                let req = http::Request::post("https://localhost/next")
                    .body(payload.clone())
                    .unwrap();
                let mut resp = send.send(req).await.unwrap();
                hashes.push(sha256(&resp.body_mut().collect(2 << 20).await.unwrap()));
            }
            (first.await.unwrap(), hashes)
        })
        .await
        .unwrap();
    assert_eq!(answers.0, first_body);
    assert_eq!(answers.1, vec![expected; 8]);
    server.await.unwrap();
}

/// Keeps the requests it takes; has room for `room` of them at a time.
struct Keep {
    taken: std::sync::Arc<std::sync::Mutex<Vec<quic_h3::IncomingRequest>>>,
    room: usize,
}

impl quic_h3::Dispatch for Keep {
    fn has_room(&self) -> bool {
        self.taken.lock().unwrap().len() < self.room
    }
    fn dispatch(&mut self, request: quic_h3::IncomingRequest) -> bool {
        self.taken.lock().unwrap().push(request);
        true
    }
}

#[tokio::test]
async fn a_dispatcher_takes_each_request_as_it_arrives_and_its_room_refuses_the_rest() {
    let taken = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = Keep {
        taken: taken.clone(),
        room: 2,
    };
    let (server, _control) = quic_h3::ServerH3Driver::with_dispatch(H3Settings::default(), keep);
    let (client, send) = quic_h3::ClientH3Driver::new(H3Settings::default());
    let mut pair = Pair::new(PairConfig::new(quic_h3::ALPN), client, server).unwrap();
    let get = |path: &str| {
        http::Request::get(format!("https://localhost{path}"))
            .body(())
            .unwrap()
    };
    /// Answers every request taken so far with its path; returns the paths.
    fn answer_all(
        taken: &std::sync::Mutex<Vec<quic_h3::IncomingRequest>>,
    ) -> Vec<tokio::task::JoinHandle<String>> {
        std::mem::take(&mut *taken.lock().unwrap())
            .into_iter()
            .map(|req| {
                tokio::spawn(async move {
                    let path = req.request.uri().path().to_owned();
                    let resp = http::Response::new(Bytes::from(path.clone()));
                    req.responder.send_whole_response(resp).await.unwrap();
                    path
                })
            })
            .collect()
    }
    let (answered, refused, later) = pair
        .run_with(LIMIT, async {
            let mut responses = Vec::new();
            for path in ["/a", "/b"] {
                let (body, response) = send.send_request(get(path)).await.unwrap();
                body.finish().await.unwrap();
                responses.push(response);
            }
            while taken.lock().unwrap().len() < 2 {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            // Two taken and kept: the third is refused.
            let (body, third) = send.send_request(get("/c")).await.unwrap();
            let _ = body.finish().await;
            let refused = third.await.map(|r| r.status()).unwrap_err();
            let mut answered = Vec::new();
            for h in answer_all(&taken) {
                answered.push(h.await.unwrap());
            }
            for r in responses {
                let mut r = r.await.unwrap();
                answered.push(
                    String::from_utf8(r.body_mut().collect(64).await.unwrap().to_vec()).unwrap(),
                );
            }
            // Room again.
            let (body, fourth) = send.send_request(get("/d")).await.unwrap();
            body.finish().await.unwrap();
            while taken.lock().unwrap().is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            answer_all(&taken);
            let mut r = fourth.await.unwrap();
            let later = r.body_mut().collect(64).await.unwrap();
            (answered, refused, later)
        })
        .await
        .unwrap();
    assert_eq!(answered, ["/a", "/b", "/a", "/b"]);
    assert_eq!(refused, StreamError::Reset(H3Code::REQUEST_REJECTED));
    assert_eq!(later, "/d");
}

/// Has room for the first request whose head it is asked about, and none after: as a
/// server's dispatcher is once its shutdown deadline has passed. Counts the requests
/// it takes.
struct RoomOnce {
    asked: std::sync::atomic::AtomicUsize,
    taken: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl quic_h3::Dispatch for RoomOnce {
    fn has_room(&self) -> bool {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
    }
    fn dispatch(&mut self, request: quic_h3::IncomingRequest) -> bool {
        self.taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        drop(request);
        false
    }
}

#[tokio::test]
async fn a_request_held_for_its_body_is_refused_if_the_room_is_gone_when_it_is_released() {
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dispatch = RoomOnce {
        asked: std::sync::atomic::AtomicUsize::new(0),
        taken: taken.clone(),
    };
    let (server, _control) =
        quic_h3::ServerH3Driver::with_dispatch(H3Settings::default(), dispatch);
    let (client, send) = quic_h3::ClientH3Driver::new(H3Settings::default());
    let mut pair = Pair::new(PairConfig::new(quic_h3::ALPN), client, server).unwrap();
    let refused = pair
        .run_with(LIMIT, async {
            // The head goes alone, its body still to come: the server holds the
            // request until the end of its read pass, and only then hands it over.
            let req = http::Request::post("https://localhost/upload")
                .body(())
                .unwrap();
            let (body, response) = send.send_request(req).await.unwrap();
            let refused = response.await.map(|r| r.status()).unwrap_err();
            drop(body);
            refused
        })
        .await
        .unwrap();
    // Refused as a request the server never processed, so the client may retry it;
    // the dispatcher never saw it.
    assert_eq!(refused, StreamError::Reset(H3Code::REQUEST_REJECTED));
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 0);
}

/// Sends `n` GETs that stay unanswered and runs the pair until the server's queue has
/// handed out `total` requests in all.
async fn heads_arrive(
    pair: &mut super::util::H3Pair,
    send: &quic_h3::SendRequest,
    taken: &std::sync::Arc<std::sync::atomic::AtomicUsize>,
    n: usize,
    total: usize,
) {
    for i in 0..n {
        let send = send.clone();
        tokio::spawn(async move {
            let req = http::Request::get(format!("https://localhost:4433/{i}"))
                .body(Bytes::new())
                .unwrap();
            let _ = send.send(req).await;
        });
    }
    pair.run_with(LIMIT, async {
        // Yielding lets the senders and the server's reader run between turns.
        while taken.load(std::sync::atomic::Ordering::SeqCst) < total {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_turn_of_many_heads_makes_the_next_read_between_datagrams() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = {
        let taken = std::sync::Arc::clone(&taken);
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(req) = requests.next().await {
                held.push(req);
                taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            held.len()
        })
    };
    pair.run_until_established(LIMIT).await.unwrap();
    let server = |pair: &mut super::util::H3Pair| -> bool {
        // What a worker asks once a turn, then between the next turn's datagrams.
        let app = pair.server_mut().app_mut();
        app.handed_off_work();
        app.reads_between_datagrams()
    };
    assert!(!pair.server().app().reads_between_datagrams());
    // Three heads in a turn: below the threshold.
    heads_arrive(&mut pair, &send, &taken, 3, 3).await;
    assert!(!server(&mut pair));
    // Six: the next turn reads between its datagrams.
    heads_arrive(&mut pair, &send, &taken, 6, 9).await;
    assert!(server(&mut pair));
    // A turn without heads: back to one read per turn.
    assert!(!server(&mut pair));
    drop(send);
    drop(pair);
    assert_eq!(held.await.unwrap(), 9);
}

#[tokio::test]
async fn a_browsers_request_head_arrives_whole() {
    let (mut pair, send, requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let mut requests = requests;
        let first = requests.next().await.unwrap();
        let resp = http::Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap();
        let out = first.responder.send_response(resp).await.unwrap();
        out.finish().await.unwrap();
        let req = requests.next().await.unwrap();
        let fields: Vec<(String, String)> = req
            .request
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect();
        let resp = http::Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap();
        let out = req.responder.send_response(resp).await.unwrap();
        out.finish().await.unwrap();
        fields
    });
    let status = pair
        .run_with(LIMIT, async {
            let plain = http::Request::get("https://localhost/")
                .body(Bytes::new())
                .unwrap();
            assert_eq!(send.send(plain).await.unwrap().status(), StatusCode::OK);
            let mut req = http::Request::get("https://localhost/");
            for (name, value) in BROWSER_FIELDS {
                req = req.header(name, value);
            }
            let resp = send.send(req.body(Bytes::new()).unwrap()).await.unwrap();
            resp.status()
        })
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let fields = server.await.unwrap();
    let expected: Vec<(String, String)> = BROWSER_FIELDS
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(fields, expected);
}
