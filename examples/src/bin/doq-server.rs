//! A DNS over QUIC server (RFC 9250).
//!
//! ```text
//! doq-server --listen ADDR --cert PEM --key PEM --zone FILE [--origin NAME]
//!            [--upstream ADDR]
//! ```
//!
//! Answers from the zone (a standard master file; `--origin` when it has no `$ORIGIN`)
//! authoritatively: records, NODATA or NXDOMAIN. Names outside the zone are forwarded
//! to `--upstream` over UDP (TCP when the answer is truncated), or REFUSED without
//! one. Prints `listening on ADDR` when ready; Ctrl-C or SIGTERM stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use clap::Parser;
use quay::doq::proto::rr::Name;
use quay::doq::{Resolver, ServerLimits, Upstream, Zone};

#[derive(Parser, Debug)]
#[command(about = "DNS over QUIC server: a zone, and an upstream for the rest")]
struct Args {
    /// Address to listen on (DoQ's port is 853).
    #[arg(long)]
    listen: SocketAddr,
    /// Certificate chain, PEM (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// The zone, in master-file format.
    #[arg(long)]
    zone: PathBuf,
    /// The zone's origin, when the file has no `$ORIGIN`.
    #[arg(long)]
    origin: Option<String>,
    /// Forward names outside the zone to this DNS server.
    #[arg(long)]
    upstream: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let origin = args
        .origin
        .as_deref()
        .map(|o| Name::from_str(o).map_err(|e| anyhow::anyhow!("--origin {o}: {e}")))
        .transpose()?;
    let zone = Zone::from_file(&args.zone, origin)?;
    tracing::info!(origin = %zone.origin(), record_sets = zone.len(), "zone loaded");
    let tls = quay_examples::server_identity(Some(&args.cert), Some(&args.key), None)?;
    let resolver = Resolver::new(Some(zone), args.upstream.map(Upstream::new));
    let listener = quay::io::listen_on(args.listen, quay::doq::server_params(tls))?;
    println!("listening on {}", listener.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = quay::doq::serve(listener, Arc::new(resolver), ServerLimits::default()) => r?,
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
