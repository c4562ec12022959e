//! A curl for HTTP/3.
//!
//! ```text
//! h3-client URL... [-X METHOD] [-H 'Name: value']... [-d @FILE|STRING] [-I] [-i] [-v]
//!                  [-o PATH] [-L] [--max-time SECS] [--connect-timeout SECS]
//!                  [--ca PEM | --insecure] [--cert PEM --key PEM]
//!                  [--parallel N] [--repeat N] [--stats] [--migrate-after BYTES]
//! ```
//!
//! Every request for every URL goes over one connection per server. A download to a
//! file shows a progress bar when stderr is a terminal. Exit codes (curl's numbers
//! where curl has one):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every response was 2xx and complete |
//! | 1 | an HTTP error: a response outside 2xx |
//! | 2 | bad arguments, or a local file that cannot be read |
//! | 3 | a malformed URL |
//! | 6 | the host did not resolve |
//! | 7 | no connection: refused, closed during the handshake |
//! | 23 | the output could not be written |
//! | 28 | a timeout: connect, handshake, `--max-time`, or between body chunks |
//! | 35 | TLS failed: an alert, no common ALPN, a client certificate refused |
//! | 47 | too many redirects, or one away from https |
//! | 56 | the response failed on the way (reset, connection lost, malformed), or the connection could not move to a new socket (`--migrate-after`) |
//! | 60 | the server's certificate is not trusted |
//!
//! With several URLs, the first failure's code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use quay::h3::{Client, ClientError, ConnectionInfo, RedirectPolicy};
use quay::io::{ConnectError, ConnectionHandle};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(about = "HTTP/3 client: curl's everyday flags over QUIC")]
struct Args {
    /// URLs to fetch (https://host:port/path).
    #[arg(required = true)]
    urls: Vec<String>,
    /// Write the body to this file, or into this directory for several URLs.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// Send this body (POST unless -X says otherwise): `@FILE` reads a file, anything
    /// else is sent as is.
    #[arg(short = 'd', long)]
    data: Option<String>,
    /// The request method.
    #[arg(short = 'X', long = "request")]
    method: Option<String>,
    /// A request header, `Name: value`; repeatable.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// HEAD: print the response headers only.
    #[arg(short = 'I', long)]
    head: bool,
    /// Print the response status and headers before the body.
    #[arg(short = 'i', long)]
    include: bool,
    /// Describe the connection and the exchange on stderr: address, ALPN, TLS,
    /// resumption, 0-RTT, the server's certificate, timings, headers both ways.
    #[arg(short, long)]
    verbose: bool,
    /// Follow redirects (up to 10; never away from https).
    #[arg(short = 'L', long)]
    location: bool,
    /// Seconds the whole exchange may take.
    #[arg(long)]
    max_time: Option<f64>,
    /// Seconds connecting may take.
    #[arg(long)]
    connect_timeout: Option<f64>,
    /// Trust the certificates in this PEM file (besides the system's).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(short = 'k', long, conflicts_with = "ca")]
    insecure: bool,
    /// Client certificate chain, PEM (mutual TLS).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Client private key, PEM.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Requests in flight at once (on the same connection).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Fetch every URL this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print time, bytes and throughput per request, and a summary.
    #[arg(long)]
    stats: bool,
    /// Once this many body bytes have arrived, move the connection to a fresh local
    /// port (connection migration, RFC 9000 §9), printing `* migrated to ADDR`.
    #[arg(long)]
    migrate_after: Option<u64>,
}

/// A failure, and the exit code that names it.
struct Failed {
    code: i32,
    message: String,
}

impl Failed {
    fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ClientError> for Failed {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::InvalidUri(_) => 3,
            ClientError::Resolve { .. } => 6,
            _ if e.is_timeout() => 28,
            ClientError::Connect(c) => match &**c {
                ConnectError::Tls { by_peer: false, .. } => 60,
                _ if e.is_tls() => 35,
                _ => 7,
            },
            _ if e.is_tls() => 35,
            _ if e.is_redirect() => 47,
            ClientError::Stream(_) => 56,
            _ => 7,
        };
        Self::new(code, format!("{e}"))
    }
}

impl From<quay::h3::StreamError> for Failed {
    fn from(e: quay::h3::StreamError) -> Self {
        ClientError::Stream(e).into()
    }
}

struct Outcome {
    url: String,
    status: u16,
    bytes: u64,
    secs: f64,
    error: Option<Failed>,
}

/// What every request shares.
struct Plan {
    method: http::Method,
    headers: http::HeaderMap,
    data: Option<Bytes>,
    include: bool,
    head: bool,
    verbose: bool,
    progress: bool,
    migrate_after: Option<u64>,
}

fn main() {
    let code = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("h3-client: cannot start the runtime: {e}");
            2
        }
    };
    std::process::exit(code);
}

async fn run() -> i32 {
    quay_examples::init_tracing();
    let args = Args::parse();
    let (client, plan) = match setup(&args) {
        Ok(ready) => ready,
        Err(e) => {
            eprintln!("h3-client: {e:#}");
            return 2;
        }
    };
    let several = args.urls.len() * args.repeat > 1;
    if let Some(out) = &args.output
        && several
        && let Err(e) = std::fs::create_dir_all(out)
    {
        eprintln!("h3-client: cannot create {}: {e}", out.display());
        return 23;
    }
    let plan = Arc::new(Plan {
        progress: !several && args.output.is_some() && std::io::stderr().is_terminal(),
        ..plan
    });
    let limit = Arc::new(Semaphore::new(args.parallel.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for round in 0..args.repeat {
        for url in &args.urls {
            let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                break;
            };
            let (client, url, plan) = (client.clone(), url.clone(), Arc::clone(&plan));
            let output = args.output.clone().map(|o| {
                if several {
                    let name = url
                        .rsplit('/')
                        .next()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("index");
                    o.join(format!("{round}-{name}"))
                } else {
                    o
                }
            });
            tasks.push(tokio::spawn(async move {
                let outcome = fetch(&client, &url, &plan, output).await;
                drop(permit);
                outcome
            }));
        }
    }
    let mut first_code = 0;
    let mut failed = 0;
    let mut total_bytes = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let o = match t.await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("h3-client: a request task failed: {e}");
                first_code = if first_code == 0 { 2 } else { first_code };
                continue;
            }
        };
        total_bytes += o.bytes;
        latencies.push(o.secs);
        let code = if let Some(e) = &o.error {
            eprintln!("{}: {}", o.url, e.message);
            e.code
        } else if !(200..300).contains(&o.status) {
            eprintln!("{}: status {}", o.url, o.status);
            1
        } else {
            0
        };
        if code != 0 {
            failed += 1;
            if first_code == 0 {
                first_code = code;
            }
        }
        if args.stats {
            eprintln!(
                "{} {} {} bytes {:.3} ms {}",
                o.status,
                o.url,
                o.bytes,
                o.secs * 1000.0,
                quay_examples::rate(o.bytes, o.secs)
            );
        }
    }
    if args.stats && !latencies.is_empty() {
        let secs = started.elapsed().as_secs_f64();
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize] * 1000.0;
        eprintln!(
            "{} requests, {failed} failed, {total_bytes} bytes in {secs:.3} s: {:.0} requests/s, {}; latency p50 {:.3} ms, p99 {:.3} ms",
            latencies.len(),
            latencies.len() as f64 / secs,
            quay_examples::rate(total_bytes, secs),
            pct(0.5),
            pct(0.99)
        );
    }
    if failed > 0 {
        eprintln!(
            "h3-client: {failed} of {} request(s) failed",
            latencies.len()
        );
    }
    first_code
}

/// The client and the request plan from the arguments.
fn setup(args: &Args) -> anyhow::Result<(Client, Plan)> {
    let secs = |what: &str, s: f64| -> anyhow::Result<Duration> {
        if !s.is_finite() || s <= 0.0 || s > 86_400.0 {
            anyhow::bail!("{what} {s} is not a usable number of seconds (0 to 86400)");
        }
        Ok(Duration::from_secs_f64(s))
    };
    let mut builder = Client::builder();
    if args.insecure {
        builder = builder.insecure();
    } else if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        builder = builder.add_root_certificate_pem(&pem)?;
    }
    if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
        builder = builder.identity(quay::io::TlsConfig::from_pem_files(cert, key)?);
    }
    if let Some(t) = args.max_time {
        builder = builder.timeout(secs("--max-time", t)?);
    }
    if let Some(t) = args.connect_timeout {
        builder = builder.connect_timeout(secs("--connect-timeout", t)?);
    }
    builder = builder.redirect(if args.location {
        RedirectPolicy::limited(10)
    } else {
        RedirectPolicy::none()
    });
    let mut headers = http::HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("-H {h:?}: expected `Name: value`"))?;
        let name = http::HeaderName::try_from(name.trim())
            .with_context(|| format!("-H {h:?}: invalid header name"))?;
        let value = http::HeaderValue::try_from(value.trim())
            .with_context(|| format!("-H {h:?}: invalid header value"))?;
        headers.append(name, value);
    }
    let data = match &args.data {
        None => None,
        Some(d) => Some(match d.strip_prefix('@') {
            Some(file) => {
                Bytes::from(std::fs::read(file).with_context(|| format!("cannot read {file}"))?)
            }
            None => Bytes::from(d.clone()),
        }),
    };
    let method = match (&args.method, args.head, &data) {
        (Some(m), _, _) => http::Method::from_bytes(m.as_bytes())
            .with_context(|| format!("-X {m:?}: not a method"))?,
        (None, true, _) => http::Method::HEAD,
        (None, false, Some(_)) => http::Method::POST,
        (None, false, None) => http::Method::GET,
    };
    let plan = Plan {
        method,
        headers,
        data,
        include: args.include || args.head,
        head: args.head,
        verbose: args.verbose,
        progress: false,
        migrate_after: args.migrate_after,
    };
    Ok((builder.build(), plan))
}

async fn fetch(client: &Client, url: &str, plan: &Plan, output: Option<PathBuf>) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        url: url.to_owned(),
        status: 0,
        bytes: 0,
        secs: 0.0,
        error: None,
    };
    let result = async {
        let mut req = http::Request::builder()
            .method(plan.method.clone())
            .uri(url)
            .body(plan.data.clone().unwrap_or_default())
            .map_err(|_| Failed::new(3, format!("invalid URL {url}")))?;
        *req.headers_mut() = plan.headers.clone();
        if plan.verbose {
            eprintln!("> {} {} HTTP/3", req.method(), req.uri());
            for (name, value) in req.headers() {
                eprintln!("> {name}: {}", String::from_utf8_lossy(value.as_bytes()));
            }
        }
        let mut resp = client.request(req).await?;
        let head_at = started.elapsed();
        outcome.status = resp.status().as_u16();
        if plan.verbose {
            describe(&resp, head_at);
        }
        let mut sink: Box<dyn SinkWrite> =
            match &output {
                Some(path) => Box::new(tokio::fs::File::create(path).await.map_err(|e| {
                    Failed::new(23, format!("cannot create {}: {e}", path.display()))
                })?),
                None => Box::new(tokio::io::stdout()),
            };
        let write_err = |e: std::io::Error| Failed::new(23, format!("cannot write the body: {e}"));
        if plan.include {
            let mut head = format!("HTTP/3 {}\r\n", resp.status().as_u16());
            for (name, value) in resp.headers() {
                head.push_str(&format!(
                    "{name}: {}\r\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            head.push_str("\r\n");
            sink.write_all(head.as_bytes()).await.map_err(write_err)?;
        }
        let expected: Option<u64> = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let bar = plan.progress.then(|| progress_bar(expected));
        let mut migrate = plan.migrate_after.and_then(|after| {
            let handle = resp.extensions().get::<ConnectionHandle>()?.clone();
            let mut local = resp.extensions().get::<ConnectionInfo>()?.local_addr();
            local.set_port(0);
            Some((after, handle, local))
        });
        if !plan.head {
            while let Some(chunk) = resp.body_mut().chunk().await? {
                outcome.bytes += chunk.len() as u64;
                if let Some((after, handle, local)) = &migrate
                    && outcome.bytes >= *after
                {
                    let to = handle
                        .migrate(*local)
                        .await
                        .map_err(|e| Failed::new(56, format!("cannot migrate: {e}")))?;
                    eprintln!("* migrated to {to}");
                    migrate = None;
                }
                sink.write_all(&chunk).await.map_err(write_err)?;
                if let Some(bar) = &bar {
                    bar.set_position(outcome.bytes);
                }
            }
        }
        sink.flush().await.map_err(write_err)?;
        if let Some(bar) = bar {
            bar.finish();
        }
        if !plan.head
            && let Some(n) = expected
            && n != outcome.bytes
        {
            return Err(Failed::new(
                56,
                format!("body of {} bytes, content-length said {n}", outcome.bytes),
            ));
        }
        if plan.verbose {
            eprintln!(
                "* {} bytes; first byte after {:.3} ms, done after {:.3} ms",
                outcome.bytes,
                head_at.as_secs_f64() * 1000.0,
                started.elapsed().as_secs_f64() * 1000.0
            );
        }
        Ok::<(), Failed>(())
    }
    .await;
    outcome.secs = started.elapsed().as_secs_f64();
    outcome.error = result.err();
    outcome
}

/// `-v`: the connection and the response head, on stderr.
fn describe(resp: &http::Response<quay::h3::RecvBody>, head_at: Duration) {
    if let Some(conn) = resp.extensions().get::<quay::h3::ConnectionInfo>() {
        let hs = conn.handshake();
        eprintln!(
            "* connected to {} from {} (connection {})",
            conn.peer_addr(),
            conn.local_addr(),
            conn.id()
        );
        eprintln!(
            "* TLS 1.3 over QUIC, cipher {}, key exchange {}, ALPN {}, handshake {:.3} ms, session {}, 0-RTT {}",
            hs.cipher.unwrap_or("unknown"),
            hs.key_exchange.unwrap_or("unknown"),
            String::from_utf8_lossy(conn.alpn()),
            hs.duration.as_secs_f64() * 1000.0,
            if hs.resumed { "resumed" } else { "new" },
            if hs.early_data_accepted {
                "accepted"
            } else {
                "not used"
            }
        );
        if let Some(leaf) = conn.peer_certificates().first()
            && let Ok(cert) = boring::x509::X509::from_der(leaf)
        {
            let subject: Vec<String> = cert
                .subject_name()
                .entries()
                .map(|e| {
                    let key = e.object().nid().short_name().unwrap_or("?");
                    let value = e
                        .data()
                        .as_utf8()
                        .map(|v| v.to_string())
                        .unwrap_or_default();
                    format!("{key}={value}")
                })
                .collect();
            eprintln!(
                "* server certificate: {}; expires {}",
                subject.join(", "),
                cert.not_after()
            );
        }
    }
    eprintln!(
        "< HTTP/3 {} (head after {:.3} ms)",
        resp.status().as_u16(),
        head_at.as_secs_f64() * 1000.0
    );
    for (name, value) in resp.headers() {
        eprintln!("< {name}: {}", String::from_utf8_lossy(value.as_bytes()));
    }
}

fn progress_bar(len: Option<u64>) -> indicatif::ProgressBar {
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n).with_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        ),
        None => indicatif::ProgressBar::new_spinner().with_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar
}

trait SinkWrite: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> SinkWrite for T {}
