//! A MASQUE client: a CONNECT-UDP tunnel through a proxy, served as a local UDP
//! socket that any UDP program can send to.
//!
//! ```text
//! masque-client --listen-udp ADDR --proxy URL --target HOST:PORT
//!               [--ca PEM | --insecure] [--token TOKEN]
//! ```
//!
//! Opens the tunnel to HOST:PORT through the proxy at URL (`https://proxy:port/`,
//! default template), binds ADDR, and once the tunnel is up prints `listening on
//! ADDR` (the local UDP address) and `ready`; from then on datagrams sent to ADDR go to the target, and the
//! target's answers come back to the address that last sent. Exits with status 0 when
//! the proxy ends the tunnel, 1 when it refuses (with its status and `proxy-status`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use quay::h3::Client;

#[derive(Parser, Debug)]
#[command(about = "MASQUE client: a local UDP socket tunnelled through a CONNECT-UDP proxy")]
struct Args {
    /// Local UDP address to serve the tunnel on.
    #[arg(long)]
    listen_udp: SocketAddr,
    /// The proxy, as an https URL.
    #[arg(long)]
    proxy: http::Uri,
    /// Where the tunnel goes: HOST:PORT (IPv6 in brackets).
    #[arg(long)]
    target: String,
    /// Trust this CA (PEM) for the proxy's certificate.
    #[arg(long, conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// Do not verify the proxy's certificate.
    #[arg(long)]
    insecure: bool,
    /// Send `proxy-authorization: Bearer TOKEN`.
    #[arg(long)]
    token: Option<String>,
}

/// HOST:PORT, the host without brackets.
fn split_target(target: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = target
        .rsplit_once(':')
        .with_context(|| format!("--target {target} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("--target {target}: the port must be 1 to 65535"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        anyhow::bail!("--target {target} has no host");
    }
    Ok((host.to_owned(), port))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    let (host, port) = split_target(&args.target)?;
    if args.proxy.scheme_str() != Some("https") || args.proxy.authority().is_none() {
        anyhow::bail!("--proxy {} must be an https URL with a host", args.proxy);
    }
    let mut settings = quay::io::QuicSettings::default();
    settings.enable_datagrams = true;
    let mut builder = Client::builder().settings(settings);
    if args.insecure {
        builder = builder.insecure();
    } else if let Some(ca) = &args.ca {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
        builder = builder.add_root_certificate_pem(&pem)?;
    }
    let client = builder.build();
    let socket = tokio::net::UdpSocket::bind(args.listen_udp)
        .await
        .with_context(|| format!("cannot bind UDP {}", args.listen_udp))?;
    let tunnel =
        quay::masque::connect_udp(&client, &args.proxy, &host, port, args.token.as_deref())
            .await
            .with_context(|| format!("no tunnel to {} through {}", args.target, args.proxy))?;
    println!("listening on {}", socket.local_addr()?);
    println!("ready");
    let stats = tunnel.relay(socket).await?;
    eprintln!(
        "tunnel ended: {} datagrams sent, {} received, {} dropped",
        stats.sent, stats.received, stats.dropped
    );
    Ok(())
}
