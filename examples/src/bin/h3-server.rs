//! An HTTP/3 server: files from a directory plus test routes.
//!
//! ```text
//! h3-server [--listen ADDR] [--root DIR] [--cert PEM --key PEM] [--write-cert PATH]
//!           [--retry]
//! ```
//!
//! Routes: `GET /bytes/N`, `POST /echo`, `POST /sha256`, `GET /trailers`, and
//! `GET /path` for files under `--root`. Without `--cert`/`--key` a self-signed
//! certificate is generated (`--write-cert` saves it for clients). Prints
//! `listening on ADDR` when ready; Ctrl-C drains gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quay::h3::Server;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "HTTP/3 server: files and test routes")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:4433")]
    listen: SocketAddr,
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
    /// Validate every client's address with a Retry first.
    #[arg(long)]
    retry: bool,
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
    let tls = quay_examples::server_identity(
        args.cert.as_deref(),
        args.key.as_deref(),
        args.write_cert.as_deref(),
    )?;
    let retry: fn(&mut quay::io::ServerParams) = if args.retry {
        |p| p.retry = quay::io::RetryPolicy::Always
    } else {
        |p| p.retry = quay::io::RetryPolicy::Never
    };
    let server = Server::builder()
        .tls(tls)
        .configure(retry)
        .bind(args.listen)?;
    println!("listening on {}", server.local_addr());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("draining");
        stop.cancel();
    });
    let root = Arc::new(args.root);
    server
        .serve_with_shutdown(
            move |req| {
                let root = Arc::clone(&root);
                async move { quay_examples::routes::handle(req, root.as_deref()).await }
            },
            shutdown,
            Duration::from_secs(10),
        )
        .await?;
    Ok(())
}
