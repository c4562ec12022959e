//! The facade's server: built from a socket bound elsewhere, stopped by any future.

use std::convert::Infallible;
use std::time::Duration;

use std::net::SocketAddr;

use bytes::Bytes;
use quay::h3::{Body, H3Settings, Server};
use quay::io::TlsConfig;

mod common;
use common::connect;

/// A server on a socket bound here, its address and its certificate (PEM).
fn server() -> (Server, SocketAddr, String) {
    server_with(H3Settings::default())
}

/// [`server`] with these HTTP/3 settings.
fn server_with(h3: H3Settings) -> (Server, SocketAddr, String) {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let server = Server::builder()
        .tls(identity.config)
        .h3_settings(h3)
        .bind_socket(socket)
        .unwrap();
    (server, addr, identity.cert_pem)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_given_socket_serves_until_its_shutdown_future_completes() {
    let (server, addr, cert_pem) = server();
    assert_eq!(server.local_addr(), addr);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_graceful_shutdown(
        |_req| async { Ok::<_, Infallible>(http::Response::new(Body::from("hello"))) },
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(5),
    ));

    let (conn, send) = connect(addr, &cert_pem).await;
    let req = http::Request::get("https://localhost/")
        .body(Bytes::new())
        .unwrap();
    let mut resp = send.send(req).await.unwrap();
    assert_eq!(resp.body_mut().collect(64).await.unwrap(), "hello");

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stopped after its signal");
    assert!(result.unwrap().is_ok());
    // The drain closed the connection from the server's side.
    let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
        .await
        .unwrap();
    assert_eq!(closed.reason.app_code(), Some(quay::h3::H3Code::NO_ERROR.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_still_running_at_the_shutdown_deadline_are_cancelled() {
    /// Counts the handler futures dropped.
    struct Dropped(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
    let (server, addr, cert_pem) = server();
    let dropped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handler = {
        let dropped = dropped.clone();
        move |_req| {
            let flag = Dropped(dropped.clone());
            let started = started_tx.clone();
            async move {
                let _flag = flag;
                let _ = started.send(());
                // Never answers.
                std::future::pending::<()>().await;
                Ok::<_, Infallible>(http::Response::new(Body::from("never")))
            }
        }
    };
    let serving = tokio::spawn(server.serve_with_graceful_shutdown(
        handler,
        async {
            let _ = stop_rx.await;
        },
        Duration::from_millis(300),
    ));

    let (_conn, send) = connect(addr, &cert_pem).await;
    for _ in 0..3 {
        let req = http::Request::get("https://localhost/")
            .body(Bytes::new())
            .unwrap();
        let send = send.clone();
        // Never answered: the server stops at its deadline with these in flight.
        tokio::spawn(async move { send.send(req).await });
    }
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    assert_eq!(dropped.load(std::sync::atomic::Ordering::SeqCst), 0);

    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the server stopped at its deadline");
    assert!(result.unwrap().is_ok());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while dropped.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handlers still running after the server stopped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_runs_at_most_max_pending_requests_handlers_and_refuses_more() {
    let mut h3 = H3Settings::default();
    h3.max_pending_requests = 2;
    let (server, addr, cert_pem) = server_with(h3);
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(server.serve(move |req: http::Request<quay::h3::RecvBody>| {
        let started = started_tx.clone();
        let mut release = release_rx.clone();
        async move {
            if req.uri().path() == "/wait" {
                let _ = started.send(());
                let _ = release.wait_for(|go| *go).await;
            }
            Ok::<_, Infallible>(http::Response::new(Body::from(req.uri().path().to_owned())))
        }
    }));

    let (_conn, send) = connect(addr, &cert_pem).await;
    let get = |path: &'static str| {
        let send = send.clone();
        async move { common::get(&send, path).await }
    };
    let waiting: Vec<_> = (0..2).map(|_| tokio::spawn(get("/wait"))).collect();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    // Two handlers run: a third request is refused, in a way safe to retry.
    let refused = tokio::time::timeout(Duration::from_secs(10), get("/third"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        refused,
        quay::h3::StreamError::Reset(quay::h3::H3Code::REQUEST_REJECTED)
    );
    assert!(refused.is_retryable());

    release_tx.send(true).unwrap();
    for w in waiting {
        let body = tokio::time::timeout(Duration::from_secs(10), w)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(body, "/wait");
    }
    // Their handlers done, the connection takes requests again.
    let body = tokio::time::timeout(Duration::from_secs(10), get("/after"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(body, "/after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_panics_fails_only_its_own_request() {
    let (server, addr, cert_pem) = server();
    let serving = tokio::spawn(server.serve_with_graceful_shutdown(
        |req: http::Request<quay::h3::RecvBody>| async move {
            match req.uri().path() {
                // Before its first wait: in the step the connection's task runs.
                "/now" => panic!("a handler failed at once"),
                // After a wait: in the request's own task.
                "/later" => {
                    tokio::task::yield_now().await;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    panic!("a handler failed later")
                }
                _ => Ok::<_, Infallible>(http::Response::new(Body::from("hello"))),
            }
        },
        std::future::pending::<()>(),
        Duration::from_secs(5),
    ));

    let (conn, send) = connect(addr, &cert_pem).await;
    let get = |path: &str| {
        http::Request::get(format!("https://localhost{path}"))
            .body(Bytes::new())
            .unwrap()
    };
    for path in ["/now", "/later", "/now"] {
        let failed = send.send(get(path)).await.map(|_| ());
        assert_eq!(
            failed,
            Err(quay::h3::StreamError::Reset(
                quay::h3::H3Code::REQUEST_CANCELLED
            )),
            "{path}"
        );
        // The connection lives on and serves the next request.
        let mut resp = send.send(get("/")).await.unwrap();
        assert_eq!(resp.body_mut().collect(64).await.unwrap(), "hello");
    }
    drop(conn);
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_that_answers_at_once_runs_in_its_connections_task() {
    let (server, addr, cert_pem) = server();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let serving = tokio::spawn(server.serve_with_graceful_shutdown(
        move |req: http::Request<quay::h3::RecvBody>| {
            let record = record.clone();
            async move {
                if req.uri().path() == "/wait" {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                record
                    .lock()
                    .unwrap()
                    .push((req.uri().path().to_owned(), tokio::task::id()));
                Ok::<_, Infallible>(http::Response::new(Body::from("hello")))
            }
        },
        std::future::pending::<()>(),
        Duration::from_secs(5),
    ));

    let (_conn, send) = connect(addr, &cert_pem).await;
    for path in ["/now", "/now", "/wait", "/wait"] {
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(Bytes::new())
            .unwrap();
        let mut resp = send.send(req).await.unwrap();
        assert_eq!(resp.body_mut().collect(64).await.unwrap(), "hello");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    // Answered in their first step: both in the one task of their connection.
    assert_eq!(seen[0].1, seen[1].1);
    // Those that waited went on in tasks of their own.
    assert_ne!(seen[2].1, seen[0].1);
    assert_ne!(seen[3].1, seen[0].1);
    assert_ne!(seen[2].1, seen[3].1);
    serving.abort();
}

/// A body sent in several frames that states `size` as its exact size.
struct Stated {
    frames: Vec<Bytes>,
    size: u64,
}

impl http_body::Body for Stated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        let next = (!self.frames.is_empty()).then(|| self.frames.remove(0));
        std::task::Poll::Ready(next.map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.size)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_stated_size_gets_its_content_length_and_must_keep_to_it() {
    let (server, addr, cert_pem) = server();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_graceful_shutdown(
        |req: http::Request<quay::h3::RecvBody>| async move {
            let frames = vec![Bytes::from_static(b"ab"); 3];
            let (frames, size) = match req.uri().path() {
                "/six" => (frames, 6),
                "/short" => (frames, 10),
                "/long" => (frames, 4),
                _ => (vec![Bytes::from_static(b"whole")], 5),
            };
            Ok::<_, Infallible>(http::Response::new(Stated { frames, size }))
        },
        async {
            let _ = stop_rx.await;
        },
        Duration::from_secs(5),
    ));
    let (_conn, send) = connect(addr, &cert_pem).await;
    let get = |path: &str| {
        let req = http::Request::get(format!("https://localhost{path}"))
            .body(Bytes::new())
            .unwrap();
        send.send(req)
    };
    // In one frame: it leaves whole, its length counted by the driver.
    let mut resp = get("/whole").await.unwrap();
    assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "5");
    assert_eq!(resp.body_mut().collect(64).await.unwrap(), "whole");
    // In three frames: the length it states.
    let mut resp = get("/six").await.unwrap();
    assert_eq!(resp.headers()[http::header::CONTENT_LENGTH], "6");
    assert_eq!(resp.body_mut().collect(64).await.unwrap(), "ababab");
    // Fewer or more bytes than it stated: the server resets the stream (rather than
    // leave the client to find the body malformed), after at most the stated bytes.
    for path in ["/short", "/long"] {
        let outcome = match get(path).await {
            Ok(mut resp) => resp.body_mut().collect(64).await.map(|b| b.to_vec()),
            Err(e) => Err(e),
        };
        assert!(
            matches!(outcome, Err(quay::h3::StreamError::Reset(_))),
            "{path}: {outcome:?}"
        );
    }
    stop_tx.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap();
    assert!(result.unwrap().is_ok());
}
