//! An axum `Router` served over HTTP/3 as it is, reading the connection's info from
//! its extensions; and the Alt-Svc layer on a plain tower service.

use std::time::Duration;

use axum::extract::{Extension, Path};
use axum::routing::{get, post};
use bytes::Bytes;
use quay::h3::{AltSvcLayer, ConnectionInfo};
use tower::{Layer, ServiceExt};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_router_is_served_as_it_is_and_sees_the_connection() {
    let app = axum::Router::new()
        .route(
            "/whoami",
            get(|Extension(conn): Extension<ConnectionInfo>| async move {
                format!(
                    "{} {} {} {}",
                    conn.peer_addr(),
                    conn.server_name().unwrap_or("-"),
                    String::from_utf8_lossy(conn.alpn()),
                    conn.id().len(),
                )
            }),
        )
        .route(
            "/hello/{name}",
            get(|Path(name): Path<String>| async move { format!("hello {name}") }),
        )
        .route("/echo", post(|body: Bytes| async move { body }));
    let (server, cert_pem) = common::loopback_server();
    let port = server.local_addr().port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server
            .with_graceful_shutdown(
                async {
                    let _ = stop_rx.await;
                },
                Duration::from_secs(5),
            )
            .serve_service(app),
    );

    let client = common::client_trusting(&cert_pem);
    let base = format!("https://localhost:{port}");
    let mut resp = client.get(&format!("{base}/whoami")).await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.body_mut().collect(1024).await.unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let fields: Vec<&str> = text.split(' ').collect();
    assert!(fields[0].starts_with("127.0.0.1:"), "{text}");
    assert_eq!(fields[1..], ["localhost", "h3", "32"], "{text}");

    let mut resp = client.get(&format!("{base}/hello/quay")).await.unwrap();
    assert_eq!(resp.body_mut().collect(1024).await.unwrap(), "hello quay");

    let body = Bytes::from(vec![7u8; 300_000]);
    let mut resp = client
        .post(&format!("{base}/echo"), body.clone())
        .await
        .unwrap();
    assert_eq!(resp.body_mut().collect(1 << 20).await.unwrap(), body);

    let resp = client.get(&format!("{base}/nowhere")).await.unwrap();
    assert_eq!(resp.status(), 404);

    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_alt_svc_layer_adds_its_header_unless_the_response_has_one() {
    let svc = tower::service_fn(|req: http::Request<()>| async move {
        let mut resp = http::Response::new(());
        if req.uri().path() == "/own" {
            resp.headers_mut()
                .insert(http::header::ALT_SVC, "clear".parse().unwrap());
        }
        Ok::<_, std::convert::Infallible>(resp)
    });
    let svc = AltSvcLayer::new(4433, Duration::from_secs(3600)).layer(svc);
    let resp = svc
        .clone()
        .oneshot(http::Request::get("/").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(
        resp.headers()[http::header::ALT_SVC],
        "h3=\":4433\"; ma=3600"
    );
    let resp = svc
        .oneshot(http::Request::get("/own").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.headers()[http::header::ALT_SVC], "clear");
}

/// A service that is not ready on its first `poll_ready` of each request (it wakes
/// its caller at once), and whose readiness fails for a request once `fail` is set.
#[derive(Clone)]
struct Reluctant {
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    fail: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ready: bool,
}

impl tower::Service<http::Request<quay::h3::RecvBody>> for Reluctant {
    type Response = http::Response<quay::h3::Body>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if !self.ready {
            self.ready = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return std::task::Poll::Ready(Err(std::io::Error::other("not today")));
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<quay::h3::RecvBody>) -> Self::Future {
        assert!(self.ready, "called before it was ready");
        std::future::ready(Ok(http::Response::new(quay::h3::Body::from(format!(
            "ready for {}",
            req.uri().path()
        )))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_is_called_only_once_ready_and_its_readiness_error_is_a_500() {
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let service = Reluctant {
        asked: asked.clone(),
        fail: fail.clone(),
        ready: false,
    };
    let (server, cert_pem) = common::loopback_server();
    let port = server.local_addr().port();
    let serving = tokio::spawn(server.serve_service(service));
    let client = common::client_trusting(&cert_pem);
    let base = format!("https://localhost:{port}");

    let mut resp = client.get(&format!("{base}/a")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body_mut().collect(1024).await.unwrap(), "ready for /a");
    // Each request's clone was asked twice: not ready, then ready.
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 2);

    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let resp = client.get(&format!("{base}/b")).await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 4);
    serving.abort();
}

/// A service whose call for `/both` panics, and whose clone that took that call
/// panics again when dropped.
#[derive(Clone, Default)]
struct Fragile {
    panic_on_drop: bool,
}

impl Drop for Fragile {
    fn drop(&mut self) {
        // Dropped while its call's panic unwinds, this is a panic in a panic: the
        // process aborts.
        if self.panic_on_drop {
            panic!("a service clone failed as it was dropped");
        }
    }
}

impl tower::Service<http::Request<quay::h3::RecvBody>> for Fragile {
    type Response = http::Response<quay::h3::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<quay::h3::RecvBody>) -> Self::Future {
        if req.uri().path() == "/both" {
            self.panic_on_drop = true;
            panic!("a service's call failed");
        }
        std::future::ready(Ok(http::Response::new(quay::h3::Body::from("fine"))))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_whose_call_and_then_its_drop_panic_fails_only_that_request() {
    let (server, cert_pem) = common::loopback_server();
    let port = server.local_addr().port();
    let serving = tokio::spawn(server.serve_service(Fragile::default()));
    let client = common::client_trusting(&cert_pem);
    let base = format!("https://localhost:{port}");
    for _ in 0..2 {
        // Its stream is reset; the server lives on.
        assert!(client.get(&format!("{base}/both")).await.is_err());
        let mut resp = client.get(&format!("{base}/")).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.body_mut().collect(64).await.unwrap(), "fine");
    }
    assert!(!serving.is_finished());
    serving.abort();
}
