//! What the peer servers share: arguments and the routes of quay's `h3-server` that the
//! benchmarks use.
//!
//! ```text
//! SERVER --listen ADDR --cert PEM --key PEM [--retry]
//! ```
//!
//! Routes: `GET /bytes/N` (N bytes), `POST /bytes/N` (the body is read to its end,
//! then N bytes), `POST /upload` (the body is read to its end; the response is its
//! length in decimal). Anything else is 404. Prints `listening on ADDR` when ready.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Command-line arguments of a peer server.
#[derive(Debug)]
pub struct Args {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Validate every client's address with a Retry first.
    pub retry: bool,
}

impl Args {
    pub fn parse() -> anyhow::Result<Self> {
        let mut listen = None;
        let mut cert = None;
        let mut key = None;
        let mut retry = false;
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))
            };
            match arg.as_str() {
                "--listen" => listen = Some(value()?.parse()?),
                "--cert" => cert = Some(PathBuf::from(value()?)),
                "--key" => key = Some(PathBuf::from(value()?)),
                "--retry" => retry = true,
                other => anyhow::bail!(
                    "unknown argument `{other}`; usage: --listen ADDR --cert PEM --key PEM [--retry]"
                ),
            }
        }
        Ok(Self {
            listen: listen.ok_or_else(|| anyhow::anyhow!("--listen is required"))?,
            cert: cert.ok_or_else(|| anyhow::anyhow!("--cert is required"))?,
            key: key.ok_or_else(|| anyhow::anyhow!("--key is required"))?,
            retry,
        })
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Read the request body to its end, then send this many bytes.
    Bytes(u64),
    /// Read the request body to its end, then send its length.
    Upload,
    NotFound,
}

/// The route of a request.
pub fn route(method: &[u8], path: &[u8]) -> Route {
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    if let Some(n) = path.strip_prefix(b"/bytes/") {
        if method == b"GET" || method == b"POST" {
            return std::str::from_utf8(n)
                .ok()
                .and_then(|n| n.parse().ok())
                .map_or(Route::NotFound, Route::Bytes);
        }
    } else if path == b"/upload" && method == b"POST" {
        return Route::Upload;
    }
    Route::NotFound
}

/// The route of a request head as quiche hands it over (`:method` and `:path` among
/// its fields).
pub fn route_of_fields<F: quiche::h3::NameValue>(fields: &[F]) -> Route {
    let (mut method, mut path): (&[u8], &[u8]) = (b"", b"");
    for f in fields {
        match f.name() {
            b":method" => method = f.value(),
            b":path" => path = f.value(),
            _ => {}
        }
    }
    route(method, path)
}

/// Response bodies are slices of this.
pub static FILL: [u8; 1 << 16] = [0x71; 1 << 16];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_routed_by_its_method_and_path() {
        use quiche::h3::Header;
        let head = [
            Header::new(b":method", b"POST"),
            Header::new(b":scheme", b"https"),
            Header::new(b":path", b"/bytes/7"),
        ];
        assert_eq!(route_of_fields(&head), Route::Bytes(7));
        assert_eq!(route_of_fields(&head[1..]), Route::NotFound);
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"GET", b"/bytes/4096"), Route::Bytes(4096));
        assert_eq!(route(b"POST", b"/bytes/0?x=1"), Route::Bytes(0));
        assert_eq!(route(b"POST", b"/upload"), Route::Upload);
        assert_eq!(route(b"GET", b"/upload"), Route::NotFound);
        assert_eq!(route(b"GET", b"/bytes/x"), Route::NotFound);
        assert_eq!(route(b"PUT", b"/bytes/1"), Route::NotFound);
    }
}
