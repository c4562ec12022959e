//! Shared helpers of the quay example programs.

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
