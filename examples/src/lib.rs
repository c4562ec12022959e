//! Shared helpers of the quay example programs.

pub mod hq;
pub mod raw_load;
pub mod routes;

/// Logs to stderr; `RUST_LOG` picks the level (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a log file or a pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
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

/// The addresses a server listens on when none is given: IPv4 and IPv6 loopback on
/// `port` (browsers try `localhost` as `::1` first).
pub fn default_listen(port: u16) -> Vec<std::net::SocketAddr> {
    vec![
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
    ]
}

/// Binds `addrs` with `builder`. With `lenient` (the defaults, not the user's
/// choice), an address this host does not have (IPv6 turned off, say) is skipped
/// with a warning instead of failing the server; any other failure (a port in use)
/// still fails it.
pub fn bind_server(
    builder: quay::h3::ServerBuilder,
    addrs: &[std::net::SocketAddr],
    lenient: bool,
) -> anyhow::Result<quay::h3::Server> {
    let mut usable = Vec::new();
    for &addr in addrs {
        if lenient && let Err(e) = std::net::UdpSocket::bind(addr) {
            // EAFNOSUPPORT: no IPv6 at all.
            let missing =
                e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(97);
            if missing {
                tracing::warn!(%addr, error = %e, "this host lacks the address: not listening on it");
                continue;
            }
        }
        usable.push(addr);
    }
    Ok(builder.bind_all(usable)?)
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
