//! An HTTP/3 server: files from a directory plus test routes.
//!
//! ```text
//! h3-server [--listen ADDR]... [--root DIR] [--cert PEM --key PEM] [--write-cert PATH]
//!           [--client-ca PEM [--client-cert-optional]] [--metrics-listen ADDR]
//!           [--retry] [--max-connections-per-ip N] [--max-handshakes-per-ip N]
//!           [--max-requests-per-connection N] [--first-request-timeout SECS]
//!           [--request-header-timeout SECS] [--stats-route]
//!           [--quic-lb-server-id HEX [--quic-lb-key HEX] [--quic-lb-nonce-len N]
//!            [--quic-lb-config-id N]] [--shards N [--no-kernel-steering]]
//!           [--key-exchange GROUP,...] [--qlog-dir DIR]
//! ```
//!
//! Routes: `GET /bytes/N`, `POST /echo`, `POST /sha256`, `GET /trailers`, and
//! `GET /path` for files under `--root`; with `--stats-route`, `GET /_quay/stats`
//! answers the listener's tables as JSON (connections, handshakes, routes, sources,
//! accepted, forwarded, and each shard's). Without `--cert`/`--key` a self-signed
//! certificate is generated (`--write-cert` saves it for clients). Without
//! `--listen` it listens on `127.0.0.1:4433` and `[::1]:4433` (the latter skipped on
//! a host without IPv6); `[::]:PORT` is one dual-stack socket. Prints
//! `listening on ADDR` for each socket when ready; Ctrl-C or SIGTERM drains
//! gracefully; SIGHUP reloads `--cert`/`--key` (and `--client-ca`) for new
//! connections, keeping the current identity if the new files are refused.
//! `--metrics-listen` serves the metrics in Prometheus text format at
//! `http://ADDR/metrics`. `--quic-lb-server-id` issues QUIC-LB connection IDs
//! (draft-ietf-quic-load-balancers) that carry this server's ID, so that a load
//! balancer holding the same configuration routes every packet of a connection here,
//! whatever its address; see docs/scaling.md. `--shards N` listens on each address
//! with N sockets and N router tasks (Linux), the kernel steering each datagram to its
//! connection's shard.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quay::h3::{H3Settings, Server};
use quay::io::{ClientAuth, EndpointLimits, QuicLbConfig, QuicLbGenerator, TlsConfig};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug, Clone)]
#[command(about = "HTTP/3 server: files and test routes")]
struct Args {
    #[arg(
        long,
        help = "Address to listen on; repeat for several sockets [default: 127.0.0.1:4433 and [::1]:4433]"
    )]
    listen: Vec<SocketAddr>,
    /// Serve files from this directory.
    #[arg(long)]
    root: Option<PathBuf>,
    /// Certificate chain, PEM (leaf first).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key, PEM.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Write the generated self-signed certificate (PEM) here.
    #[arg(long, conflicts_with = "cert")]
    write_cert: Option<PathBuf>,
    /// Require client certificates issued by these CAs (PEM): mutual TLS.
    #[arg(long)]
    client_ca: Option<PathBuf>,
    /// With `--client-ca`: let clients without a certificate in too.
    #[arg(long, requires = "client_ca")]
    client_cert_optional: bool,
    /// Serve metrics in Prometheus text format on this address (plain HTTP, any
    /// path; `/metrics` by convention).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Validate every client's address with a Retry first (by default, only under
    /// load: from 200 handshakes in flight).
    #[arg(long)]
    retry: bool,
    /// Connections at once from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = EndpointLimits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// Handshakes in flight at once from one IPv4 address or IPv6 /64.
    #[arg(long, default_value_t = EndpointLimits::default().max_handshakes_per_ip)]
    max_handshakes_per_ip: usize,
    /// Requests one connection may carry before the server drains it (0: no limit).
    #[arg(long, default_value_t = H3Settings::default().max_requests_per_connection.unwrap_or(0))]
    max_requests_per_connection: u64,
    /// Seconds a connection may go without its first request (0: no limit).
    #[arg(long, default_value_t = 10.0)]
    first_request_timeout: f64,
    /// Seconds a request's header section may take to arrive (0: no limit).
    #[arg(long, default_value_t = 10.0)]
    request_header_timeout: f64,
    /// Answer `GET /_quay/stats` with the listener's tables (for tests and tools; it
    /// tells anyone how loaded the server is).
    #[arg(long)]
    stats_route: bool,
    /// Issue QUIC-LB connection IDs carrying this server ID (1 to 15 bytes, hex).
    #[arg(long, value_parser = parse_hex)]
    quic_lb_server_id: Option<Hex>,
    /// The QUIC-LB configuration's AES-128 key (16 bytes, hex); without it, server IDs
    /// travel in the clear.
    #[arg(long, value_parser = parse_hex, requires = "quic_lb_server_id")]
    quic_lb_key: Option<Hex>,
    /// QUIC-LB nonce length in bytes (4 to 18, at most 19 with the server ID).
    #[arg(long, default_value_t = 8, requires = "quic_lb_server_id")]
    quic_lb_nonce_len: usize,
    /// QUIC-LB config rotation value (0 to 6).
    #[arg(long, default_value_t = 0, requires = "quic_lb_server_id")]
    quic_lb_config_id: u8,
    /// Sockets (and router tasks) per address, 1 to 32, to spread the receive work
    /// over cores (Linux). With QUIC-LB, connection IDs then do not encode their
    /// length in the first octet: its low bits carry the shard.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// TLS key-exchange groups to accept, most preferred first (comma-separated:
    /// x25519mlkem768, x25519, p256, p384) [default: all four, in that order].
    #[arg(long, value_delimiter = ',')]
    key_exchange: Vec<quay::io::KeyExchange>,
    /// Write a qlog trace per connection into this directory (each capped at 64 MiB).
    #[arg(long)]
    qlog_dir: Option<std::path::PathBuf>,
    /// With `--shards`: no kernel steering by connection ID; the kernel spreads
    /// datagrams by 4-tuple and shards forward the ones of another shard's
    /// connections.
    #[arg(long)]
    no_kernel_steering: bool,
}

/// Bytes given in hex on the command line.
#[derive(Debug, Clone)]
struct Hex(Vec<u8>);

fn parse_hex(s: &str) -> Result<Hex, String> {
    hex::decode(s).map(Hex).map_err(|e| format!("not hex: {e}"))
}

/// The QUIC-LB connection ID generator the command line asks for, if any.
fn quic_lb(args: &Args) -> anyhow::Result<Option<Arc<QuicLbGenerator>>> {
    let Some(Hex(server_id)) = &args.quic_lb_server_id else {
        return Ok(None);
    };
    let mut config = QuicLbConfig::new(
        args.quic_lb_config_id,
        server_id.len(),
        args.quic_lb_nonce_len,
    )?;
    if args.shards > 1 {
        config = config.without_length_encoding();
    }
    if let Some(Hex(key)) = &args.quic_lb_key {
        let key: [u8; 16] = key
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("--quic-lb-key is {} bytes; it takes 16", key.len()))?;
        config = config.with_key(key);
    }
    let generator = config.generator(server_id)?;
    tracing::info!(
        config_id = config.config_id(),
        server_id = hex::encode(server_id),
        nonce_len = config.nonce_len(),
        encrypted = config.is_encrypted(),
        cid_len = config.cid_len(),
        "QUIC-LB connection IDs"
    );
    Ok(Some(Arc::new(generator)))
}

/// The server's TLS configuration from the command line: identity, client CAs.
fn load_tls(args: &Args) -> anyhow::Result<TlsConfig> {
    let mut tls = quay_examples::server_identity(
        args.cert.as_deref(),
        args.key.as_deref(),
        args.write_cert.as_deref(),
    )?;
    if let Some(ca) = &args.client_ca {
        let mut auth = ClientAuth::from_pem_file(ca)?;
        if args.client_cert_optional {
            auth = auth.optional();
        }
        tls = tls.with_client_auth(auth);
    }
    Ok(tls)
}

/// Reads `--cert`/`--key` again and serves them to new connections; on any error the
/// current identity stays.
fn reload(args: &Args, reloader: &quay::h3::TlsReloader) {
    if args.cert.is_none() {
        tracing::warn!("SIGHUP: nothing to reload (no --cert/--key: the certificate is generated)");
        return;
    }
    let result = load_tls(args).and_then(|tls| {
        reloader.reload(&tls)?;
        Ok(tls)
    });
    match result {
        Ok(tls) => tracing::info!(
            subject = %tls.subject(),
            not_after = %tls.not_after(),
            "SIGHUP: TLS identity reloaded for new connections"
        ),
        Err(e) => tracing::error!(
            error = format!("{e:#}"),
            "SIGHUP: TLS reload refused; keeping the current identity"
        ),
    }
}

/// `secs` as a limit: zero is none; at most a day.
fn limit(secs: f64) -> anyhow::Result<Option<Duration>> {
    if !secs.is_finite() || !(0.0..=86_400.0).contains(&secs) {
        anyhow::bail!("{secs} s is not a usable timeout (0 to 86400)");
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs)))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    quay_examples::init_tracing();
    let args = Args::parse();
    if let Some(root) = &args.root
        && !root.is_dir()
    {
        anyhow::bail!("--root {} is not a directory", root.display());
    }
    let tls = load_tls(&args)?;
    if let Some(addr) = args.metrics_listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
        println!("metrics on http://{addr}/metrics");
    }
    let quic_lb = quic_lb(&args)?;
    let retry = args.retry;
    let (per_ip, handshakes_per_ip) = (args.max_connections_per_ip, args.max_handshakes_per_ip);
    let key_exchange = args.key_exchange.clone();
    let qlog_dir = args.qlog_dir.clone();
    let mut h3 = H3Settings::default();
    h3.max_requests_per_connection = Some(args.max_requests_per_connection).filter(|&n| n > 0);
    h3.first_request_timeout = limit(args.first_request_timeout)?;
    h3.request_header_timeout = limit(args.request_header_timeout)?;
    let builder = Server::builder()
        .tls(tls)
        .h3_settings(h3)
        .sharding(quay::io::Sharding::new(args.shards).kernel_steering(!args.no_kernel_steering))
        .configure(move |p| {
            if retry {
                p.retry = quay::io::RetryPolicy::Always;
            }
            p.limits.max_connections_per_ip = per_ip;
            if !key_exchange.is_empty() {
                p.settings.key_exchange = key_exchange;
            }
            if let Some(dir) = qlog_dir {
                p.settings.qlog_dir = Some(dir);
            }
            p.limits.max_handshakes_per_ip = handshakes_per_ip;
            if let Some(generator) = quic_lb {
                p.set_cid_generator(generator);
            }
        });
    let server = if args.listen.is_empty() {
        quay_examples::bind_server(builder, &quay_examples::default_listen(4433), true)?
    } else {
        quay_examples::bind_server(builder, &args.listen, false)?
    };
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    // Containers and service managers stop a process with SIGTERM; a terminal with
    // Ctrl-C (SIGINT). Either drains. Handled from before the address is announced.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    for addr in server.local_addrs() {
        println!("listening on {addr}");
    }
    tokio::spawn(async move {
        let signal = tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        };
        tracing::info!(signal, "draining");
        stop.cancel();
    });
    let reloader = server.tls_reloader();
    let reload_args = Arc::new(args.clone());
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            reload(&reload_args, &reloader);
        }
    });
    let root = Arc::new(args.root);
    let stats = args.stats_route.then(|| server.stats_handle());
    server
        .with_shutdown_token(shutdown, Duration::from_secs(10))
        .serve(move |req: http::Request<quay::h3::RecvBody>| {
            let root = Arc::clone(&root);
            let stats = stats.clone().filter(|_| req.uri().path() == "/_quay/stats");
            async move {
                match stats {
                    Some(stats) => Ok(stats_response(&stats).await),
                    None => quay_examples::routes::handle(req, root.as_deref()).await,
                }
            }
        })
        .await?;
    Ok(())
}

/// The listener's tables as JSON.
async fn stats_response(
    stats: &quay::io::StatsHandle,
) -> http::Response<quay_examples::routes::RouteBody> {
    let body = match stats.shards().await {
        Some(shards) => {
            let one = |s: &quay::io::EndpointStats| {
                format!(
                    "\"connections\":{},\"handshakes\":{},\"routes\":{},\"sources\":{},\"accepted\":{},\"forwarded\":{}",
                    s.connections, s.handshakes, s.routes, s.sources, s.accepted, s.forwarded
                )
            };
            let total: quay::io::EndpointStats = shards.iter().sum();
            let each: Vec<String> = shards.iter().map(|s| format!("{{{}}}", one(s))).collect();
            format!("{{{},\"shards\":[{}]}}\n", one(&total), each.join(","))
        }
        None => "{}\n".to_owned(),
    };
    let mut resp = http::Response::new(quay_examples::routes::RouteBody::Full(body.into()));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
