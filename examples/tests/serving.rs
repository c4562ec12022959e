//! The serving binaries as a deployment runs them: several sockets, a certificate
//! reloaded on SIGHUP, metrics scraped over HTTP, and axum-h3 answering over HTTP/3,
//! HTTP/2 and HTTP/1.1 on one port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quay::h3::{Client, ClientH3Driver, H3Settings};
use quay::io::{ClientParams, ClientTlsConfig, TlsConfig};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("quay-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin` with `args`; returns it, the addresses of its `listening on` lines
/// (`n` of them) and its other stdout lines before them. Its log goes to `log`.
fn start(bin: &str, args: &[&str], n: usize, log: &Path) -> (Proc, Vec<SocketAddr>, Vec<String>) {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let proc = Proc(child);
    let (mut addrs, mut other) = (Vec::new(), Vec::new());
    while addrs.len() < n {
        let mut line = String::new();
        let read = out.read_line(&mut line).unwrap();
        assert!(
            read > 0,
            "{bin} ended: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        match line.trim().strip_prefix("listening on ") {
            Some(addr) => addrs.push(addr.parse().unwrap()),
            None => other.push(line.trim().to_owned()),
        }
    }
    (proc, addrs, other)
}

fn write_identity(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
    let generated = TlsConfig::self_signed(&["localhost", "127.0.0.1", "::1"]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &generated.cert_pem).unwrap();
    std::fs::write(&key, &generated.key_pem).unwrap();
    let der = boring::x509::X509::from_pem(generated.cert_pem.as_bytes())
        .unwrap()
        .to_der()
        .unwrap();
    (cert, key, der)
}

/// The leaf certificate a server at `addr` presents now (not verified).
async fn served_leaf(addr: SocketAddr) -> Vec<u8> {
    let mut params = ClientParams::new(&[quay::h3::ALPN]);
    params.tls = ClientTlsConfig::insecure();
    params.server_name = Some("localhost".into());
    let (driver, _send) = ClientH3Driver::new(H3Settings::default());
    let conn = quay::io::connect(addr, params, driver).await.unwrap();
    let leaf = conn.handshake_info().unwrap().peer_certificates[0].clone();
    conn.close(0, b"").await;
    leaf
}

async fn get_text(client: &Client, url: &str) -> (u16, String) {
    let mut resp = client.get(url).await.unwrap();
    let body = resp.body_mut().collect(1 << 20).await.unwrap();
    (
        resp.status().as_u16(),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn client(ca: &Path) -> Client {
    Client::builder()
        .add_root_certificate_pem(&std::fs::read(ca).unwrap())
        .unwrap()
        .build()
}

fn signal(proc: &Proc, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &proc.0.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Polls `f` every 50 ms until it returns `Some`, for up to 20 s.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_server_listens_on_several_sockets_and_dual_stack() {
    let dir = Scratch::new("listen");
    let cert = dir.0.join("cert.pem");
    let log = dir.0.join("server.log");
    let cert_arg = cert.to_str().unwrap();
    let (server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:0",
            "--write-cert",
            cert_arg,
        ],
        2,
        &log,
    );
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    let c = client(&cert);
    let (status, body) = get_text(
        &c,
        &format!("https://127.0.0.1:{}/bytes/5", addrs[0].port()),
    )
    .await;
    assert_eq!((status, body.as_bytes()), (200, &[0u8, 1, 2, 3, 4][..]));
    let (status, body) = get_text(&c, &format!("https://[::1]:{}/bytes/3", addrs[1].port())).await;
    assert_eq!((status, body.as_bytes()), (200, &[0u8, 1, 2][..]));
    drop(server);

    // One [::] socket takes IPv4 and IPv6 clients alike.
    let (_server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &["--listen", "[::]:0", "--write-cert", cert_arg],
        1,
        &log,
    );
    let port = addrs[0].port();
    let c = client(&cert);
    for host in ["127.0.0.1", "[::1]"] {
        let (status, body) = get_text(&c, &format!("https://{host}:{port}/bytes/2")).await;
        assert_eq!((status, body.as_bytes()), (200, &[0u8, 1][..]), "{host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let dir = Scratch::new("reload");
    let (cert, key, first) = write_identity(&dir.0, "first");
    let log = dir.0.join("server.log");
    let (server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
        1,
        &log,
    );
    let addr = addrs[0];
    assert_eq!(served_leaf(addr).await, first);

    // The files are replaced in place, as a certificate renewal does.
    let (new_cert, new_key, second) = write_identity(&dir.0, "second");
    std::fs::copy(&new_cert, &cert).unwrap();
    std::fs::copy(&new_key, &key).unwrap();
    signal(&server, "-HUP");
    eventually("the new certificate served", || async {
        (served_leaf(addr).await == second).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("TLS identity reloaded"), "{text}");
    assert!(text.contains("CN=") || text.contains("subject="), "{text}");

    // A broken key: refused, with the reason, and the current identity stays.
    std::fs::write(&key, "not a key").unwrap();
    signal(&server, "-HUP");
    eventually("the refusal logged", || async {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("TLS reload refused")
            .then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("private key"), "{text}");
    assert_eq!(served_leaf(addr).await, second);
}

/// The value of the Prometheus sample `name` (with its labels, as printed).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// GET `path` from a plain HTTP server, as a scraper does.
fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_in_prometheus_format_with_the_right_counts() {
    let dir = Scratch::new("metrics");
    let cert = dir.0.join("cert.pem");
    let log = dir.0.join("server.log");
    let metrics_addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (_server, addrs, other) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--write-cert",
            cert.to_str().unwrap(),
            "--metrics-listen",
            &metrics_addr.to_string(),
        ],
        1,
        &log,
    );
    assert_eq!(other, [format!("metrics on http://{metrics_addr}/metrics")]);
    let c = client(&cert);
    let base = format!("https://localhost:{}", addrs[0].port());
    for _ in 0..5 {
        assert_eq!(get_text(&c, &format!("{base}/bytes/10")).await.0, 200);
    }
    for _ in 0..2 {
        assert_eq!(get_text(&c, &format!("{base}/missing")).await.0, 404);
    }
    // Counted when each response has gone out: poll until all seven are in.
    let text = eventually("seven responses counted", || async {
        let text = http_get(metrics_addr, "/metrics");
        (sample(&text, "quay_http_requests_total") == Some(7.0)).then_some(text)
    })
    .await;
    assert_eq!(
        sample(&text, "quay_http_responses_total{class=\"2xx\"}"),
        Some(5.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "quay_http_responses_total{class=\"4xx\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "quay_handshakes_total"), Some(1.0), "{text}");
    assert_eq!(
        sample(&text, "quay_connections_active"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "quay_http_requests_active"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "quay_initials_accepted_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        text.contains("quay_http_request_duration_seconds"),
        "{text}"
    );
}

/// An HTTPS request over TCP with ALPN `alpn` (`h2` or `http/1.1`): the status, the
/// Alt-Svc header and the body.
async fn tcp_get(addr: SocketAddr, alpn: &[u8], path: &str) -> (u16, String, String) {
    use http_body_util::BodyExt;
    let mut tls = boring::ssl::SslConnector::builder(boring::ssl::SslMethod::tls()).unwrap();
    tls.set_verify(boring::ssl::SslVerifyMode::NONE);
    let mut wire = vec![alpn.len() as u8];
    wire.extend_from_slice(alpn);
    tls.set_alpn_protos(&wire).unwrap();
    let config = tls.build().configure().unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_boring::connect(config, "localhost", tcp)
        .await
        .unwrap();
    assert_eq!(stream.ssl().selected_alpn_protocol(), Some(alpn));
    let io = hyper_util::rt::TokioIo::new(stream);
    let req = http::Request::get(format!("https://localhost:{}{path}", addr.port()))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = if alpn == b"h2" {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let alt_svc = resp
        .headers()
        .get(http::header::ALT_SVC)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, alt_svc, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn axum_h3_serves_one_router_over_http3_http2_and_http1_on_one_port() {
    let dir = Scratch::new("axum");
    let (cert, key, _) = write_identity(&dir.0, "id");
    let root = dir.0.join("www");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("index.html"), "<p>hello</p>\n").unwrap();
    let log = dir.0.join("server.log");
    let (_server, addrs, _) = start(
        env!("CARGO_BIN_EXE_axum-h3"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ],
        1,
        &log,
    );
    let addr = addrs[0];
    let c = client(&cert);
    let base = format!("https://localhost:{}", addr.port());
    let (status, text) = get_text(&c, &format!("{base}/whoami")).await;
    assert_eq!(status, 200);
    assert!(
        text.starts_with("127.0.0.1:") && text.contains(" HTTP/3.0 h3 conn="),
        "{text}"
    );
    let (status, text) = get_text(&c, &format!("{base}/")).await;
    assert_eq!((status, text.as_str()), (200, "<p>hello</p>\n"));
    let mut resp = c
        .post(&format!("{base}/sha256"), Bytes::from_static(b"abc"))
        .await
        .unwrap();
    let digest = resp.body_mut().collect(1024).await.unwrap();
    assert_eq!(
        digest,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );

    let want_alt_svc = format!("h3=\":{}\"; ma=86400", addr.port());
    for (alpn, version) in [(&b"h2"[..], "HTTP/2.0"), (&b"http/1.1"[..], "HTTP/1.1")] {
        let (status, alt_svc, text) = tcp_get(addr, alpn, "/whoami").await;
        assert_eq!(status, 200);
        assert_eq!(alt_svc, want_alt_svc);
        assert!(
            text.starts_with("127.0.0.1:") && text.ends_with(&format!(" {version} tcp\n")),
            "{text}"
        );
        let (status, _, text) = tcp_get(addr, alpn, "/").await;
        assert_eq!((status, text.as_str()), (200, "<p>hello</p>\n"));
    }
}

/// Runs h3-client with `args`; its exit code, stdout and stderr.
fn h3_client(args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_h3-client"))
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_takes_curls_everyday_flags_and_exits_with_telling_codes() {
    let dir = Scratch::new("curl");
    let cert = dir.0.join("cert.pem");
    let log = dir.0.join("server.log");
    let (_server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--write-cert",
            cert.to_str().unwrap(),
        ],
        1,
        &log,
    );
    let base = format!("https://localhost:{}", addrs[0].port());
    let ca = cert.to_str().unwrap();
    let url = |p: &str| format!("{base}{p}");

    // -H, and the headers as the server saw them.
    let (code, out, _) = h3_client(&[
        "--ca",
        ca,
        "-H",
        "x-one: 1",
        "-H",
        "X-Two:two",
        &url("/headers"),
    ]);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0);
    assert!(
        text.contains("x-one: 1\n") && text.contains("x-two: two\n"),
        "{text}"
    );
    // -d (POST), -X, -i.
    let (code, out, _) = h3_client(&["--ca", ca, "-d", "hello", "-i", &url("/upload")]);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0);
    assert!(
        text.starts_with("HTTP/3 200\r\n") && text.ends_with("\r\n\r\n5\n"),
        "{text:?}"
    );
    let (code, out, _) = h3_client(&["--ca", ca, "-X", "POST", "-d", "abc", &url("/sha256")]);
    assert_eq!(code, 0);
    assert!(String::from_utf8(out).unwrap().starts_with("ba7816bf"));
    // -I: the head only.
    let (code, out, _) = h3_client(&["--ca", ca, "-I", &url("/bytes/1000")]);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(code, 0);
    assert!(
        text.starts_with("HTTP/3 200\r\n") && text.contains("content-length: 1000\r\n"),
        "{text:?}"
    );
    assert!(text.ends_with("\r\n\r\n"), "no body: {text:?}");
    // -v: the connection described on stderr.
    let (code, _, err) = h3_client(&["--ca", ca, "-v", &url("/bytes/10")]);
    assert_eq!(code, 0);
    for want in [
        "* connected to 127.0.0.1:",
        "cipher TLS_AES_",
        "key exchange X25519MLKEM768",
        "ALPN h3",
        "session new",
        "* server certificate:",
        "< HTTP/3 200",
        "> GET ",
    ] {
        assert!(err.contains(want), "{want} in {err}");
    }
    // -L follows redirects; without it the 302 is the answer (not 2xx: code 1).
    let file = dir.0.join("out.bin");
    let (code, _, _) = h3_client(&[
        "--ca",
        ca,
        "-L",
        "-o",
        file.to_str().unwrap(),
        &url("/redirect/3"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        (0u8..10).collect::<Vec<u8>>()
    );
    let (code, _, _) = h3_client(&["--ca", ca, &url("/redirect/3")]);
    assert_eq!(code, 1);
    let (code, _, err) = h3_client(&["--ca", ca, "-L", &url("/redirect/20")]);
    assert_eq!(code, 47, "{err}");

    // Exit codes.
    let (code, _, _) = h3_client(&["--ca", ca, &url("/missing")]);
    assert_eq!(code, 1, "HTTP error");
    let (code, _, err) = h3_client(&[&url("/bytes/1")]);
    assert_eq!(code, 60, "untrusted certificate: {err}");
    let (code, _, _) = h3_client(&["--insecure", &url("/bytes/1")]);
    assert_eq!(code, 0);
    let (code, _, err) = h3_client(&["--ca", ca, "--max-time", "0.3", &url("/bytes/100000000000")]);
    assert_eq!(code, 28, "timeout: {err}");
    let hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let hole_url = format!("https://127.0.0.1:{}/", hole.local_addr().unwrap().port());
    let (code, _, err) = h3_client(&["--ca", ca, "--connect-timeout", "0.3", &hole_url]);
    assert_eq!(code, 28, "connect timeout: {err}");
    let (code, _, _) = h3_client(&["--ca", ca, "http://localhost/"]);
    assert_eq!(code, 3, "malformed URL");
    let (code, _, _) = h3_client(&["--ca", ca, "https://no-such-host.invalid/"]);
    assert_eq!(code, 6, "unresolvable");
    let (code, _, _) = h3_client(&["--ca", "/no/such/file.pem", &url("/")]);
    assert_eq!(code, 2, "a local file that cannot be read");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_client_presents_a_client_certificate() {
    let dir = Scratch::new("curl-mtls");
    let (cert, key, _) = write_identity(&dir.0, "server");
    let (client_cert, client_key, client_der) = write_identity(&dir.0, "client");
    let log = dir.0.join("server.log");
    let (_server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--client-ca",
            client_cert.to_str().unwrap(),
        ],
        1,
        &log,
    );
    let u = format!("https://localhost:{}/bytes/5", addrs[0].port());
    let (code, out, err) = h3_client(&[
        "--ca",
        cert.to_str().unwrap(),
        "--cert",
        client_cert.to_str().unwrap(),
        "--key",
        client_key.to_str().unwrap(),
        &u,
    ]);
    assert_eq!((code, out.as_slice()), (0, &[0u8, 1, 2, 3, 4][..]), "{err}");
    assert!(!client_der.is_empty());
    // Without one: refused, with the server's TLS alert and the TLS exit code.
    let (code, _, err) = h3_client(&["--ca", cert.to_str().unwrap(), &u]);
    assert_eq!(code, 35, "{err}");
    assert!(
        err.contains("server sent alert certificate_required"),
        "{err}"
    );
}

/// Records the connection's destination ID: the ID the server chose for itself.
struct DcidProbe(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl quay::app::ApplicationOverQuic for DcidProbe {
    fn process_reads(
        &mut self,
        _conn: &mut quay::app::QuicConnection,
    ) -> Result<(), quay::app::AppError> {
        Ok(())
    }
    fn process_writes(
        &mut self,
        conn: &mut quay::app::QuicConnection,
    ) -> Result<(), quay::app::AppError> {
        *self.0.lock().unwrap() = conn.destination_id().to_vec();
        Ok(())
    }
}

/// The connection ID the server at `addr` gave itself, as a client addresses it.
async fn server_cid(addr: SocketAddr) -> Vec<u8> {
    let dcid = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut params = ClientParams::new(&[quay::h3::ALPN]);
    params.tls = ClientTlsConfig::insecure();
    params.server_name = Some("localhost".into());
    let probe = quay::io::connect(addr, params, DcidProbe(dcid.clone()))
        .await
        .unwrap();
    probe.close(0, b"").await;
    dcid.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_server_issues_quic_lb_ids_that_carry_its_server_id() {
    let dir = Scratch::new("quic-lb");
    let (cert, key, _) = write_identity(&dir.0, "lb");
    let key_hex = "8f95f09245765f80256934e50c66207f";
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (_server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert_s,
            "--key",
            key_s,
            "--quic-lb-server-id",
            "0a0b0c",
            "--quic-lb-key",
            key_hex,
            "--quic-lb-nonce-len",
            "6",
            "--quic-lb-config-id",
            "2",
        ],
        1,
        &dir.0.join("server.log"),
    );
    let addr = addrs[0];
    let key: [u8; 16] = hex::decode(key_hex).unwrap().try_into().unwrap();
    let config = quay::io::QuicLbConfig::new(2, 3, 6).unwrap().with_key(key);

    let id = server_cid(addr).await;
    assert_eq!(id.len(), config.cid_len(), "{id:02x?}");
    assert_eq!(id[0] >> 5, 2, "config rotation bits");
    assert_eq!(
        config.server_id(&id).map(|s| s.as_bytes().to_vec()),
        Some(vec![0x0a, 0x0b, 0x0c]),
        "{id:02x?}"
    );
    // And the server serves over such IDs: a download, byte for byte.
    let client = client(&cert);
    let mut resp = client
        .get(&format!("https://localhost:{}/bytes/300000", addr.port()))
        .await
        .unwrap();
    let body = resp.body_mut().collect(1 << 20).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len(), 300_000);

    // Bad configurations are refused with a clear error.
    for (args, want) in [
        (
            &["--quic-lb-server-id", "0a", "--quic-lb-key", "00ff"][..],
            "--quic-lb-key is 2 bytes",
        ),
        (
            &["--quic-lb-server-id", "000102030405060708090a0b0c0d0e0f"][..],
            "server ID length 16",
        ),
        (&["--quic-lb-server-id", "xyz"][..], "not hex"),
        (
            &["--quic-lb-server-id", "0a", "--quic-lb-config-id", "7"][..],
            "config id 7",
        ),
    ] {
        assert_refused(cert_s, key_s, args, want);
    }
}

/// h3-server with `args` (beside a listen address and an identity) exits with an
/// error that says `want`.
fn assert_refused(cert: &str, key: &str, args: &[&str], want: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_h3-server"))
        .args(["--listen", "127.0.0.1:0", "--cert", cert, "--key", key])
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(err.contains(want), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_server_shards_spread_clients_and_keep_a_migrating_download() {
    let dir = Scratch::new("shards");
    let (cert, key, _) = write_identity(&dir.0, "shards");
    let (cert_s, key_s) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let (_server, addrs, _) = start(
        env!("CARGO_BIN_EXE_h3-server"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert_s,
            "--key",
            key_s,
            "--shards",
            "4",
            "--stats-route",
            "--quic-lb-server-id",
            "0a0b",
        ],
        1,
        &dir.0.join("server.log"),
    );
    let addr = addrs[0];
    // With shards, QUIC-LB IDs keep their server ID and carry the shard in the low
    // bits of the first octet; 40 clients land on every shard.
    let config = quay::io::QuicLbConfig::new(0, 2, 8)
        .unwrap()
        .without_length_encoding();
    let mut shards_seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let id = server_cid(addr).await;
        assert_eq!(
            config.server_id(&id).map(|s| s.as_bytes().to_vec()),
            Some(vec![0x0a, 0x0b]),
            "{id:02x?}"
        );
        shards_seen.insert(id[0] & 0x1f);
    }
    assert_eq!(
        shards_seen,
        (0..4).collect(),
        "shards the clients landed on"
    );
    // A download that moves to a new port mid-way (most likely hashed to another
    // shard's socket) arrives byte for byte.
    let out = dir.0.join("body");
    let url = format!("https://localhost:{}/bytes/3000000", addr.port());
    let (code, _, stderr) = h3_client(&[
        "--ca",
        cert_s,
        "-o",
        out.to_str().unwrap(),
        "--migrate-after",
        "500000",
        &url,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("* migrated to "), "{stderr}");
    let body = std::fs::read(&out).unwrap();
    assert_eq!(body.len(), 3_000_000);
    assert!(body.iter().enumerate().all(|(i, b)| *b == (i % 256) as u8));
    // The stats route reports each shard.
    let (status, text) = get_text(
        &client(&cert),
        &format!("https://localhost:{}/_quay/stats", addr.port()),
    )
    .await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shards = stats["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 4, "{text}");
    let accepted: u64 = shards.iter().map(|s| s["accepted"].as_u64().unwrap()).sum();
    assert_eq!(stats["accepted"].as_u64(), Some(accepted), "{text}");
    assert!(accepted >= 42, "{text}");
    // Bad shard counts are refused with a clear error.
    for (shards, want) in [("0", "outside 1..=32"), ("33", "outside 1..=32")] {
        assert_refused(cert_s, key_s, &["--shards", shards], want);
    }
}
