//! A load generator for HTTP/3 servers that serve `h3-server`'s routes, and for raw
//! QUIC against `echo-server`.
//!
//! ```text
//! quay-load --connect 127.0.0.1:4433 [--server-name localhost] [--ca PEM | --insecure]
//!           [--connections N] [--inflight M] [--requests COUNT | --duration SECS]
//!           [--request-size B] [--response-size B] [--warmup SECS] [--json PATH]
//!           [--handshakes | --idle-connections N [--no-request]] [--raw]
//! ```
//!
//! N connections, each with M requests in flight. A request is `GET /bytes/R` when the
//! request size is 0, else `POST /bytes/R` with a body of the request size (the
//! server drops it); R is the response size. With `--handshakes`, every request gets
//! a fresh connection (one GET, then close): handshakes per second. With `--raw`, a
//! request is a QUIC stream carrying the request bytes and the response is their echo.
//!
//! Latency is recorded per request (first byte of the request to the last of the
//! response) in an HDR histogram; the summary goes to stdout and, with `--json`, to a
//! file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use quay::h3::{ClientH3Driver, H3Settings, SendRequest};
use quay::io::{ClientParams, ClientTlsConfig, QuicSettings};
use quay_examples::raw_load::{RawClient, RawSender};

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP/3 load generator")]
struct Args {
    /// The server's address.
    #[arg(long)]
    connect: SocketAddr,
    /// TLS key-exchange groups to offer, most preferred first (comma-separated:
    /// x25519mlkem768, x25519, p256, p384) [default: all four, in that order].
    #[arg(long, value_delimiter = ',')]
    key_exchange: Vec<quay::io::KeyExchange>,
    /// The name the certificate must carry (and SNI); default: the address's IP.
    #[arg(long)]
    server_name: Option<String>,
    /// Trust this CA (PEM).
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long)]
    insecure: bool,
    /// Connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    inflight: usize,
    /// Stop after this many requests (over all connections).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Stop after this many seconds (default 10 without --requests).
    #[arg(long)]
    duration: Option<f64>,
    /// Request body bytes (0: GET).
    #[arg(long, default_value_t = 0)]
    request_size: usize,
    /// Response body bytes.
    #[arg(long, default_value_t = 4096)]
    response_size: u64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 0.0)]
    warmup: f64,
    /// A fresh connection per request: measures handshakes.
    #[arg(long)]
    handshakes: bool,
    /// Write the summary as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Open this many connections, print `ready`, hold them idle for `--duration`
    /// seconds (default 10), then close them: for measuring a server's memory per
    /// connection.
    #[arg(long, conflicts_with_all = ["requests", "handshakes"])]
    idle_connections: Option<usize>,
    /// With `--idle-connections`: send no request at all, as a loiterer would (the
    /// server then closes them after its first-request timeout).
    #[arg(long, requires = "idle_connections")]
    no_request: bool,
    /// Raw QUIC against `echo-server` (ALPN quay-echo) instead of HTTP/3: each request
    /// is a stream carrying the request bytes, and the response is their echo (the
    /// response size is the request size).
    #[arg(long, conflicts_with_all = ["idle_connections", "response_size"])]
    raw: bool,
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    connections: usize,
    inflight: usize,
    request_size: usize,
    response_size: u64,
    handshakes: bool,
    seconds: f64,
    requests: u64,
    /// Requests completed including the warm-up: what the server served in all.
    requests_including_warmup: u64,
    errors: u64,
    bytes_down: u64,
    bytes_up: u64,
    requests_per_second: f64,
    goodput_down_bps: f64,
    goodput_up_bps: f64,
    latency_us: Latency,
    /// CPU seconds this process used during the measurement (user + system).
    client_cpu_seconds: f64,
}

#[derive(Debug, serde::Serialize)]
struct Latency {
    mean: f64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

/// What every worker shares.
struct Shared {
    args: Args,
    params: ClientParams,
    /// Requests still to start (count mode).
    budget: Option<AtomicU64>,
    stop: AtomicBool,
    /// Set when the warm-up ends: only requests started after it are measured.
    measuring: AtomicBool,
    body: Bytes,
    authority: String,
}

impl Shared {
    /// The response bytes each request expects.
    fn response_size(&self) -> u64 {
        if self.args.raw {
            self.body.len() as u64
        } else {
            self.args.response_size
        }
    }
}

/// One worker's tally.
struct Tally {
    hist: Histogram<u64>,
    requests: u64,
    all: u64,
    errors: u64,
    down: u64,
    up: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3)?,
            requests: 0,
            all: 0,
            errors: 0,
            down: 0,
            up: 0,
            first_error: None,
        })
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.hist.add(other.hist)?;
        self.requests += other.requests;
        self.all += other.all;
        self.errors += other.errors;
        self.down += other.down;
        self.up += other.up;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    if args.connections == 0 || args.inflight == 0 {
        bail!("--connections and --inflight must be at least 1");
    }
    let alpn = if args.raw {
        quay::app::echo::ALPN
    } else {
        quay::h3::ALPN
    };
    let mut params = ClientParams::new(&[alpn]);
    params.tls = match (&args.ca, args.insecure) {
        (Some(ca), _) => ClientTlsConfig::new()
            .add_root_pem_file(ca)
            .with_context(|| format!("cannot load {}", ca.display()))?,
        (None, true) => ClientTlsConfig::insecure(),
        (None, false) => ClientTlsConfig::new(),
    };
    params.server_name = args.server_name.clone();
    params.settings = QuicSettings::default();
    if !args.key_exchange.is_empty() {
        params.settings.key_exchange = args.key_exchange.clone();
    }
    if let Some(n) = args.idle_connections {
        return hold_idle(n, &args, params).await;
    }
    let authority = match &args.server_name {
        Some(n) => format!("{n}:{}", args.connect.port()),
        None => args.connect.to_string(),
    };
    let shared = Arc::new(Shared {
        budget: args.requests.map(AtomicU64::new),
        stop: AtomicBool::new(false),
        measuring: AtomicBool::new(args.warmup <= 0.0),
        body: Bytes::from(vec![0x5a; args.request_size]),
        authority,
        params,
        args: args.clone(),
    });

    // Connections first (unless each request makes its own), so the measurement
    // starts with every connection ready.
    let mut senders = Vec::new();
    let mut handles = Vec::new();
    if !args.handshakes {
        for _ in 0..args.connections {
            let (send, handle) = open(&shared).await?;
            senders.push(Some(send));
            handles.push(handle);
        }
    } else {
        senders.resize_with(args.connections, || None);
    }

    let cpu_start = cpu_seconds();
    let mut started = Instant::now();
    let mut workers = Vec::new();
    for send in senders {
        for _ in 0..args.inflight {
            let shared = Arc::clone(&shared);
            let send = send.clone();
            workers.push(tokio::spawn(async move { worker(shared, send).await }));
        }
    }
    let mut cpu_measured_from = cpu_start;
    if args.warmup > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        shared.measuring.store(true, Ordering::Release);
        started = Instant::now();
        cpu_measured_from = cpu_seconds();
    }
    if args.requests.is_none() {
        let secs = args.duration.unwrap_or(10.0);
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        shared.stop.store(true, Ordering::Release);
    }
    let mut total = Tally::new()?;
    for w in workers {
        total.merge(w.await??)?;
    }
    for h in handles {
        h.close(0x100, "done").await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_measured_from;
    let h = &total.hist;
    let summary = Summary {
        connections: args.connections,
        inflight: args.inflight,
        request_size: args.request_size,
        response_size: shared.response_size(),
        handshakes: args.handshakes,
        seconds,
        requests: total.requests,
        requests_including_warmup: total.all,
        errors: total.errors,
        bytes_down: total.down,
        bytes_up: total.up,
        requests_per_second: total.requests as f64 / seconds,
        goodput_down_bps: total.down as f64 * 8.0 / seconds,
        goodput_up_bps: total.up as f64 * 8.0 / seconds,
        latency_us: Latency {
            mean: h.mean(),
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        },
        client_cpu_seconds: cpu,
    };
    println!(
        "{} requests in {:.2} s: {:.0} req/s, down {}, up {}; latency p50 {} µs, p99 {} µs, \
         max {} µs; {} errors",
        summary.requests,
        seconds,
        summary.requests_per_second,
        quay_examples::rate(summary.bytes_down, seconds),
        quay_examples::rate(summary.bytes_up, seconds),
        summary.latency_us.p50,
        summary.latency_us.p99,
        summary.latency_us.max,
        summary.errors
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(e) = total.first_error {
        eprintln!("first error: {e}");
    }
    if summary.errors > 0 || summary.requests == 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Opens `n` connections (a few at a time), makes one small request on each, says
/// `ready`, holds them, closes them.
async fn hold_idle(n: usize, args: &Args, params: ClientParams) -> anyhow::Result<()> {
    let mut handles = Vec::with_capacity(n);
    let mut set = tokio::task::JoinSet::new();
    let mut opened = 0;
    while handles.len() < n {
        while opened < n && set.len() < 32 {
            let (addr, params) = (args.connect, params.clone());
            let no_request = args.no_request;
            set.spawn(async move {
                let (driver, send) = ClientH3Driver::new(H3Settings::default());
                let handle = quay::io::connect(addr, params, driver).await?;
                if no_request {
                    return anyhow::Ok((send, handle));
                }
                // One request, so the server counts it as a client, not a loiterer. One
                // byte, not none: a server of files (ngtcp2's) has no empty ones.
                let req =
                    http::Request::get(format!("https://{addr}/bytes/1")).body(Bytes::new())?;
                send.send(req).await?.body_mut().collect(16).await?;
                anyhow::Ok((send, handle))
            });
            opened += 1;
        }
        match set.join_next().await {
            Some(r) => handles.push(r??),
            None => break,
        }
    }
    println!("ready {}", handles.len());
    tokio::time::sleep(Duration::from_secs_f64(args.duration.unwrap_or(10.0))).await;
    for (_, h) in &handles {
        h.close(0x100, "done").await;
    }
    Ok(())
}

/// Where a worker sends its requests.
#[derive(Clone)]
enum Sender {
    H3(SendRequest),
    Raw(RawSender),
}

/// A new connection and its request sender.
async fn open(shared: &Shared) -> anyhow::Result<(Sender, quay::io::ConnectionHandle)> {
    let (addr, params) = (shared.args.connect, shared.params.clone());
    let (send, handle) = if shared.args.raw {
        let (app, send) = RawClient::new(shared.body.clone());
        (
            Sender::Raw(send),
            quay::io::connect(addr, params, app).await,
        )
    } else {
        let (driver, send) = ClientH3Driver::new(H3Settings::default());
        (
            Sender::H3(send),
            quay::io::connect(addr, params, driver).await,
        )
    };
    let handle = handle.with_context(|| format!("cannot connect to {addr}"))?;
    Ok((send, handle))
}

/// Takes the next request, or `false` when the run is over.
fn take(shared: &Shared) -> bool {
    if shared.stop.load(Ordering::Acquire) {
        return false;
    }
    match &shared.budget {
        Some(b) => b
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok(),
        None => true,
    }
}

async fn worker(shared: Arc<Shared>, send: Option<Sender>) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    while take(&shared) {
        let measured = shared.measuring.load(Ordering::Acquire);
        let started = Instant::now();
        let result = match &send {
            Some(send) => request(&shared, send).await,
            None => one_shot(&shared).await,
        };
        let micros = started.elapsed().as_micros().max(1) as u64;
        if result.is_ok() {
            tally.all += 1;
        } else {
            // A request on a closed connection fails without waiting: let the other
            // tasks (and the timer that ends the run) have the thread.
            tokio::task::yield_now().await;
        }
        if !measured {
            continue;
        }
        match result {
            Ok(down) => {
                tally.requests += 1;
                tally.down += down;
                tally.up += shared.body.len() as u64;
                tally.hist.saturating_record(micros);
            }
            Err(e) => {
                tally.errors += 1;
                if tally.first_error.is_none() {
                    tally.first_error = Some(format!("{e:#}"));
                }
            }
        }
    }
    Ok(tally)
}

/// One request on `send`; the response body's length.
async fn request(shared: &Shared, send: &Sender) -> anyhow::Result<u64> {
    let send = match send {
        Sender::H3(send) => send,
        Sender::Raw(send) => {
            let n = send.request().await?;
            if n != shared.body.len() as u64 {
                bail!("{n} bytes echoed, expected {}", shared.body.len());
            }
            return Ok(n);
        }
    };
    let path = format!(
        "https://{}/bytes/{}",
        shared.authority, shared.args.response_size
    );
    let method = if shared.body.is_empty() {
        http::Method::GET
    } else {
        http::Method::POST
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(shared.body.clone())?;
    let mut resp = send.send(req).await?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut n = 0u64;
    while let Some(chunk) = resp.body_mut().chunk().await? {
        n += chunk.len() as u64;
    }
    if n != shared.args.response_size {
        bail!("{n} response bytes, expected {}", shared.args.response_size);
    }
    Ok(n)
}

/// A fresh connection, one request, close.
async fn one_shot(shared: &Shared) -> anyhow::Result<u64> {
    let (send, handle) = open(shared).await?;
    let n = request(shared, &send).await;
    handle.close(0x100, "done").await;
    n
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // /proc/self/stat fields 14 and 15: utime and stime in clock ticks.
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some(after) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name, field 3 of the man page is index 0 here.
    (ticks(11) + ticks(12)) / 100.0
}
