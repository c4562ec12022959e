//! A raw-QUIC echo server: every bidirectional stream is echoed back (ALPN `quay-echo`).
//!
//! ```text
//! echo-server [--listen ADDR] [--cert PEM --key PEM] [--write-cert PATH] [--retry] [--no-gso]
//! ```
//!
//! Without `--cert`/`--key` it generates a self-signed certificate for `localhost` and
//! `127.0.0.1` in memory; `--write-cert` saves its PEM for clients (`--ca`). It prints
//! `listening on ADDR` once it is ready, and stops on Ctrl-C, closing every connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quay::app::echo::{ALPN, EchoServer};
use quay::io::{CountingMetrics, RetryPolicy, ServerParams};

#[derive(Parser, Debug)]
#[command(about = "QUIC echo server (ALPN quay-echo)")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Certificate chain, PEM (leaf first).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key, PEM.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Write the generated self-signed certificate (PEM) here.
    #[arg(long, conflicts_with = "cert")]
    write_cert: Option<PathBuf>,
    /// Answer every new client with Retry first.
    #[arg(long)]
    retry: bool,
    /// Send one datagram per system call instead of GSO batches.
    #[arg(long)]
    no_gso: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let tls = quay_examples::server_identity(
        args.cert.as_deref(),
        args.key.as_deref(),
        args.write_cert.as_deref(),
    )?;
    let mut params = ServerParams::new(tls, &[ALPN]);
    if args.retry {
        params.retry = RetryPolicy::Always;
    }
    params.settings.enable_gso = !args.no_gso;
    let metrics = std::sync::Arc::new(CountingMetrics::default());
    params.metrics = metrics.clone();
    let mut listener = quay::io::listen_on(args.listen, params)?;
    println!("listening on {}", listener.local_addr());

    loop {
        tokio::select! {
            incoming = listener.accept() => {
                let incoming = match incoming {
                    Ok(incoming) => incoming,
                    Err(quay::io::AcceptError::Stopped) => break,
                    Err(e) => return Err(e.into()),
                };
                let handle = incoming.start(EchoServer::new());
                tokio::spawn(async move {
                    let closed = handle.closed().await;
                    tracing::info!(
                        peer = %handle.peer_addr(),
                        reason = %closed.reason,
                        bytes_recv = closed.stats.bytes_recv,
                        bytes_sent = closed.stats.bytes_sent,
                        "connection closed"
                    );
                });
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("shutting down");
                let graceful = listener.shutdown(0, b"server shutting down", Duration::from_secs(5)).await;
                if !graceful {
                    tracing::warn!("some connections did not close in time");
                }
                let m = metrics.snapshot();
                tracing::info!(
                    accepted = m.initials_accepted,
                    handshakes = m.handshakes_completed,
                    retries = m.retries_sent,
                    resets = m.stateless_resets_sent,
                    queue_full_drops = m.queue_full_drops,
                    "endpoint counters"
                );
                break;
            }
        }
    }
    Ok(())
}
