//! quay's HTTP/3 client against quay's HTTP/3 server over loopback, for every route of
//! `h3-server`; and the example binaries themselves.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use quay::h3::{Client, Server};
use quay::io::TlsConfig;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

struct Running {
    addr: std::net::SocketAddr,
    cert_pem: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), quay::h3::ServeError>>,
}

fn start(root: Option<PathBuf>) -> Running {
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let server = Server::builder()
        .tls(identity.config)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let addr = server.local_addr();
    let shutdown = CancellationToken::new();
    let root = std::sync::Arc::new(root);
    let task = tokio::spawn(server.serve_with_shutdown(
        move |req| {
            let root = root.clone();
            async move { quay_examples::routes::handle(req, root.as_deref()).await }
        },
        shutdown.clone(),
        Duration::from_secs(10),
    ));
    Running {
        addr,
        cert_pem: identity.cert_pem,
        shutdown,
        task,
    }
}

fn client(cert_pem: &str) -> Client {
    Client::builder()
        .add_root_certificate_pem(cert_pem.as_bytes())
        .unwrap()
        .build()
}

fn url(server: &Running, path: &str) -> String {
    format!("https://localhost:{}{path}", server.addr.port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_over_loopback() {
    quay_examples::init_tracing();
    let root = std::env::temp_dir().join(format!("quay-www-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("hello.txt"), "hello, file\n").unwrap();
    let server = start(Some(root.clone()));
    let client = client(&server.cert_pem);

    // GET /bytes/N: exactly N bytes, byte i = i % 256.
    let n = 3 * 1024 * 1024 + 7;
    let mut resp = client
        .get(&url(&server, &format!("/bytes/{n}")))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.body_mut().collect(n + 1).await.unwrap();
    assert_eq!(body.len(), n);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));

    // POST /echo: the body back.
    let payload: Bytes = (0..1_000_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let mut resp = client
        .post(&url(&server, "/echo"), payload.clone())
        .await
        .unwrap();
    assert_eq!(resp.body_mut().collect(2_000_000).await.unwrap(), payload);

    // POST /sha256: the hex digest.
    let mut resp = client
        .post(&url(&server, "/sha256"), payload.clone())
        .await
        .unwrap();
    let hex: String = Sha256::digest(&payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(resp.body_mut().collect(100).await.unwrap(), hex.as_bytes());

    // POST /bytes/N: the body is dropped, N pattern bytes come back.
    let mut resp = client
        .post(&url(&server, "/bytes/4096"), payload.slice(..512))
        .await
        .unwrap();
    let body = resp.body_mut().collect(10_000).await.unwrap();
    assert_eq!(body.len(), 4096);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));

    // POST /upload: the sink answers with the length it read.
    let mut resp = client
        .post(&url(&server, "/upload"), payload.clone())
        .await
        .unwrap();
    assert_eq!(resp.body_mut().collect(100).await.unwrap(), "1000000\n");

    // GET /trailers: body, then trailers.
    let mut resp = client.get(&url(&server, "/trailers")).await.unwrap();
    assert_eq!(
        resp.body_mut().collect(100).await.unwrap(),
        "trailers follow\n"
    );
    let trailers = resp.body_mut().trailers().await.unwrap().unwrap();
    assert_eq!(trailers["x-trailer"], "yes");

    // Files, and nothing outside the root.
    let mut resp = client.get(&url(&server, "/hello.txt")).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body_mut().collect(100).await.unwrap(), "hello, file\n");
    assert_eq!(
        client
            .get(&url(&server, "/missing"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(&url(&server, "/../../etc/passwd"))
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(&url(&server, "/%2e%2e/etc/passwd"))
            .await
            .unwrap()
            .status(),
        404
    );

    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_lets_in_flight_downloads_complete() {
    let server = start(None);
    let mut settings = quay::io::QuicSettings::default();
    settings.handshake_timeout = Duration::from_secs(1);
    let client = Client::builder()
        .add_root_certificate_pem(server.cert_pem.as_bytes())
        .unwrap()
        .settings(settings)
        .build();
    let n = 50 * 1024 * 1024;
    let mut resp = client
        .get(&url(&server, &format!("/bytes/{n}")))
        .await
        .unwrap();
    let first = resp.body_mut().chunk().await.unwrap().unwrap();
    // Shut down while the download is in flight.
    server.shutdown.cancel();
    let mut total = first.len();
    while let Some(c) = resp.body_mut().chunk().await.unwrap() {
        total += c.len();
    }
    assert_eq!(total, n);
    let after = url(&server, "/bytes/10");
    server.task.await.unwrap().unwrap();
    // New requests no longer get through: the listener is gone.
    match client.get(&after).await {
        Err(e) if e.is_timeout() && e.is_connect() => {}
        other => panic!("unexpected: {other:?}"),
    }
}

/// Answers every request with whether it arrived in 0-RTT (`x-early`).
async fn early_data_probe(
    req: http::Request<quay::h3::RecvBody>,
) -> Result<http::Response<quay::h3::Body>, std::convert::Infallible> {
    let early = req.extensions().get::<quay::h3::EarlyData>().is_some();
    Ok(http::Response::builder()
        .header("x-early", if early { "1" } else { "0" })
        .body(quay::h3::Body::from("ok"))
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_and_sends_safe_requests_in_0rtt() {
    quay_examples::init_tracing();
    let identity = TlsConfig::self_signed(&["localhost"]).unwrap();
    let mut server_settings = quay::io::QuicSettings::default();
    server_settings.enable_early_data = true;
    let server = Server::builder()
        .tls(identity.config)
        .settings(server_settings)
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let port = server.local_addr().port();
    let _task = tokio::spawn(server.serve(early_data_probe));

    // Connections close after 300 ms idle, so every request below needs a new one.
    let mut settings = quay::io::QuicSettings::default();
    settings.idle_timeout = Duration::from_millis(300);
    let client = Client::builder()
        .add_root_certificate_pem(identity.cert_pem.as_bytes())
        .unwrap()
        .settings(settings)
        .enable_0rtt()
        .build();
    let url = format!("https://localhost:{port}/");
    let early = |resp: &http::Response<quay::h3::RecvBody>| resp.headers()["x-early"].clone();

    // First contact: a full handshake, no early data.
    assert_eq!(early(&client.get(&url).await.unwrap()), "0");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Resumed: the GET goes in 0-RTT.
    assert_eq!(early(&client.get(&url).await.unwrap()), "1");
    tokio::time::sleep(Duration::from_millis(800)).await;
    // A POST is not safe to replay: it waits for the handshake.
    assert_eq!(early(&client.post(&url, "data").await.unwrap()), "0");
}

#[test]
fn the_example_binaries_serve_and_fetch() {
    let dir = std::env::temp_dir().join(format!("quay-bins-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let (mut server, addr) = start_binary(env!("CARGO_BIN_EXE_h3-server"), &cert);
    let port = addr.rsplit(':').next().unwrap();
    let out = dir.join("download.bin");
    let status = Command::new(env!("CARGO_BIN_EXE_h3-client"))
        .arg("--ca")
        .arg(&cert)
        .arg("-o")
        .arg(&out)
        .arg(format!("https://localhost:{port}/bytes/1000000"))
        .status()
        .unwrap();
    assert!(status.success());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), 1_000_000);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
    // A non-2xx response makes the client fail.
    let status = Command::new(env!("CARGO_BIN_EXE_h3-client"))
        .arg("--ca")
        .arg(&cert)
        .arg(format!("https://localhost:{port}/missing"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Starts a server binary on a free port; returns it and its address.
fn start_binary(bin: &str, cert: &std::path::Path) -> (std::process::Child, String) {
    let mut server = Command::new(bin)
        .args(["--listen", "127.0.0.1:0", "--write-cert"])
        .arg(cert)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    (server, addr)
}

/// The number field `key` of quay-load's JSON summary.
fn json_number(path: &std::path::Path, key: &str) -> f64 {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn quay_load_counts_http3_and_raw_requests() {
    let dir = std::env::temp_dir().join(format!("quay-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (env!("CARGO_BIN_EXE_h3-server"), false),
        (env!("CARGO_BIN_EXE_echo-server"), true),
    ];
    for (i, (bin, raw)) in cases.into_iter().enumerate() {
        let cert = dir.join(format!("cert-{i}.pem"));
        let json = dir.join(format!("load-{i}.json"));
        let (mut server, addr) = start_binary(bin, &cert);
        let mut load = Command::new(env!("CARGO_BIN_EXE_quay-load"));
        load.args(["--connect", &addr, "--server-name", "localhost", "--ca"])
            .arg(&cert)
            .args(["--connections", "2", "--inflight", "5", "--requests", "60"])
            .args(["--request-size", "3000", "--json"])
            .arg(&json)
            .stdout(std::process::Stdio::null());
        if raw {
            load.arg("--raw");
        } else {
            load.args(["--response-size", "5000"]);
        }
        let status = load.status().unwrap();
        let _ = server.kill();
        let _ = server.wait();
        assert!(status.success(), "raw: {raw}");
        assert_eq!(json_number(&json, "requests"), 60.0);
        assert_eq!(json_number(&json, "errors"), 0.0);
        assert_eq!(json_number(&json, "bytes_up"), 60.0 * 3000.0);
        let down = if raw { 3000.0 } else { 5000.0 };
        assert_eq!(json_number(&json, "bytes_down"), 60.0 * down);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigterm_drains_the_server_and_a_download_in_flight_completes() {
    let dir = std::env::temp_dir().join(format!("quay-term-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let (mut server, addr) = start_binary(env!("CARGO_BIN_EXE_h3-server"), &cert);
    let port = addr.rsplit(':').next().unwrap();
    let out = dir.join("download.bin");
    const LEN: usize = 30_000_000;
    let mut client = Command::new(env!("CARGO_BIN_EXE_h3-client"))
        .arg("--ca")
        .arg(&cert)
        .arg("-o")
        .arg(&out)
        .arg(format!("https://localhost:{port}/bytes/{LEN}"))
        .spawn()
        .unwrap();
    // Under way (the first bytes are written), then the signal a container runtime
    // sends to stop a process.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&out).map_or(0, |m| m.len()) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(client.wait().unwrap().success(), "the download failed");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(bytes.len(), LEN);
    assert!(bytes.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
    // The server drained and exited on its own, successfully.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = server.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
