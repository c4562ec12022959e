//! A raw-QUIC echo client: sends a byte pattern on N streams and checks every byte
//! that comes back (ALPN `quay-echo`).
//!
//! ```text
//! echo-client --connect ADDR (--ca PEM | --insecure) [--streams N] [--bytes N]
//!             [--connections N] [--server-name NAME] [--no-gso]
//! ```
//!
//! Exits non-zero on any mismatch, incomplete stream, or connection error.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use quay::app::echo::{ALPN, EchoClient};
use quay::io::{ClientParams, ClientTlsConfig};

#[derive(Parser, Debug)]
#[command(about = "QUIC echo client (ALPN quay-echo)")]
struct Args {
    /// Server address.
    #[arg(long)]
    connect: SocketAddr,
    /// Trust the certificates in this PEM file.
    #[arg(long, required_unless_present = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate.
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Name to verify the certificate against (and send as SNI).
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Streams per connection, all open at once.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Bytes per stream.
    #[arg(long, default_value_t = 1024 * 1024)]
    bytes: u64,
    /// Connections to make, one after the other.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Send one datagram per system call instead of GSO batches.
    #[arg(long)]
    no_gso: bool,
    /// Also compare SHA-256 digests of what was sent and echoed (every byte is
    /// compared either way).
    #[arg(long)]
    sha256: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let tls = if args.insecure {
        ClientTlsConfig::insecure()
    } else {
        let ca = args.ca.as_ref().context("--ca or --insecure is required")?;
        ClientTlsConfig::new().add_root_pem_file(ca)?
    };
    let mut params = ClientParams::new(&[ALPN]);
    params.tls = tls;
    params.server_name = Some(args.server_name.clone());
    params.settings.enable_gso = !args.no_gso;

    let started = Instant::now();
    let mut handshake_total = Duration::ZERO;
    let mut bytes = 0u64;
    let mut last_stats = None;
    let mut closing = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        let (app, report) = EchoClient::new(args.streams, args.bytes);
        let app = app.hashing(args.sha256);
        let conn = quay::io::connect(args.connect, params.clone(), app)
            .await
            .with_context(|| format!("connection {} of {}", n + 1, args.connections))?;
        handshake_total += conn.handshake_info().map_or(Duration::ZERO, |i| i.duration);
        let report = report.await.context("connection ended without a report")?;
        for (i, s) in report.streams.iter().enumerate() {
            if let Some(at) = s.first_mismatch {
                bail!("stream {i}: echoed byte {at} differs from the byte sent");
            }
            if !s.is_ok() {
                bail!(
                    "stream {i}: incomplete echo ({} of {} bytes back{})",
                    s.received,
                    s.sent,
                    report
                        .close_reason
                        .as_ref()
                        .map(|r| format!(", connection {r}"))
                        .unwrap_or_default()
                );
            }
        }
        if report.streams.len() != args.streams {
            bail!(
                "only {} of {} streams were opened",
                report.streams.len(),
                args.streams
            );
        }
        bytes += report.bytes_received();
        // The close's draining period (RFC 9000 §10.2) runs on while the next
        // connection starts.
        closing.push(conn);
    }
    for conn in closing {
        last_stats = Some(conn.closed().await.stats.clone());
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "echoed {bytes} bytes on {} stream(s) x {} connection(s) in {secs:.3} s: {}, all bytes verified",
        args.streams,
        args.connections,
        quay_examples::rate(bytes, secs)
    );
    println!(
        "handshake: {:.3} ms average; {:.0} connections/s",
        handshake_total.as_secs_f64() * 1000.0 / args.connections as f64,
        args.connections as f64 / secs
    );
    if let Some(s) = last_stats {
        println!(
            "last connection: {} packets sent, {} received, {} lost; rtt {:.3} ms; cwnd {} bytes",
            s.packets_sent,
            s.packets_recv,
            s.packets_lost,
            s.rtt.as_secs_f64() * 1000.0,
            s.cwnd
        );
    }
    Ok(())
}
