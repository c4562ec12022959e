//! `quay::h3::Client` in production conditions: a black-holed host next to a live
//! one, shared handshakes, every timeout, Happy Eyeballs over ::1 and 127.0.0.1,
//! trust, default headers, redirects, the GOAWAY retry, reuse and resumption.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay::h3::{
    Client, ClientBuilder, ConnectionInfo, H3Settings, RecvBody, RedirectPolicy, ResponseExt,
    Server, StreamError,
};
use quay::io::TlsConfig;

/// A body that sends one chunk, then nothing, forever.
struct Stall(Option<Bytes>);

impl http_body::Body for Stall {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        match self.0.take() {
            Some(b) => Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

type Resp = http::Response<http_body_util::Either<quay::h3::Body, Stall>>;

fn text(status: u16, body: String) -> Resp {
    let mut r = http::Response::new(http_body_util::Either::Left(body.into()));
    *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
    r
}

fn redirect(status: u16, to: &str) -> Resp {
    let mut r = text(status, String::new());
    r.headers_mut()
        .insert(http::header::LOCATION, to.parse().unwrap());
    r
}

async fn handle(req: http::Request<RecvBody>) -> Result<Resp, Infallible> {
    let info = req.extensions().get::<ConnectionInfo>().cloned().unwrap();
    Ok(match (req.method().as_str(), req.uri().path()) {
        (_, "/id") => text(
            200,
            format!(
                "{} {} {}",
                info.id(),
                info.handshake().resumed,
                info.peer_addr().ip()
            ),
        ),
        (_, "/slow") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            text(200, "late".into())
        }
        (_, "/stall") => http::Response::new(http_body_util::Either::Right(Stall(Some(
            Bytes::from_static(b"first"),
        )))),
        (_, "/hdr") => {
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .map_or("-".into(), |v| v.to_str().unwrap().to_owned())
            };
            text(200, format!("{} {}", h("x-default"), h("x-mine")))
        }
        (_, "/r1") => redirect(302, "/r2"),
        (_, "/r2") => {
            let authority = req.uri().authority().unwrap().to_string();
            redirect(307, &format!("https://{authority}/final"))
        }
        ("POST", "/p") => redirect(303, "final"),
        (_, "/loop") => redirect(302, "/loop"),
        (_, "/plain") => redirect(302, "http://localhost/final"),
        (m, "/final") => text(200, format!("final {m}")),
        (_, "/json") => text(200, "{\"a\":1,\"b\":[true]}".into()),
        _ => text(404, String::new()),
    })
}

struct Running {
    port: u16,
    cert_pem: String,
}

/// Serves `handle` on `addr` (port 0: any) with `h3` settings.
fn serve(addr: &str, h3: H3Settings, names: &[&str]) -> Running {
    let identity = TlsConfig::self_signed(names).unwrap();
    let server = Server::builder()
        .tls(identity.config)
        .h3_settings(h3)
        .bind(addr.parse().unwrap())
        .unwrap();
    let port = server.local_addr().port();
    tokio::spawn(server.serve(handle));
    Running {
        port,
        cert_pem: identity.cert_pem,
    }
}

fn builder(s: &Running) -> ClientBuilder {
    Client::builder()
        .add_root_certificate_pem(s.cert_pem.as_bytes())
        .unwrap()
}

fn url(s: &Running, path: &str) -> String {
    format!("https://localhost:{}{path}", s.port)
}

/// A UDP socket that takes datagrams and never answers: a black-holed host.
fn black_hole(addr: &str) -> std::net::UdpSocket {
    std::net::UdpSocket::bind(addr).unwrap()
}

async fn body_text(client: &Client, u: &str) -> String {
    client.get(u).await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_host_does_not_hold_up_requests_to_a_live_one() {
    let live = serve("127.0.0.1:0", H3Settings::default(), &["localhost"]);
    let hole = black_hole("127.0.0.1:0");
    let hole_url = format!("https://127.0.0.1:{}/", hole.local_addr().unwrap().port());
    let mut settings = quay::io::QuicSettings::default();
    settings.handshake_timeout = Duration::from_secs(4);
    let client = builder(&live).settings(settings).build();
    let stuck = {
        let client = client.clone();
        tokio::spawn(async move { client.get(&hole_url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(body_text(&client, &url(&live, "/final")).await, "final GET");
    // Generous: a handshake and a request on loopback, while the other host's
    // handshake runs to its 4 s timeout.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!stuck.is_finished());
    let err = stuck.await.unwrap().unwrap_err();
    assert!(err.is_timeout() && err.is_connect(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_handshake_and_its_failure() {
    let live = serve("127.0.0.1:0", H3Settings::default(), &["localhost"]);
    let client = builder(&live).build();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (client, u) = (client.clone(), url(&live, "/id"));
        tasks.push(tokio::spawn(async move { body_text(&client, &u).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        ids.insert(t.await.unwrap().split(' ').next().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "one connection for all: {ids:?}");
    for _ in 0..10 {
        let id = body_text(&client, &url(&live, "/id")).await;
        assert!(ids.contains(id.split(' ').next().unwrap()), "reused");
    }

    // Three requests to a black hole: one attempt, one failure for all three.
    let hole = black_hole("127.0.0.1:0");
    let hole_url = format!("https://127.0.0.1:{}/", hole.local_addr().unwrap().port());
    let client = builder(&live)
        .connect_timeout(Duration::from_millis(700))
        .build();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (client, u) = (client.clone(), hole_url.clone());
        tasks.push(tokio::spawn(async move { client.get(&u).await }));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(
            matches!(err, quay::h3::ClientError::ConnectTimeout { .. }),
            "{err:?}"
        );
    }
    // One timeout, not three in a row.
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_timeout_has_its_own_error() {
    let live = serve("127.0.0.1:0", H3Settings::default(), &["localhost"]);
    // The whole exchange: no response head in time.
    let client = builder(&live).timeout(Duration::from_millis(400)).build();
    let err = client.get(&url(&live, "/slow")).await.unwrap_err();
    assert!(
        matches!(err, quay::h3::ClientError::Timeout { .. }),
        "{err:?}"
    );
    assert!(err.is_timeout() && !err.is_connect());
    // The whole exchange: a body that stops halfway.
    let mut resp = client.get(&url(&live, "/stall")).await.unwrap();
    assert_eq!(resp.body_mut().chunk().await.unwrap().unwrap(), "first");
    assert_eq!(resp.body_mut().chunk().await, Err(StreamError::Timeout));

    // Between chunks.
    let client = builder(&live)
        .read_timeout(Duration::from_millis(400))
        .build();
    let mut resp = client.get(&url(&live, "/stall")).await.unwrap();
    assert_eq!(resp.body_mut().chunk().await.unwrap().unwrap(), "first");
    assert_eq!(resp.body_mut().chunk().await, Err(StreamError::ReadTimeout));
    // For the head too.
    let err = client.get(&url(&live, "/slow")).await.unwrap_err();
    assert!(
        matches!(err, quay::h3::ClientError::Stream(StreamError::ReadTimeout)),
        "{err:?}"
    );
    assert!(err.is_timeout());
    // The client still works after all that.
    assert_eq!(body_text(&client, &url(&live, "/final")).await, "final GET");

    // Connecting.
    let hole = black_hole("127.0.0.1:0");
    let client = builder(&live)
        .connect_timeout(Duration::from_millis(300))
        .build();
    let u = format!("https://127.0.0.1:{}/", hole.local_addr().unwrap().port());
    let err = client.get(&u).await.unwrap_err();
    assert!(
        matches!(err, quay::h3::ClientError::ConnectTimeout { .. }),
        "{err:?}"
    );
    assert!(err.is_timeout() && err.is_connect() && !err.is_tls());
}

/// A server on `live` and a black hole on `dead`, on one port number.
fn same_port(live: &str, dead: &str) -> (Running, std::net::UdpSocket) {
    for _ in 0..20 {
        let server = serve(&format!("{live}:0"), H3Settings::default(), &["dual.test"]);
        if let Ok(hole) = std::net::UdpSocket::bind(format!("{dead}:{}", server.port)) {
            return (server, hole);
        }
    }
    panic!("no port free on both families");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_is_tried_ipv6_and_ipv4_alike() {
    // IPv4 first and black-holed: the IPv6 attempt starts 250 ms later and wins.
    let (server, _hole) = same_port("[::1]", "127.0.0.1");
    let addrs: [SocketAddr; 2] = ["127.0.0.1:1".parse().unwrap(), "[::1]:1".parse().unwrap()];
    let client = builder(&server)
        .resolve_to_addrs("dual.test", &addrs)
        .build();
    let u = format!("https://dual.test:{}/id", server.port);
    let started = Instant::now();
    let seen = body_text(&client, &u).await;
    assert!(seen.ends_with(" ::1"), "{seen}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // IPv6 first and black-holed: IPv4 wins.
    let (server, _hole) = same_port("127.0.0.1", "[::1]");
    let addrs: [SocketAddr; 2] = ["[::1]:1".parse().unwrap(), "127.0.0.1:1".parse().unwrap()];
    let client = builder(&server)
        .resolve_to_addrs("dual.test", &addrs)
        .build();
    let u = format!("https://dual.test:{}/id", server.port);
    let seen = body_text(&client, &u).await;
    assert!(seen.ends_with(" 127.0.0.1"), "{seen}");
    // And the winner is pooled: the next request reuses it.
    let again = body_text(&client, &u).await;
    assert_eq!(again.split(' ').next(), seen.split(' ').next());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_roots_join_the_built_in_ones_which_can_be_turned_off() {
    let live = serve("127.0.0.1:0", H3Settings::default(), &["localhost"]);
    assert_eq!(
        body_text(&builder(&live).build(), &url(&live, "/final")).await,
        "final GET"
    );
    // Neither the built-in roots nor any added one: nothing is trusted.
    let client = Client::builder().tls_built_in_root_certs(false).build();
    let err = client.get(&url(&live, "/final")).await.unwrap_err();
    assert!(err.is_tls() && err.is_connect(), "{err}");
    // The built-in roots alone do not know a self-signed certificate.
    let err = Client::builder()
        .build()
        .get(&url(&live, "/final"))
        .await
        .unwrap_err();
    assert!(err.is_tls(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_headers_and_redirects() {
    let live = serve("127.0.0.1:0", H3Settings::default(), &["localhost"]);
    let mut defaults = http::HeaderMap::new();
    defaults.insert("x-default", "d".parse().unwrap());
    defaults.insert("x-mine", "default".parse().unwrap());
    let client = builder(&live).default_headers(defaults).build();
    let req = http::Request::get(url(&live, "/hdr"))
        .header("x-mine", "own")
        .body(Bytes::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "d own");

    // A relative 302, then an absolute 307 that keeps the method: followed.
    let resp = client.get(&url(&live, "/r1")).await.unwrap();
    assert_eq!(resp.text().await.unwrap(), "final GET");
    let resp = client
        .request(
            http::Request::put(url(&live, "/r1"))
                .body(Bytes::from_static(b"x"))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.text().await.unwrap(), "final PUT");
    // 303 after a POST: a GET of a relative path.
    let resp = client.post(&url(&live, "/p"), "data").await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "final GET");
    // A loop ends at the limit; https to http is refused.
    let client = builder(&live).redirect(RedirectPolicy::limited(3)).build();
    let err = client.get(&url(&live, "/loop")).await.unwrap_err();
    assert!(err.is_redirect(), "{err}");
    let err = client.get(&url(&live, "/plain")).await.unwrap_err();
    assert!(
        err.is_redirect() && err.to_string().contains("http://"),
        "{err}"
    );
    // No policy: the 302 itself.
    let client = builder(&live).redirect(RedirectPolicy::none()).build();
    let resp = client.get(&url(&live, "/r1")).await.unwrap();
    assert_eq!(resp.status(), 302);
    assert_eq!(resp.headers()[http::header::LOCATION], "/r2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_request_is_sent_again_once_but_a_streamed_one_is_not() {
    let mut h3 = H3Settings::default();
    h3.max_requests_per_connection = Some(1);
    let live = serve("127.0.0.1:0", h3, &["localhost"]);

    // Two requests at once on a new authority: the first takes the connection's one
    // request, the second is refused (H3_REQUEST_REJECTED) and sent again.
    let client = builder(&live).build();
    let u = url(&live, "/id");
    let (a, b) = tokio::join!(body_text(&client, &u), body_text(&client, &u));
    let (a, b) = (a.split(' ').next().unwrap(), b.split(' ').next().unwrap());
    assert_ne!(a, b, "two connections");

    // The same with a streamed body: refused, and not sent again. The second request
    // goes on the first connection only if the client has not yet read the server's
    // GOAWAY; when it has, the request rightly goes on a new connection and the attempt
    // shows nothing, so a bounded number of attempts is made until one is refused.
    async fn streamed(client: &Client, u: &str) -> Result<String, StreamError> {
        let req = http::Request::get(u).body(()).unwrap();
        let (body, resp) = client.send_request(req).await.unwrap();
        let _ = body.finish().await;
        Ok(resp.await?.text().await.unwrap())
    }
    for _ in 0..20 {
        let client = builder(&live).build();
        let (first, second) = tokio::join!(streamed(&client, &u), streamed(&client, &u));
        match (first, second) {
            (Ok(_), Err(refused)) | (Err(refused), Ok(_)) => {
                assert!(refused.is_retryable(), "{refused}");
                return;
            }
            (Ok(a), Ok(b)) => assert_ne!(
                a.split(' ').next(),
                b.split(' ').next(),
                "two requests answered on a connection that takes one"
            ),
            other => panic!("{other:?}"),
        }
    }
    panic!("no streamed request was refused in 20 attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_resumes_the_last_session() {
    let mut h3 = H3Settings::default();
    h3.max_requests_per_connection = Some(1);
    let live = serve("127.0.0.1:0", h3, &["localhost"]);
    let client = builder(&live).build();
    let first = body_text(&client, &url(&live, "/id")).await;
    assert!(first.contains(" false "), "{first}");
    // The server drains the connection after its one request; the next resumes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let next = body_text(&client, &url(&live, "/id")).await;
        if next.split(' ').next() != first.split(' ').next() {
            assert!(next.contains(" true "), "resumed: {next}");
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[cfg(feature = "json")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_bodies_decode() {
    #[derive(serde::Deserialize, PartialEq, Debug)]
    struct Doc {
        a: u32,
        b: Vec<bool>,
    }
    let live = serve("127.0.0.1:0", H3Settings::default(), &["localhost"]);
    let client = builder(&live).build();
    let doc: Doc = client
        .get(&url(&live, "/json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc,
        Doc {
            a: 1,
            b: vec![true]
        }
    );
    let err = client
        .get(&url(&live, "/final"))
        .await
        .unwrap()
        .json::<Doc>()
        .await
        .unwrap_err();
    assert!(matches!(err, quay::h3::ClientError::Json(_)), "{err:?}");
}
