//! One axum `Router` served over HTTP/3 (quay, UDP) and over HTTP/1.1 and HTTP/2 (hyper,
//! TLS on TCP) on the same port, the TCP side advertising HTTP/3 with `Alt-Svc`.
//!
//! ```text
//! axum-h3 --listen ADDR --cert FILE --key FILE [--root DIR]
//! ```
//!
//! Routes: `GET /whoami` (the peer address and protocol the server saw),
//! `GET /bytes/N` (N pattern bytes, byte i being `i % 256`), `POST /sha256` (hex
//! SHA-256 of the body), and files under `--root` (`index.html` for a directory).
//! Prints `listening on ADDR` once both sockets are bound; Ctrl-C or SIGTERM drains
//! both sides.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{ConnectInfo, Path, Request};
use axum::routing::{get, post};
use boring::ssl::{AlpnError, SslAcceptor, SslFiletype, SslMethod, select_next_proto};
use bytes::Bytes;
use clap::Parser;
use quay::h3::{AltSvcLayer, ConnectionInfo};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "An axum app over HTTP/3, HTTP/2 and HTTP/1.1 on one port")]
struct Args {
    /// Address to listen on, UDP (HTTP/3) and TCP (HTTP/1.1, HTTP/2) alike.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
    /// Certificate chain, PEM (leaf first).
    #[arg(long)]
    cert: PathBuf,
    /// Private key, PEM.
    #[arg(long)]
    key: PathBuf,
    /// Serve files from this directory.
    #[arg(long)]
    root: Option<PathBuf>,
}

/// The application: nothing in it knows which protocol carries it.
fn app(root: Option<PathBuf>) -> Router {
    let router = Router::new()
        .route("/whoami", get(whoami))
        .route("/bytes/{n}", get(bytes))
        .route("/sha256", post(sha256));
    match root {
        Some(root) => router.fallback_service(tower_http::services::ServeDir::new(root)),
        None => router,
    }
}

/// The peer address and protocol: from quay's `ConnectionInfo` over HTTP/3, from
/// axum's `ConnectInfo` over TCP.
async fn whoami(req: Request) -> String {
    let version = format!("{:?}", req.version());
    if let Some(conn) = req.extensions().get::<ConnectionInfo>() {
        return format!("{} {version} h3 conn={}\n", conn.peer_addr(), conn.id());
    }
    match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(peer)) => format!("{peer} {version} tcp\n"),
        None => format!("unknown {version}\n"),
    }
}

async fn bytes(Path(n): Path<usize>) -> Result<Vec<u8>, (http::StatusCode, &'static str)> {
    if n > 64 << 20 {
        return Err((http::StatusCode::PAYLOAD_TOO_LARGE, "at most 64 MiB\n"));
    }
    Ok((0..n).map(|i| (i % 256) as u8).collect())
}

async fn sha256(body: Bytes) -> String {
    let digest = Sha256::digest(&body);
    digest.iter().map(|b| format!("{b:02x}")).collect()
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
    let app = app(args.root.clone());
    let shutdown = CancellationToken::new();

    // HTTP/3: the whole of it.
    let tls = quay::io::TlsConfig::from_pem_files(&args.cert, &args.key)?;
    let h3 = quay::h3::Server::builder().tls(tls).bind(args.listen)?;
    let addr = h3.local_addr();
    let h3 = h3
        .with_shutdown_token(shutdown.clone(), Duration::from_secs(10))
        .serve_service(app.clone());

    // HTTP/1.1 and HTTP/2 on the same port number, pointing browsers at HTTP/3.
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind TCP {addr}"))?;
    let acceptor = Arc::new(tcp_tls(&args.cert, &args.key)?);
    let tcp_app = app.layer(AltSvcLayer::new(addr.port(), Duration::from_secs(86_400)));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    println!("listening on {addr}");
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("draining");
        stop.cancel();
    });
    let tcp = serve_tcp(tcp, acceptor, tcp_app, shutdown.clone());
    let (h3, ()) = tokio::join!(h3, tcp);
    h3?;
    Ok(())
}

/// The TCP side's TLS: the same certificate, ALPN `h2` or `http/1.1`.
fn tcp_tls(cert: &std::path::Path, key: &std::path::Path) -> anyhow::Result<SslAcceptor> {
    let mut tls = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls())?;
    tls.set_certificate_chain_file(cert)
        .with_context(|| format!("failed to load {}", cert.display()))?;
    tls.set_private_key_file(key, SslFiletype::PEM)
        .with_context(|| format!("failed to load {}", key.display()))?;
    tls.check_private_key()
        .context("the private key does not match the certificate")?;
    tls.set_alpn_select_callback(|_, offered| {
        select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    Ok(tls.build())
}

/// Accepts TLS connections on `tcp` and serves HTTP/1.1 or HTTP/2 (by ALPN) on each,
/// until `shutdown`; then lets the connections finish their requests.
async fn serve_tcp(
    tcp: tokio::net::TcpListener,
    acceptor: Arc<SslAcceptor>,
    app: Router,
    shutdown: CancellationToken,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = Arc::clone(&acceptor);
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio_boring::accept(&acceptor, stream).await {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let svc = tower::ServiceExt::map_request(app, move |mut req: Request<_>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            });
            let svc = hyper_util::service::TowerToHyperService::new(svc);
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let conn =
                builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%peer, error = %e, "HTTP connection failed");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}
