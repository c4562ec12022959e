//! A curl-like HTTP/3 client.
//!
//! ```text
//! h3-client URL... [-o PATH] [--data @FILE|STRING] [--ca PEM | --insecure]
//!                  [--parallel N] [--repeat N] [--stats]
//! ```
//!
//! Every request for every URL goes over one connection per server. Exits 0 only when
//! every response is 2xx and complete.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use quay::h3::Client;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(about = "HTTP/3 client")]
struct Args {
    /// URLs to fetch (https://host:port/path).
    #[arg(required = true)]
    urls: Vec<String>,
    /// Write the body to this file, or into this directory for several URLs.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// POST this body: `@FILE` reads a file, anything else is sent as is.
    #[arg(long)]
    data: Option<String>,
    /// Trust the certificates in this PEM file.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Requests in flight at once (on the same connection).
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Fetch every URL this many times.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// Print time, bytes and throughput per request, and a summary.
    #[arg(long)]
    stats: bool,
}

struct Outcome {
    url: String,
    status: u16,
    bytes: u64,
    secs: f64,
    error: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let mut builder = Client::builder();
    if args.insecure {
        builder = builder.insecure();
    } else if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        builder = builder.add_root_certificate_pem(&pem)?;
    }
    let client = builder.build();
    let data = match &args.data {
        None => None,
        Some(d) => Some(match d.strip_prefix('@') {
            Some(file) => {
                Bytes::from(std::fs::read(file).with_context(|| format!("cannot read {file}"))?)
            }
            None => Bytes::from(d.clone()),
        }),
    };
    let several = args.urls.len() * args.repeat > 1;
    if let Some(out) = &args.output
        && several
    {
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    }
    let progress = !several && std::io::stderr().is_terminal();
    let limit = Arc::new(Semaphore::new(args.parallel.max(1)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for round in 0..args.repeat {
        for url in &args.urls {
            let permit = Arc::clone(&limit).acquire_owned().await?;
            let client = client.clone();
            let url = url.clone();
            let data = data.clone();
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
                let outcome = fetch(&client, &url, data, output, progress).await;
                drop(permit);
                outcome
            }));
        }
    }
    let mut failed = 0;
    let mut total_bytes = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let o = t.await?;
        total_bytes += o.bytes;
        latencies.push(o.secs);
        if let Some(e) = &o.error {
            failed += 1;
            eprintln!("{}: {e}", o.url);
        } else if !(200..300).contains(&o.status) {
            failed += 1;
            eprintln!("{}: status {}", o.url, o.status);
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
    if args.stats {
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
        std::process::exit(1);
    }
    Ok(())
}

async fn fetch(
    client: &Client,
    url: &str,
    data: Option<Bytes>,
    output: Option<PathBuf>,
    progress: bool,
) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        url: url.to_owned(),
        status: 0,
        bytes: 0,
        secs: 0.0,
        error: None,
    };
    let result = async {
        let mut resp = match data {
            Some(d) => client.post(url, d).await?,
            None => client.get(url).await?,
        };
        outcome.status = resp.status().as_u16();
        let expected: Option<u64> = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        let mut sink: Box<dyn SinkWrite> = match &output {
            Some(path) => Box::new(
                tokio::fs::File::create(path)
                    .await
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ),
            None => Box::new(tokio::io::stdout()),
        };
        let mut last_shown = Instant::now();
        while let Some(chunk) = resp.body_mut().chunk().await? {
            outcome.bytes += chunk.len() as u64;
            sink.write_all(&chunk).await?;
            if progress && output.is_some() && last_shown.elapsed().as_millis() >= 200 {
                last_shown = Instant::now();
                show_progress(outcome.bytes, expected, started);
            }
        }
        sink.flush().await?;
        if progress && output.is_some() {
            show_progress(outcome.bytes, expected, started);
            eprintln!();
        }
        if let Some(n) = expected
            && n != outcome.bytes
        {
            bail!("body of {} bytes, content-length said {n}", outcome.bytes);
        }
        anyhow::Ok(())
    }
    .await;
    outcome.secs = started.elapsed().as_secs_f64();
    if let Err(e) = result {
        outcome.error = Some(format!("{e:#}"));
    }
    outcome
}

trait SinkWrite: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> SinkWrite for T {}

fn show_progress(bytes: u64, expected: Option<u64>, started: Instant) {
    let rate = quay_examples::rate(bytes, started.elapsed().as_secs_f64());
    let mut err = std::io::stderr();
    let _ = match expected {
        Some(n) if n > 0 => write!(
            err,
            "\r{:>6.2}% {bytes}/{n} bytes {rate}   ",
            bytes as f64 * 100.0 / n as f64
        ),
        _ => write!(err, "\r{bytes} bytes {rate}   "),
    };
    let _ = err.flush();
}
