//! Defects found under stress: a closing connection that spins its loop, a drain that
//! cuts a response short, and HTTP/3 messages that break RFC 9114's rules.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use quic_app::testing::{Faults, Pair, PairConfig};
use quic_app::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};
use quic_h3::{ClientH3Driver, H3Code, H3Settings, ServerH3Driver};

use super::util::{LIMIT, pattern, sha256};

/// How often the loop ran an application: its own work woke it, or it was called after
/// input.
#[derive(Debug, Default)]
struct Turns {
    woken: AtomicUsize,
    woken_closing: AtomicUsize,
}

/// Wraps an application and counts the turns it causes.
struct Counting<A> {
    inner: A,
    turns: Arc<Turns>,
}

impl<A: ApplicationOverQuic> ApplicationOverQuic for Counting<A> {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.inner.on_conn_established(conn, info)
    }
    fn should_act(&self) -> bool {
        self.inner.should_act()
    }
    async fn wait_for_data(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let r = self.inner.wait_for_data(conn).await;
        self.turns.woken.fetch_add(1, Ordering::Relaxed);
        if conn.is_draining() || conn.local_error().is_some() {
            self.turns.woken_closing.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.inner.process_reads(conn)
    }
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.inner.process_writes(conn)
    }
    fn handed_off_work(&mut self) -> bool {
        self.inner.handed_off_work()
    }
    fn handoff_passes(&self) -> usize {
        self.inner.handoff_passes()
    }
    fn on_conn_close(&mut self, conn: &mut QuicConnection, reason: &CloseReason) {
        self.inner.on_conn_close(conn, reason)
    }
}

#[tokio::test]
async fn a_connection_closed_for_sending_no_request_does_not_spin_while_it_drains() {
    let mut settings = H3Settings::default();
    settings.first_request_timeout = Some(Duration::from_millis(50));
    let (client, _send) = ClientH3Driver::new(H3Settings::default());
    let (server, _requests) = ServerH3Driver::new(settings);
    let turns = Arc::new(Turns::default());
    let server = Counting {
        inner: server,
        turns: Arc::clone(&turns),
    };
    // A slower path than the harness's default: the closing period (three probe
    // timeouts) lasts a few hundred milliseconds.
    let config = PairConfig::new(quic_h3::ALPN).configure(|c| {
        c.set_initial_rtt(Duration::from_millis(100));
    });
    let mut pair = Pair::new(config, client, server).unwrap();
    pair.run_until_closed(LIMIT).await.unwrap();
    assert_eq!(
        pair.client().close_reason().and_then(CloseReason::app_code),
        Some(H3Code::NO_ERROR.0)
    );
    // One wake for the first-request timer; none while the connection closes.
    let woken = turns.woken.load(Ordering::Relaxed);
    let closing = turns.woken_closing.load(Ordering::Relaxed);
    assert!(
        woken <= 3,
        "the server's application woke its loop {woken} times"
    );
    assert!(closing <= 1, "{closing} wakes while closing");
}

/// Reads a response body to its end: its bytes, or the error and how many came first.
async fn read_all(body: &mut quic_h3::RecvBody) -> Result<Vec<u8>, (quic_h3::StreamError, usize)> {
    let mut data = Vec::new();
    loop {
        match body.chunk().await {
            Ok(Some(c)) => data.extend_from_slice(&c),
            Ok(None) => return Ok(data),
            Err(e) => return Err((e, data.len())),
        }
    }
}

#[tokio::test]
async fn a_drain_closes_only_once_the_last_response_bytes_are_acknowledged() {
    let faults = Faults::new();
    let (client, send) = ClientH3Driver::new(H3Settings::default());
    let (server, mut requests) = ServerH3Driver::new(H3Settings::default());
    let config = PairConfig::new(quic_h3::ALPN)
        .faults(&faults)
        .configure(|c| c.set_max_idle_timeout(5_000));
    let mut pair = Pair::new(config, client, server).unwrap();
    let body = pattern(1 << 20);
    let expected = sha256(&body);
    let cut = faults.clone();
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        requests.control().goaway().await;
        let mut out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        for chunk in body.chunks(64 * 1024) {
            out.send_data(body.slice_ref(chunk)).await.unwrap();
        }
        out.finish().await.unwrap();
        // The tail of the response (and anything else the server sends for a while)
        // is lost: only retransmission can deliver it.
        cut.blackhole_to_client(Duration::from_millis(150));
    });
    let got = pair
        .run_with(LIMIT, async {
            let req = http::Request::get("https://localhost/big")
                .body(Bytes::new())
                .unwrap();
            let mut resp = send.send(req).await.unwrap();
            read_all(resp.body_mut()).await
        })
        .await
        .unwrap();
    server.await.unwrap();
    let got = match got {
        Ok(data) => data,
        Err((e, n)) => panic!("the body ended in {e} after {n} of {} bytes", 1 << 20),
    };
    assert_eq!(got.len(), 1 << 20);
    assert_eq!(sha256(&got), expected);
    assert!(faults.dropped().1 > 0, "the fault dropped nothing");
    pair.run_until_closed(LIMIT).await.unwrap();
    assert_eq!(
        pair.client().close_reason().and_then(CloseReason::app_code),
        Some(H3Code::NO_ERROR.0)
    );
}

/// What a raw client saw for its request.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Status(u16),
    Reset(u64),
}

/// A bare quiche HTTP/3 client that sends one request exactly as given, ignoring
/// every rule, and records the answer.
struct RawClient {
    fields: Vec<quiche::h3::Header>,
    body: Option<Vec<u8>>,
    /// Whether the body ends the stream (FIN); without it the stream stays open.
    fin: bool,
    h3: Option<quiche::h3::Connection>,
    outcome: Arc<std::sync::Mutex<Option<Outcome>>>,
}

impl ApplicationOverQuic for RawClient {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        let cfg = quiche::h3::Config::new().unwrap();
        let mut h3 = quiche::h3::Connection::with_transport(conn, &cfg).unwrap();
        let id = h3
            .send_request(conn, &self.fields, self.body.is_none())
            .unwrap();
        if let Some(body) = &self.body {
            assert_eq!(h3.send_body(conn, id, body, self.fin).unwrap(), body.len());
        }
        self.h3 = Some(h3);
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let Some(h3) = self.h3.as_mut() else {
            return Ok(());
        };
        let mut buf = [0u8; 4096];
        loop {
            match h3.poll(conn) {
                Ok((_, quiche::h3::Event::Headers { list, .. })) => {
                    use quiche::h3::NameValue;
                    let status = list
                        .iter()
                        .find(|h| h.name() == b":status")
                        .map(|h| std::str::from_utf8(h.value()).unwrap().parse().unwrap())
                        .unwrap();
                    self.outcome
                        .lock()
                        .unwrap()
                        .get_or_insert(Outcome::Status(status));
                }
                Ok((id, quiche::h3::Event::Data)) => {
                    while h3.recv_body(conn, id, &mut buf).is_ok() {}
                }
                Ok((_, quiche::h3::Event::Reset(code))) => {
                    self.outcome
                        .lock()
                        .unwrap()
                        .get_or_insert(Outcome::Reset(code));
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

fn h(name: &str, value: &str) -> quiche::h3::Header {
    quiche::h3::Header::new(name.as_bytes(), value.as_bytes())
}

/// `:method`, `:scheme`, `:authority`, `:path` of a GET (or `method`) for `/`.
fn head(method: &str) -> Vec<quiche::h3::Header> {
    vec![
        h(":method", method),
        h(":scheme", "https"),
        h(":authority", "localhost"),
        h(":path", "/"),
    ]
}

/// Sends `fields` (and `body`) raw to a server whose handler reads the whole body and
/// answers 200; returns what the client saw and what the handler's body read gave.
async fn raw_request(
    fields: Vec<quiche::h3::Header>,
    body: Option<&[u8]>,
) -> (Outcome, Option<Result<usize, quic_h3::StreamError>>) {
    raw_request_with(fields, body, true).await
}

/// [`raw_request`], the body ending the stream or not (`fin`).
async fn raw_request_with(
    fields: Vec<quiche::h3::Header>,
    body: Option<&[u8]>,
    fin: bool,
) -> (Outcome, Option<Result<usize, quic_h3::StreamError>>) {
    let (server, mut requests) = ServerH3Driver::new(H3Settings::default());
    let handler_saw = Arc::new(std::sync::Mutex::new(None));
    let saw = Arc::clone(&handler_saw);
    let server_task = tokio::spawn(async move {
        while let Some(mut req) = requests.next().await {
            let read = super::util::read_to_end(req.request.body_mut())
                .await
                .map_err(|(e, _)| e);
            let ok = read.is_ok();
            *saw.lock().unwrap() = Some(read);
            if ok {
                let out = req
                    .responder
                    .send_response(http::Response::new(()))
                    .await
                    .unwrap();
                out.finish().await.unwrap();
            }
        }
    });
    let outcome = Arc::new(std::sync::Mutex::new(None));
    let client = RawClient {
        fields,
        body: body.map(<[u8]>::to_vec),
        fin,
        h3: None,
        outcome: Arc::clone(&outcome),
    };
    let mut pair = Pair::new(PairConfig::new(quic_h3::ALPN), client, server).unwrap();
    pair.run_until(LIMIT, |_| outcome.lock().unwrap().is_some())
        .await
        .unwrap();
    // Let the handler finish reading what it was given.
    let _ = pair
        .run_with(Duration::from_millis(50), std::future::pending::<()>())
        .await;
    server_task.abort();
    let got = outcome.lock().unwrap().clone().unwrap();
    let saw = handler_saw.lock().unwrap().take();
    (got, saw)
}

const MESSAGE_ERROR: Outcome = Outcome::Reset(H3Code::MESSAGE_ERROR.0);

#[tokio::test]
async fn a_request_body_that_disagrees_with_its_content_length_is_malformed() {
    let with_length = |n: &str| {
        let mut f = head("POST");
        f.push(h("content-length", n));
        f
    };
    // Shorter and longer than announced: the stream is reset, and the handler's body
    // ends in an error instead of a complete-looking body.
    for (length, body) in [("10", &b"12345"[..]), ("3", &b"12345"[..])] {
        let (outcome, saw) = raw_request(with_length(length), Some(body)).await;
        assert_eq!(outcome, MESSAGE_ERROR, "content-length {length}");
        match saw {
            Some(Err(quic_h3::StreamError::Malformed(_))) | None => {}
            other => panic!("content-length {length}: the handler read {other:?}"),
        }
    }
    // Longer than announced while the stream is still open (no FIN yet): the excess
    // is seen in the first read, before the request is handed over.
    let (outcome, saw) = raw_request_with(with_length("5"), Some(b"12345678901"), false).await;
    assert_eq!(outcome, MESSAGE_ERROR, "content-length 5, 11 bytes, no FIN");
    match saw {
        Some(Err(quic_h3::StreamError::Malformed(_))) | None => {}
        other => panic!("content-length 5, 11 bytes, no FIN: the handler read {other:?}"),
    }
    // Announced but absent, unparsable, or two values that disagree.
    for fields in [with_length("5"), with_length("five"), with_length("-1"), {
        let mut f = with_length("5");
        f.push(h("content-length", "6"));
        f
    }] {
        let (outcome, saw) = raw_request(fields.clone(), None).await;
        assert_eq!(outcome, MESSAGE_ERROR, "{fields:?}");
        assert!(saw.is_none(), "{fields:?} reached the handler");
    }
    // Agreeing: answered, with the whole body read.
    let (outcome, saw) = raw_request(with_length("5"), Some(b"12345")).await;
    assert_eq!(outcome, Outcome::Status(200));
    assert_eq!(saw, Some(Ok(5)));
    let mut repeated = with_length("5");
    repeated.push(h("content-length", "5"));
    let (outcome, _) = raw_request(repeated, Some(b"12345")).await;
    assert_eq!(outcome, Outcome::Status(200));
}

#[tokio::test]
async fn requests_breaking_the_rules_of_rfc_9114_are_malformed() {
    let with = |method: &str, extra: &[(&str, &str)]| {
        let mut f = head(method);
        f.extend(extra.iter().map(|(n, v)| h(n, v)));
        f
    };
    let malformed = [
        (
            "`:protocol` on GET",
            with("GET", &[])
                .into_iter()
                .take(4)
                .chain([h(":protocol", "websocket")])
                .collect::<Vec<_>>(),
        ),
        (
            "host disagreeing with `:authority`",
            with("GET", &[("host", "example.org")]),
        ),
        (
            "two hosts",
            with("GET", &[("host", "localhost"), ("host", "localhost")]),
        ),
        ("te other than trailers", with("GET", &[("te", "gzip")])),
        (
            "no `:scheme`",
            vec![
                h(":method", "GET"),
                h(":authority", "localhost"),
                h(":path", "/"),
            ],
        ),
        (
            "no authority at all",
            vec![h(":method", "GET"), h(":scheme", "https"), h(":path", "/")],
        ),
        (
            "an empty `:authority`",
            vec![
                h(":method", "GET"),
                h(":scheme", "https"),
                h(":authority", ""),
                h(":path", "/"),
            ],
        ),
    ];
    for (what, fields) in malformed {
        let (outcome, saw) = raw_request(fields, None).await;
        assert_eq!(outcome, MESSAGE_ERROR, "{what}");
        assert!(saw.is_none(), "{what} reached the handler");
    }
    let fine = [
        (
            "host agreeing with `:authority`",
            with("GET", &[("host", "localhost")]),
        ),
        ("te: trailers", with("GET", &[("te", "trailers")])),
        (
            "host without `:authority`",
            vec![
                h(":method", "GET"),
                h(":scheme", "https"),
                h(":path", "/"),
                h("host", "localhost"),
            ],
        ),
    ];
    for (what, fields) in fine {
        let (outcome, _) = raw_request(fields, None).await;
        assert_eq!(outcome, Outcome::Status(200), "{what}");
    }
}

/// A bare quiche HTTP/3 server that answers every request with `fields` and `body`,
/// whatever they say.
struct RawServer {
    fields: Vec<quiche::h3::Header>,
    body: Vec<u8>,
    h3: Option<quiche::h3::Connection>,
}

impl ApplicationOverQuic for RawServer {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        let cfg = quiche::h3::Config::new().unwrap();
        self.h3 = Some(quiche::h3::Connection::with_transport(conn, &cfg).unwrap());
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let Some(h3) = self.h3.as_mut() else {
            return Ok(());
        };
        loop {
            match h3.poll(conn) {
                Ok((id, quiche::h3::Event::Headers { .. })) => {
                    let fin = self.body.is_empty();
                    h3.send_response(conn, id, &self.fields, fin).unwrap();
                    if !fin {
                        h3.send_body(conn, id, &self.body, true).unwrap();
                    }
                }
                Ok(_) => {}
                Err(_) => return Ok(()),
            }
        }
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

/// Sends `method /` through the client driver to a raw server answering `fields` and
/// `body`; returns the response body as read.
async fn raw_response(
    method: http::Method,
    fields: Vec<quiche::h3::Header>,
    body: &[u8],
) -> Result<Vec<u8>, quic_h3::StreamError> {
    let (client, send) = ClientH3Driver::new(H3Settings::default());
    let server = RawServer {
        fields,
        body: body.to_vec(),
        h3: None,
    };
    let mut pair = Pair::new(PairConfig::new(quic_h3::ALPN), client, server).unwrap();
    pair.run_with(LIMIT, async {
        let req = http::Request::builder()
            .method(method)
            .uri("https://localhost/")
            .body(Bytes::new())
            .unwrap();
        let mut resp = send.send(req).await?;
        read_all(resp.body_mut()).await.map_err(|(e, _)| e)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_response_body_that_disagrees_with_its_content_length_fails_at_the_client() {
    let status = |length: &str| vec![h(":status", "200"), h("content-length", length)];
    for (length, body) in [("10", &b"12345"[..]), ("3", &b"12345"[..]), ("5", &b""[..])] {
        match raw_response(http::Method::GET, status(length), body).await {
            Err(quic_h3::StreamError::Malformed(_)) => {}
            other => panic!("content-length {length}, {} bytes: {other:?}", body.len()),
        }
    }
    assert_eq!(
        raw_response(http::Method::GET, status("5"), b"12345").await,
        Ok(b"12345".to_vec())
    );
    // After HEAD, content-length describes a body that is not sent.
    assert_eq!(
        raw_response(http::Method::HEAD, status("10"), b"").await,
        Ok(Vec::new())
    );
}

#[tokio::test]
async fn a_connection_takes_at_most_its_request_limit_then_drains() {
    let mut settings = H3Settings::default();
    settings.max_requests_per_connection = Some(3);
    let (mut pair, send, mut requests) = super::util::pair(settings);
    let server = tokio::spawn(async move {
        let mut served = 0;
        while let Some(req) = requests.next().await {
            let out = req
                .responder
                .send_response(http::Response::new(()))
                .await
                .unwrap();
            out.finish().await.unwrap();
            served += 1;
        }
        served
    });
    let results = pair
        .run_with(LIMIT, async {
            let mut results = Vec::new();
            for i in 0..5 {
                let req = http::Request::get(format!("https://localhost/{i}"))
                    .body(Bytes::new())
                    .unwrap();
                results.push(send.send(req).await.map(|r| r.status()));
            }
            results
        })
        .await
        .unwrap();
    for r in &results[..3] {
        assert_eq!(r, &Ok(http::StatusCode::OK));
    }
    // Refused (safe to retry), or sent after the drained connection closed.
    for r in &results[3..] {
        match r {
            Err(e) if e.is_retryable() => {}
            Err(quic_h3::StreamError::ConnectionClosed) => {}
            other => panic!("{other:?}"),
        }
    }
    pair.run_until_closed(LIMIT).await.unwrap();
    assert_eq!(
        pair.client().close_reason().and_then(CloseReason::app_code),
        Some(H3Code::NO_ERROR.0)
    );
    assert_eq!(pair.run_with(LIMIT, server).await.unwrap().unwrap(), 3);
}

/// Opens request stream 0 and sends the start of a HEADERS frame that never ends;
/// records how the server ends the stream.
struct SlowHeaders {
    reset: Arc<std::sync::Mutex<Option<u64>>>,
}

impl ApplicationOverQuic for SlowHeaders {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        // HEADERS (type 0x01) announcing 80 bytes, of which none follow.
        conn.stream_send(0, &[0x01, 0x40, 0x50], false).unwrap();
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let mut buf = [0u8; 256];
        if let Err(quiche::Error::StreamReset(code)) = conn.stream_recv(0, &mut buf) {
            *self.reset.lock().unwrap() = Some(code);
        }
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_request_whose_headers_never_end_is_reset_after_the_header_timeout() {
    let mut settings = H3Settings::default();
    settings.request_header_timeout = Some(Duration::from_millis(200));
    // Only the header limit is under test.
    settings.first_request_timeout = None;
    let (server, _requests) = ServerH3Driver::new(settings);
    let reset = Arc::new(std::sync::Mutex::new(None));
    let client = SlowHeaders {
        reset: Arc::clone(&reset),
    };
    let mut pair = Pair::new(PairConfig::new(quic_h3::ALPN), client, server).unwrap();
    let started = std::time::Instant::now();
    pair.run_until(Duration::from_secs(10), |_| reset.lock().unwrap().is_some())
        .await
        .unwrap();
    assert_eq!(*reset.lock().unwrap(), Some(H3Code::REQUEST_INCOMPLETE.0));
    assert!(started.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn a_body_received_before_the_peer_closed_is_still_read_whole() {
    let (client, send) = ClientH3Driver::new(H3Settings::default());
    let (server, mut requests) = ServerH3Driver::new(H3Settings::default());
    // Windows that hold the whole body: the client acknowledges all of it before its
    // application reads any.
    let config = PairConfig::new(quic_h3::ALPN).configure(|c| {
        c.set_initial_max_stream_data_bidi_local(2 << 20);
        c.set_initial_max_data(4 << 20);
    });
    let mut pair = Pair::new(config, client, server).unwrap();
    let body = pattern(1 << 20);
    let expected = sha256(&body);
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        requests.control().goaway().await;
        let mut out = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        out.send_data(body).await.unwrap();
        out.finish().await.unwrap();
    });
    let mut resp = pair
        .run_with(LIMIT, async {
            let req = http::Request::get("https://localhost/big")
                .body(Bytes::new())
                .unwrap();
            send.send(req).await.unwrap()
        })
        .await
        .unwrap();
    // Nobody reads while the server drains and closes (everything was acknowledged).
    pair.run_until(LIMIT, |p| p.client().close_reason().is_some())
        .await
        .unwrap();
    server.await.unwrap();
    let got = read_all(resp.body_mut()).await;
    let got = match got {
        Ok(data) => data,
        Err((e, n)) => panic!("the body ended in {e} after {n} of {} bytes", 1 << 20),
    };
    assert_eq!(sha256(&got), expected);
}
