//! Bounded attacks on an HTTP/3 server while legitimate clients work, every
//! legitimate transfer checked byte for byte. `cargo xtask attack` runs each attack
//! against a fresh `h3-server` and collects the reports.
//!
//! ```text
//! quay-attack --target ADDR --ca PEM --attack NAME [--quick] [--server-pid PID]
//!             [--json PATH]
//! ```
//!
//! Attacks: `garbage`, `initial-flood`, `slowloris`, `request-flood`, `churn`,
//! `sigterm`. Attack traffic comes from 127.0.1.0/24 and 127.0.2.0/24 (many sources),
//! legitimate traffic from 127.0.0.2, so per-source limits tell them apart as they
//! would on the internet. The report (JSON) says what was sent, how many legitimate
//! transfers were attempted and arrived intact, and the attack's figures. Exits 1
//! when a legitimate transfer was lost or a check failed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use quay::app::{AppError, ApplicationOverQuic, HandshakeInfo, QuicConnection};
use quay::h3::{ClientH3Driver, H3Settings, SendRequest};
use quay::io::{ClientParams, ClientTlsConfig};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(about = "Bounded attacks on an HTTP/3 server, with legitimate traffic checked")]
struct Args {
    /// The server under attack.
    #[arg(long)]
    target: SocketAddr,
    /// The server's certificate (PEM), trusted for `localhost`.
    #[arg(long)]
    ca: PathBuf,
    /// The attack to run.
    #[arg(long)]
    attack: String,
    /// A few seconds instead of the full size.
    #[arg(long)]
    quick: bool,
    /// The server's process id: for its memory (`churn`) and its signal (`sigterm`).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the report here as well as to stdout.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as a Markdown section here.
    #[arg(long)]
    markdown: Option<PathBuf>,
}

/// What one attack did and what legitimate traffic saw.
#[derive(Debug, Default, Serialize)]
struct Report {
    name: String,
    about: String,
    /// What the attack sent, by kind.
    sent: BTreeMap<String, u64>,
    legit: Legit,
    /// The attack's own measurements.
    figures: BTreeMap<String, f64>,
    /// Conditions the attack checks besides the legitimate transfers.
    checks: Vec<Check>,
}

#[derive(Debug, Default, Serialize)]
struct Legit {
    attempted: u64,
    intact: u64,
    /// What went wrong with the transfers that were not intact (at most 20).
    failures: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Check {
    what: String,
    ok: bool,
}

impl Report {
    fn new(name: &str, about: &str) -> Self {
        Self {
            name: name.to_owned(),
            about: about.to_owned(),
            ..Self::default()
        }
    }
    fn sent(&mut self, kind: &str, n: u64) {
        *self.sent.entry(kind.to_owned()).or_default() += n;
    }
    fn figure(&mut self, name: &str, v: f64) {
        self.figures.insert(name.to_owned(), v);
    }
    fn check(&mut self, what: impl Into<String>, ok: bool) {
        self.checks.push(Check {
            what: what.into(),
            ok,
        });
    }
    fn absorb(&mut self, legit: Legit) {
        self.legit.attempted += legit.attempted;
        self.legit.intact += legit.intact;
        for f in legit.failures {
            if self.legit.failures.len() < 20 {
                self.legit.failures.push(f);
            }
        }
    }
    fn passed(&self) -> bool {
        self.legit.attempted == self.legit.intact && self.checks.iter().all(|c| c.ok)
    }

    fn markdown(&self) -> String {
        use std::fmt::Write;
        let mut md = format!("### {}\n\n{}\n\n", self.name, self.about);
        let sent: Vec<String> = self.sent.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(md, "- sent: {}", sent.join(", "));
        let _ = writeln!(
            md,
            "- legitimate transfers: {} attempted, {} intact",
            self.legit.attempted, self.legit.intact
        );
        for f in &self.legit.failures {
            let _ = writeln!(md, "  - lost: {f}");
        }
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|(k, v)| {
                if v.fract() == 0.0 {
                    format!("{k} {v:.0}")
                } else {
                    format!("{k} {v:.2}")
                }
            })
            .collect();
        let _ = writeln!(md, "- figures: {}", figures.join(", "));
        for c in &self.checks {
            let _ = writeln!(
                md,
                "- check: {} — {}",
                c.what,
                if c.ok { "ok" } else { "FAILED" }
            );
        }
        let _ = writeln!(
            md,
            "- result: {}\n",
            if self.passed() { "pass" } else { "FAIL" }
        );
        md
    }
}

/// Where legitimate traffic comes from: an address no attack uses.
const LEGIT_IP: [u8; 4] = [127, 0, 0, 2];

struct Ctx {
    target: SocketAddr,
    ca: Vec<u8>,
    quick: bool,
    server_pid: Option<u32>,
}

impl Ctx {
    fn params(&self, ip: [u8; 4]) -> anyhow::Result<ClientParams> {
        let mut p = ClientParams::new(&[quay::h3::ALPN]);
        p.tls = ClientTlsConfig::new().add_root_pem(&self.ca)?;
        p.server_name = Some("localhost".into());
        p.bind = Some(SocketAddr::from((ip, 0)));
        p.settings.handshake_timeout = Duration::from_secs(15);
        Ok(p)
    }

    /// Opens an HTTP/3 connection from `ip`; returns it, its request sender and how
    /// long the handshake took.
    async fn connect(
        &self,
        ip: [u8; 4],
    ) -> anyhow::Result<(quay::io::ConnectionHandle, SendRequest, Duration)> {
        let (driver, send) = ClientH3Driver::new(H3Settings::default());
        let started = Instant::now();
        let conn = quay::io::connect(self.target, self.params(ip)?, driver).await?;
        Ok((conn, send, started.elapsed()))
    }
}

/// The byte at offset `i` of `/bytes/N`.
fn pattern_byte(i: u64) -> u8 {
    (i % 256) as u8
}

/// One legitimate exchange on `send`: a download of `len` pattern bytes checked byte
/// for byte, or an upload of `len` bytes whose SHA-256 the server must echo.
async fn exchange(send: &SendRequest, upload: bool, len: u64) -> anyhow::Result<()> {
    if upload {
        let body: Bytes = (0..len)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<u8>>()
            .into();
        let want = hex(&Sha256::digest(&body));
        let req = http::Request::post("https://localhost/sha256").body(body)?;
        let mut resp = send.send(req).await?;
        if resp.status() != http::StatusCode::OK {
            bail!("upload answered {}", resp.status());
        }
        let got = resp.body_mut().collect(1024).await?;
        if got.trim_ascii() != want.as_bytes() {
            bail!("upload digest mismatch");
        }
        return Ok(());
    }
    let req = http::Request::get(format!("https://localhost/bytes/{len}")).body(Bytes::new())?;
    let mut resp = send.send(req).await?;
    if resp.status() != http::StatusCode::OK {
        bail!("download answered {}", resp.status());
    }
    let mut at = 0u64;
    while let Some(chunk) = resp.body_mut().chunk().await? {
        for (j, b) in chunk.iter().enumerate() {
            if *b != pattern_byte(at + j as u64) {
                bail!("download byte {} differs", at + j as u64);
            }
        }
        at += chunk.len() as u64;
    }
    if at != len {
        bail!("download ended after {at} of {len} bytes");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Legitimate clients working until `stop` is set: `clients` loops, each a fresh
/// connection per round with a download and an upload.
async fn legit_traffic(ctx: Arc<Ctx>, clients: usize, len: u64, stop: Arc<AtomicBool>) -> Legit {
    let mut tasks = Vec::new();
    for c in 0..clients {
        let ctx = Arc::clone(&ctx);
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut legit = Legit::default();
            let mut round = 0u64;
            // At least one round each, whatever the attack's length.
            while round == 0 || !stop.load(Ordering::Relaxed) {
                round += 1;
                legit.attempted += 2;
                let r = async {
                    let (conn, send, _) = ctx.connect(LEGIT_IP).await?;
                    let down = exchange(&send, false, len).await;
                    let up = exchange(&send, true, len / 4 + c as u64).await;
                    conn.close(0x100, "done").await;
                    Ok::<_, anyhow::Error>((down, up))
                };
                match tokio::time::timeout(Duration::from_secs(60), r).await {
                    Ok(Ok((down, up))) => {
                        for r in [down, up] {
                            match r {
                                Ok(()) => legit.intact += 1,
                                Err(e) => legit.failures.push(format!("{e:#}")),
                            }
                        }
                    }
                    Ok(Err(e)) => legit.failures.push(format!("connect: {e:#}")),
                    Err(_) => legit.failures.push("no answer within 60 s".into()),
                }
            }
            legit
        }));
    }
    let mut all = Legit::default();
    for t in tasks {
        let l = t.await.unwrap_or_default();
        all.attempted += l.attempted;
        all.intact += l.intact;
        all.failures.extend(l.failures);
    }
    all
}

/// Runs `attack` while legitimate clients work; the legitimate traffic stops when the
/// attack is over.
async fn with_legit<F>(ctx: &Arc<Ctx>, report: &mut Report, attack: F) -> anyhow::Result<()>
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let stop = Arc::new(AtomicBool::new(false));
    let len = if ctx.quick {
        256 * 1024
    } else {
        2 * 1024 * 1024
    };
    let legit = tokio::spawn(legit_traffic(Arc::clone(ctx), 4, len, Arc::clone(&stop)));
    let result = attack.await;
    stop.store(true, Ordering::Relaxed);
    report.absorb(legit.await?);
    result
}

/// UDP sockets bound on `count` addresses of `127.0.<net>.0/24`.
fn attack_sockets(net: u8, count: u8) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    (1..=count)
        .map(|i| {
            let s = std::net::UdpSocket::bind(SocketAddr::from(([127, 0, net, i], 0)))
                .with_context(|| format!("bind 127.0.{net}.{i}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect()
}

/// A deterministic generator for the attacks' random bytes and choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A real client Initial (a fresh connection each call), padded as clients pad them.
fn real_initial(rng: &mut Rng, to: SocketAddr) -> anyhow::Result<Vec<u8>> {
    let mut cfg = quay::quiche::Config::new(quay::quiche::PROTOCOL_VERSION)?;
    cfg.set_application_protos(&[quay::h3::ALPN])?;
    cfg.verify_peer(false);
    let mut scid = [0u8; 16];
    rng.fill(&mut scid);
    let scid = quay::quiche::ConnectionId::from_ref(&scid);
    let from = SocketAddr::from(([127, 0, 1, 1], 1));
    let mut conn = quay::quiche::connect(Some("localhost"), &scid, from, to, &mut cfg)?;
    let mut buf = vec![0u8; 1500];
    let (len, _) = conn.send(&mut buf)?;
    buf.truncate(len);
    Ok(buf)
}

/// Sends `buf` from `sock`, waiting briefly when the socket buffer is full; returns
/// whether it went out.
fn send_dgram(sock: &std::net::UdpSocket, buf: &[u8], to: SocketAddr) -> bool {
    for _ in 0..100 {
        match sock.send_to(buf, to) {
            Ok(_) => return true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(_) => return false,
        }
    }
    false
}

async fn garbage(ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "garbage",
        "random and mutated datagrams from 50 addresses while legitimate clients work",
    );
    let count: u64 = if ctx.quick { 20_000 } else { 100_000 };
    let target = ctx.target;
    let sent = Arc::new(AtomicU64::new(0));
    let mutated = Arc::new(AtomicU64::new(0));
    let (s, m) = (Arc::clone(&sent), Arc::clone(&mutated));
    let started = Instant::now();
    with_legit(&ctx, &mut report, async move {
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let socks = attack_sockets(1, 50)?;
            let mut rng = Rng(0x5eed_0001);
            let initial = real_initial(&mut rng, target)?;
            let mut buf = vec![0u8; 1500];
            for i in 0..count {
                let sock = &socks[(i % socks.len() as u64) as usize];
                let pkt: &[u8] = if i % 5 == 0 {
                    // A real Initial, truncated or with bits flipped.
                    buf[..initial.len()].copy_from_slice(&initial);
                    let mut len = initial.len();
                    if i % 10 == 0 {
                        len = 1 + rng.below(len as u64 - 1) as usize;
                    } else {
                        for _ in 0..1 + rng.below(8) {
                            let at = rng.below(len as u64) as usize;
                            buf[at] ^= 1 << rng.below(8);
                        }
                    }
                    m.fetch_add(1, Ordering::Relaxed);
                    &buf[..len]
                } else {
                    let len = 1 + rng.below(1400) as usize;
                    rng.fill(&mut buf[..len]);
                    if i % 4 == 0 {
                        // Long-header look, to reach deeper into the parser.
                        buf[0] |= 0xc0;
                    }
                    &buf[..len]
                };
                if send_dgram(sock, pkt, target) {
                    s.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        })
        .await?
    })
    .await?;
    report.sent("datagrams", sent.load(Ordering::Relaxed));
    report.sent("mutated_initials", mutated.load(Ordering::Relaxed));
    report.figure("seconds", started.elapsed().as_secs_f64());
    Ok(report)
}

async fn initial_flood(ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "initial-flood",
        "real client Initials from 100 addresses, never followed up, while legitimate \
         clients handshake and transfer",
    );
    // Each Initial is a fresh client connection (its key share included): making them
    // is the flood's own cost.
    let count: u64 = if ctx.quick { 1_500 } else { 10_000 };
    let target = ctx.target;
    let sent = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&sent);
    let flooding = Arc::new(AtomicBool::new(true));
    let f = Arc::clone(&flooding);
    let flood_started = Instant::now();
    let flood = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let socks = attack_sockets(2, 100)?;
        let mut rng = Rng(0x5eed_0002);
        // Initials made ahead, a batch at a time, then sent as fast as the socket takes.
        let mut i = 0;
        while i < count {
            let batch: Vec<Vec<u8>> = (0..200.min(count - i))
                .map(|_| real_initial(&mut rng, target))
                .collect::<anyhow::Result<_>>()?;
            for pkt in &batch {
                let sock = &socks[(i % socks.len() as u64) as usize];
                if send_dgram(sock, pkt, target) {
                    s.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }
        f.store(false, Ordering::Relaxed);
        Ok(())
    });
    // Handshakes of legitimate clients while the flood runs: their times.
    let mut times = Vec::new();
    let mut legit = Legit::default();
    while flooding.load(Ordering::Relaxed) || times.is_empty() {
        legit.attempted += 1;
        let r = tokio::time::timeout(Duration::from_secs(30), async {
            let (conn, send, took) = ctx.connect(LEGIT_IP).await?;
            exchange(&send, false, 64 * 1024).await?;
            conn.close(0x100, "done").await;
            Ok::<_, anyhow::Error>(took)
        })
        .await;
        match r {
            Ok(Ok(took)) => {
                legit.intact += 1;
                times.push(took.as_secs_f64() * 1000.0);
            }
            Ok(Err(e)) => legit.failures.push(format!("{e:#}")),
            Err(_) => legit.failures.push("no answer within 30 s".into()),
        }
        if legit.attempted >= 1_000 {
            break;
        }
    }
    flood.await??;
    report.absorb(legit);
    report.sent("initials", sent.load(Ordering::Relaxed));
    report.figure(
        "initials_per_second",
        sent.load(Ordering::Relaxed) as f64 / flood_started.elapsed().as_secs_f64(),
    );
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    report.figure("legit_handshakes", times.len() as f64);
    report.figure("handshake_p50_ms", pct(0.5));
    report.figure("handshake_p99_ms", pct(0.99));
    Ok(report)
}

/// A connection that never sends a request (`partial: false`), or that opens request
/// stream 0 with a header section that never ends (`partial: true`); notes how the
/// server ends it.
struct Loris {
    partial: bool,
    stream_reset: Arc<AtomicU64>,
    seen_reset: bool,
}

impl ApplicationOverQuic for Loris {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        if self.partial {
            // HEADERS (type 0x01) announcing 80 bytes, of which none follow.
            let _ = conn.stream_send(0, &[0x01, 0x40, 0x50], false);
        }
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let mut buf = [0u8; 64];
        if self.partial
            && !self.seen_reset
            && let Err(quay::quiche::Error::StreamReset(_)) = conn.stream_recv(0, &mut buf)
        {
            self.seen_reset = true;
            self.stream_reset.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

async fn slowloris(ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "slowloris",
        "connections that never send a request, and requests whose header section never \
         ends, from 20 addresses; the server's first-request and header timeouts end them",
    );
    let per_kind: usize = if ctx.quick { 100 } else { 400 };
    let stream_resets = Arc::new(AtomicU64::new(0));
    let mut closed_by_server = 0u64;
    let mut close_secs = Vec::new();
    let started = Instant::now();
    let c = Arc::clone(&ctx);
    let resets = Arc::clone(&stream_resets);
    with_legit(&ctx, &mut report, async {
        let mut tasks = Vec::new();
        for i in 0..per_kind * 2 {
            let ctx = Arc::clone(&c);
            let resets = Arc::clone(&resets);
            tasks.push(tokio::spawn(async move {
                let ip = [127, 0, 1, 1 + (i % 20) as u8];
                let app = Loris {
                    partial: i % 2 == 1,
                    stream_reset: resets,
                    seen_reset: false,
                };
                let mut params = ctx.params(ip)?;
                // Longer than the server's limits: the server must be the one to act.
                params.settings.idle_timeout = Duration::from_secs(120);
                let opened = Instant::now();
                let conn = quay::io::connect(ctx.target, params, app).await?;
                let closed = tokio::time::timeout(Duration::from_secs(60), conn.closed()).await?;
                Ok::<_, anyhow::Error>((closed.reason.clone(), opened.elapsed()))
            }));
        }
        for t in tasks {
            if let Ok(Ok((reason, took))) = t.await
                && matches!(reason, quay::app::CloseReason::Peer { .. })
            {
                closed_by_server += 1;
                close_secs.push(took.as_secs_f64());
            }
        }
        Ok(())
    })
    .await?;
    report.sent("idle_connections", per_kind as u64);
    report.sent("partial_header_connections", per_kind as u64);
    report.figure("closed_by_server", closed_by_server as f64);
    report.figure(
        "header_streams_reset",
        stream_resets.load(Ordering::Relaxed) as f64,
    );
    close_secs.sort_by(f64::total_cmp);
    if let Some(m) = close_secs.get(close_secs.len() / 2) {
        report.figure("median_seconds_to_close", *m);
    }
    report.figure("seconds", started.elapsed().as_secs_f64());
    report.check(
        "every slow connection was closed by the server",
        closed_by_server == (per_kind * 2) as u64,
    );
    Ok(report)
}

async fn request_flood(ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "request-flood",
        "connections from 10 addresses keeping every stream the server allows busy with \
         requests, past the per-connection request limit, while legitimate clients work",
    );
    let total: u64 = if ctx.quick { 20_000 } else { 200_000 };
    let answered = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let c = Arc::clone(&ctx);
    let (a, r, f, n) = (
        Arc::clone(&answered),
        Arc::clone(&refused),
        Arc::clone(&failed),
        Arc::clone(&issued),
    );
    with_legit(&ctx, &mut report, async move {
        let mut tasks = Vec::new();
        for i in 0..10u8 {
            let (ctx, a, r, f, n) = (
                Arc::clone(&c),
                Arc::clone(&a),
                Arc::clone(&r),
                Arc::clone(&f),
                Arc::clone(&n),
            );
            tasks.push(tokio::spawn(async move {
                // A new connection whenever the server drains one.
                while n.load(Ordering::Relaxed) < total {
                    let Ok((conn, send, _)) = ctx.connect([127, 0, 1, 100 + i]).await else {
                        f.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let mut inflight = tokio::task::JoinSet::new();
                    while n.fetch_add(1, Ordering::Relaxed) < total && !send.is_draining() {
                        let send = send.clone();
                        inflight.spawn(async move {
                            let req = http::Request::get("https://localhost/bytes/1")
                                .body(Bytes::new())
                                .unwrap();
                            send.send(req).await
                        });
                        // Up to the stream limit in flight; the rest wait their turn.
                        while inflight.len() >= 200 {
                            tally(inflight.join_next().await, &a, &r, &f);
                        }
                    }
                    while let Some(res) = inflight.join_next().await {
                        tally(Some(res), &a, &r, &f);
                    }
                    conn.close(0x100, "done").await;
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    report.sent(
        "requests",
        answered.load(Ordering::Relaxed) + refused.load(Ordering::Relaxed),
    );
    report.figure("answered", answered.load(Ordering::Relaxed) as f64);
    report.figure("refused_retryable", refused.load(Ordering::Relaxed) as f64);
    report.figure("failed", failed.load(Ordering::Relaxed) as f64);
    report.figure(
        "requests_per_second",
        answered.load(Ordering::Relaxed) as f64 / secs,
    );
    Ok(report)
}

type Answer = Result<http::Response<quay::h3::RecvBody>, quay::h3::StreamError>;

fn tally(
    res: Option<Result<Answer, tokio::task::JoinError>>,
    answered: &AtomicU64,
    refused: &AtomicU64,
    failed: &AtomicU64,
) {
    match res {
        Some(Ok(Ok(_))) => answered.fetch_add(1, Ordering::Relaxed),
        Some(Ok(Err(e))) if e.is_retryable() => refused.fetch_add(1, Ordering::Relaxed),
        _ => failed.fetch_add(1, Ordering::Relaxed),
    };
}

/// The server's resident memory, from `/proc`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The server's tables, from its stats route.
async fn server_tables(ctx: &Ctx) -> anyhow::Result<serde_json::Value> {
    let (conn, send, _) = ctx.connect(LEGIT_IP).await?;
    let req = http::Request::get("https://localhost/_quay/stats").body(Bytes::new())?;
    let mut resp = send.send(req).await?;
    let body = resp.body_mut().collect(4096).await?;
    conn.close(0x100, "done").await;
    Ok(serde_json::from_slice(&body)?)
}

async fn churn(ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "churn",
        "connections opened (one request each) and closed, 32 at a time from 20 \
         addresses; memory and the routing table must return to their baseline",
    );
    let total: u64 = if ctx.quick { 1_000 } else { 10_000 };
    let pid = ctx.server_pid.context("churn needs --server-pid")?;
    // Warm up the allocator and the server's pools first.
    for _ in 0..50 {
        let (conn, send, _) = ctx.connect(LEGIT_IP).await?;
        exchange(&send, false, 1024).await?;
        conn.close(0x100, "done").await;
        conn.closed().await;
    }
    let before = rss_kib(pid).context("no /proc for the server")?;
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(before));
    let started = Instant::now();
    let c = Arc::clone(&ctx);
    let (d, f, p) = (Arc::clone(&done), Arc::clone(&failed), Arc::clone(&peak));
    with_legit(&ctx, &mut report, async move {
        let (ctx, done, failed, peak) = (c, d, f, p);
        let mut tasks = Vec::new();
        for w in 0..32u64 {
            let (ctx, done, failed, peak) = (
                Arc::clone(&ctx),
                Arc::clone(&done),
                Arc::clone(&failed),
                Arc::clone(&peak),
            );
            tasks.push(tokio::spawn(async move {
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    let ip = [127, 0, 2, 1 + (w % 20) as u8];
                    let r = async {
                        let (conn, send, _) = ctx.connect(ip).await?;
                        exchange(&send, false, 1024).await?;
                        conn.close(0x100, "done").await;
                        conn.closed().await;
                        Ok::<_, anyhow::Error>(())
                    };
                    if r.await.is_err() {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if w == 0
                        && let Some(rss) = rss_kib(pid)
                    {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        Ok(())
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    // The server forgets a connection at the end of its closing period.
    let deadline = Instant::now() + Duration::from_secs(20);
    let tables = loop {
        let t = server_tables(&ctx).await?;
        // One connection is the one asking.
        let settled = t["connections"].as_u64() == Some(1) && t["handshakes"].as_u64() == Some(0);
        if settled || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let after = rss_kib(pid).unwrap_or(0);
    let get = |k: &str| tables[k].as_u64().unwrap_or(u64::MAX);
    report.sent("connections", total);
    report.figure("connections_per_second", total as f64 / secs);
    report.figure("failed_connections", failed.load(Ordering::Relaxed) as f64);
    report.figure("rss_before_kib", before as f64);
    report.figure("rss_peak_kib", peak.load(Ordering::Relaxed) as f64);
    report.figure("rss_after_kib", after as f64);
    report.figure("connections_after", get("connections") as f64);
    report.figure("routes_after", get("routes") as f64);
    report.figure("handshakes_after", get("handshakes") as f64);
    report.figure("sources_after", get("sources") as f64);
    report.check(
        "the routing table is back to the one connection asking",
        get("connections") == 1 && get("handshakes") == 0 && get("sources") == 1,
    );
    report.check(
        "resident memory within 16 MiB of its baseline",
        after <= before + 16 * 1024,
    );
    report.check(
        "every churned connection worked",
        failed.load(Ordering::Relaxed) == 0,
    );
    Ok(report)
}

/// Forwards datagrams between clients and a server, dropping `loss` of them each way.
async fn lossy_relay(server: SocketAddr, loss: f64) -> anyhow::Result<SocketAddr> {
    let front = Arc::new(tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).await?);
    let addr = front.local_addr()?;
    let threshold = (loss * u64::MAX as f64) as u64;
    tokio::spawn(async move {
        let mut backs: BTreeMap<SocketAddr, Arc<tokio::net::UdpSocket>> = BTreeMap::new();
        let mut rng = Rng(0x5eed_0005);
        let mut buf = vec![0u8; 65_536];
        loop {
            let Ok((len, from)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&from) {
                Some(b) => Arc::clone(b),
                None => {
                    let Ok(b) =
                        tokio::net::UdpSocket::bind((IpAddr::from([127, 0, 0, 2]), 0)).await
                    else {
                        continue;
                    };
                    if b.connect(server).await.is_err() {
                        continue;
                    }
                    let b = Arc::new(b);
                    backs.insert(from, Arc::clone(&b));
                    // Server to this client.
                    let (b2, f2) = (Arc::clone(&b), Arc::clone(&front));
                    let mut rng = Rng(0x5eed_0006 ^ u64::from(from.port()));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(len) = b2.recv(&mut buf).await {
                            if rng.next() >= threshold {
                                let _ = f2.send_to(&buf[..len], from).await;
                            }
                        }
                    });
                    b
                }
            };
            if rng.next() >= threshold {
                let _ = back.send(&buf[..len]).await;
            }
        }
    });
    Ok(addr)
}

async fn sigterm(ctx: Arc<Ctx>) -> anyhow::Result<Report> {
    let mut report = Report::new(
        "sigterm",
        "4 downloads through 5 % loss each way; the server gets SIGTERM while they run \
         and must finish every one byte for byte",
    );
    let len: u64 = if ctx.quick { 4 << 20 } else { 16 << 20 };
    let pid = ctx.server_pid.context("sigterm needs --server-pid")?;
    let relay = lossy_relay(ctx.target, 0.05).await?;
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let ctx = Arc::clone(&ctx);
        let started = Arc::clone(&started);
        tasks.push(tokio::spawn(async move {
            let (driver, send) = ClientH3Driver::new(H3Settings::default());
            let conn = quay::io::connect(relay, ctx.params(LEGIT_IP)?, driver).await?;
            let req =
                http::Request::get(format!("https://localhost/bytes/{len}")).body(Bytes::new())?;
            let mut resp = send.send(req).await?;
            let mut at = 0u64;
            let mut counted = false;
            while let Some(chunk) = resp.body_mut().chunk().await? {
                if !counted {
                    counted = true;
                    started.fetch_add(1, Ordering::Relaxed);
                }
                for (j, b) in chunk.iter().enumerate() {
                    if *b != pattern_byte(at + j as u64) {
                        bail!("byte {} differs", at + j as u64);
                    }
                }
                at += chunk.len() as u64;
            }
            drop(conn);
            if at != len {
                bail!("ended after {at} of {len} bytes");
            }
            Ok(())
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while started.load(Ordering::Relaxed) < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signalled = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    report.check("SIGTERM delivered while the downloads ran", signalled);
    let mut legit = Legit::default();
    for t in tasks {
        legit.attempted += 1;
        match tokio::time::timeout(Duration::from_secs(120), t).await {
            Ok(Ok(Ok(()))) => legit.intact += 1,
            Ok(Ok(Err(e))) => legit.failures.push(format!("{e:#}")),
            Ok(Err(e)) => legit.failures.push(format!("{e}")),
            Err(_) => legit.failures.push("not finished within 120 s".into()),
        }
    }
    report.absorb(legit);
    report.sent("downloads", 4);
    report.figure("bytes_each", len as f64);
    Ok(report)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let ca = std::fs::read(&args.ca).with_context(|| format!("read {}", args.ca.display()))?;
    let ctx = Arc::new(Ctx {
        target: args.target,
        ca,
        quick: args.quick,
        server_pid: args.server_pid,
    });
    let report = match args.attack.as_str() {
        "garbage" => garbage(ctx).await?,
        "initial-flood" => initial_flood(ctx).await?,
        "slowloris" => slowloris(ctx).await?,
        "request-flood" => request_flood(ctx).await?,
        "churn" => churn(ctx).await?,
        "sigterm" => sigterm(ctx).await?,
        other => bail!(
            "unknown attack {other:?}: garbage, initial-flood, slowloris, request-flood, \
             churn, sigterm"
        ),
    };
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, report.markdown())
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !report.passed() {
        std::process::exit(1);
    }
    Ok(())
}
