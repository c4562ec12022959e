//! A MASQUE proxy: CONNECT-UDP (RFC 9298) over HTTP/3.
//!
//! ```text
//! masque-proxy --listen ADDR --cert PEM --key PEM [--allow-target CIDR]...
//!              [--token TOKEN] [--idle-timeout SECS] [--max-tunnels N]
//! ```
//!
//! Serves the default template, `/.well-known/masque/udp/{target_host}/{target_port}/`.
//! Targets in loopback, private, link-local, multicast and broadcast ranges are
//! refused (403, `proxy-status: quay; error=destination_ip_prohibited`) unless an
//! `--allow-target` range holds them; names are resolved first and judged by their
//! address. With `--token`, requests must carry `proxy-authorization: Bearer TOKEN`
//! (407 otherwise). Prints `listening on ADDR` when ready; Ctrl-C or SIGTERM stops it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use quay::h3::{H3Settings, Server};
use quay::masque::{IpNet, Proxy, ProxyConfig, ProxyHandler};

#[derive(Parser, Debug)]
#[command(about = "MASQUE proxy: UDP over HTTP/3 (CONNECT-UDP)")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Certificate chain, PEM (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// Let tunnels reach this range (CIDR), even inside the ones refused by default;
    /// repeatable.
    #[arg(long = "allow-target")]
    allow_target: Vec<IpNet>,
    /// Require `proxy-authorization: Bearer TOKEN`.
    #[arg(long)]
    token: Option<String>,
    /// Seconds a tunnel may carry nothing before it is closed.
    #[arg(long, default_value_t = 120.0)]
    idle_timeout: f64,
    /// Tunnels open at once.
    #[arg(long, default_value_t = ProxyConfig::default().max_tunnels)]
    max_tunnels: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    if !args.idle_timeout.is_finite() || !(0.001..=86_400.0).contains(&args.idle_timeout) {
        anyhow::bail!(
            "--idle-timeout {} is not a usable number of seconds (up to 86400)",
            args.idle_timeout
        );
    }
    if args.max_tunnels == 0 {
        anyhow::bail!("--max-tunnels must be at least 1");
    }
    let tls = quay_examples::server_identity(Some(&args.cert), Some(&args.key), None)?;
    let mut config = ProxyConfig::default();
    for net in &args.allow_target {
        config.targets.allow(*net);
    }
    config.bearer_token = args.token.clone();
    config.idle_timeout = Duration::from_secs_f64(args.idle_timeout);
    config.max_tunnels = args.max_tunnels;
    let mut h3 = H3Settings::default();
    h3.enable_extended_connect = true;
    let mut settings = quay::io::QuicSettings::default();
    settings.enable_datagrams = true;
    let server = Server::builder()
        .tls(tls)
        .h3_settings(h3)
        .settings(settings)
        .bind(args.listen)?;
    println!("listening on {}", server.local_addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    let proxy = Proxy::new(config);
    server
        .serve_with_graceful_shutdown(ProxyHandler::new(proxy), stop, Duration::from_secs(2))
        .await?;
    Ok(())
}
