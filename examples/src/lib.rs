//! Shared helpers of the quay example programs.

pub mod hq;
pub mod raw_load;
pub mod routes;

/// Logs to stderr; `RUST_LOG` picks the level (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Bits per second of `bytes` moved in `secs`, as a human-readable string.
pub fn rate(bytes: u64, secs: f64) -> String {
    let bits = bytes as f64 * 8.0 / secs.max(1e-9);
    if bits >= 1e9 {
        format!("{:.2} Gbit/s", bits / 1e9)
    } else {
        format!("{:.1} Mbit/s", bits / 1e6)
    }
}

/// The server's TLS identity: the PEM files given, or a fresh self-signed certificate
/// for `localhost`, `127.0.0.1` and `::1`, whose PEM is written to `write_cert` if set
/// (for clients' `--ca`).
pub fn server_identity(
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
    write_cert: Option<&std::path::Path>,
) -> anyhow::Result<quay::io::TlsConfig> {
    use anyhow::Context;
    if let (Some(cert), Some(key)) = (cert, key) {
        return Ok(quay::io::TlsConfig::from_pem_files(cert, key)?);
    }
    let generated = quay::io::TlsConfig::self_signed(&["localhost", "127.0.0.1", "::1"])?;
    if let Some(path) = write_cert {
        std::fs::write(path, &generated.cert_pem)
            .with_context(|| format!("failed to write {}", path.display()))?;
    }
    Ok(generated.config)
}
