//! The routes of `h3-server`, as a library so the test suite can serve them too.
//!
//! - `GET /bytes/N`: exactly N bytes, byte i being `i % 256`, streamed from a static
//!   buffer (N may exceed memory);
//! - `POST /bytes/N`: the request body is read and dropped, then N pattern bytes (a
//!   request/response of chosen sizes, for load tests);
//! - `POST /upload`: an upload sink: the body is read and dropped; the answer is its
//!   length in bytes, as text;
//! - `POST /echo`: the request body, streamed back;
//! - `POST /sha256`: the lowercase hex SHA-256 of the request body;
//! - `GET /trailers`: a small body followed by trailers;
//! - `GET /redirect/N`: 302 to `/redirect/N-1`, and `/redirect/0` to `/bytes/10`
//!   (for clients' redirect handling; N at most 100);
//! - `GET /headers`: the request's headers, one `name: value` per line;
//! - `HEAD` of any `GET` route: its head, without the body;
//! - `GET /path`: the file at `path` under the served root, or 404; nothing outside
//!   the root is ever served.

use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use quay::h3::RecvBody;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

/// The largest `/bytes/N` request honoured: 1 TiB, far beyond any test.
const MAX_BYTES: u64 = 1 << 40;

/// Chunk size of generated and file bodies.
const CHUNK: usize = 64 * 1024;

/// 64 KiB of the `/bytes/` pattern; a multiple of 256, so every chunk starts at 0.
static PATTERN: [u8; CHUNK] = {
    let mut p = [0u8; CHUNK];
    let mut i = 0;
    while i < CHUNK {
        p[i] = (i % 256) as u8;
        i += 1;
    }
    p
};

/// Every response body the routes produce.
#[derive(Debug)]
pub enum RouteBody {
    /// Bytes in memory, then optional trailers.
    Full(quay::h3::Body),
    /// `n` bytes of the pattern still to send.
    Pattern(u64),
    /// The request body, echoed.
    Echo(RecvBody),
    /// Chunks from a reader task (files).
    Channel(mpsc::Receiver<std::io::Result<Bytes>>),
}

impl http_body::Body for RouteBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RouteBody::Full(b) => Pin::new(b).poll_frame(cx).map_err(|e| match e {}),
            RouteBody::Pattern(left) => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(CHUNK as u64) as usize;
                *left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&PATTERN[..n])))))
            }
            RouteBody::Echo(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            RouteBody::Channel(rx) => rx
                .poll_recv(cx)
                .map(|o| o.map(|r| r.map(Frame::data).map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RouteBody::Full(b) => b.is_end_stream(),
            RouteBody::Pattern(left) => *left == 0,
            RouteBody::Echo(b) => b.is_end_stream(),
            RouteBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RouteBody::Full(b) => b.size_hint(),
            RouteBody::Pattern(left) => http_body::SizeHint::with_exact(*left),
            RouteBody::Echo(b) => b.size_hint(),
            RouteBody::Channel(_) => http_body::SizeHint::default(),
        }
    }
}

/// Handles one request; `root` is the directory files are served from.
pub async fn handle(
    req: http::Request<RecvBody>,
    root: Option<&Path>,
) -> Result<Response<RouteBody>, std::convert::Infallible> {
    let (mut parts, body) = req.into_parts();
    // HEAD: the GET response's head, without its body (RFC 9110 §9.3.2).
    let head = parts.method == Method::HEAD;
    if head {
        parts.method = Method::GET;
    }
    let path = parts.uri.path();
    let resp = match (&parts.method, path) {
        (&Method::GET, p) if p.starts_with("/bytes/") => bytes_route(&p["/bytes/".len()..]),
        (&Method::POST, p) if p.starts_with("/bytes/") => match drain(body).await {
            Ok(_) => bytes_route(&p["/bytes/".len()..]),
            Err(r) => r,
        },
        (&Method::POST, "/upload") => match drain(body).await {
            Ok(n) => ok(RouteBody::Full(format!("{n}\n").into())),
            Err(r) => r,
        },
        (&Method::POST, "/echo") => ok(RouteBody::Echo(body)),
        (&Method::POST, "/sha256") => sha256_route(body).await,
        (&Method::GET, "/trailers") => {
            let mut t = HeaderMap::new();
            t.insert("x-trailer", HeaderValue::from_static("yes"));
            t.insert("x-body-length", HeaderValue::from_static("16"));
            ok(RouteBody::Full(
                quay::h3::Body::from("trailers follow\n").with_trailers(t),
            ))
        }
        (&Method::GET, p) if p.starts_with("/redirect/") => {
            match p["/redirect/".len()..].parse::<u32>() {
                Ok(0) => redirect("/bytes/10"),
                Ok(n) if n <= 100 => redirect(&format!("/redirect/{}", n - 1)),
                _ => status(StatusCode::BAD_REQUEST, "want /redirect/N, N up to 100\n"),
            }
        }
        (&Method::GET, "/headers") => {
            let mut text = String::new();
            for (name, value) in &parts.headers {
                text.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            ok(RouteBody::Full(text.into()))
        }
        (&Method::GET, p) => match root {
            Some(root) => file_route(root, p).await,
            None => status(StatusCode::NOT_FOUND, "not found\n"),
        },
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
    };
    if head {
        let (mut parts, body) = resp.into_parts();
        // The length GET would send, which the server adds only to a body it sends.
        if let Some(n) = http_body::Body::size_hint(&body).exact()
            && parts.status.is_success()
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH)
        {
            parts.headers.insert(http::header::CONTENT_LENGTH, n.into());
        }
        return Ok(Response::from_parts(
            parts,
            RouteBody::Full(quay::h3::Body::empty()),
        ));
    }
    Ok(resp)
}

fn redirect(to: &str) -> Response<RouteBody> {
    let mut r = status(StatusCode::FOUND, "");
    if let Ok(v) = HeaderValue::try_from(to) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

fn ok(body: RouteBody) -> Response<RouteBody> {
    Response::new(body)
}

fn status(code: StatusCode, text: &'static str) -> Response<RouteBody> {
    let mut r = Response::new(RouteBody::Full(text.into()));
    *r.status_mut() = code;
    r
}

fn bytes_route(n: &str) -> Response<RouteBody> {
    match n.parse::<u64>() {
        Ok(n) if n <= MAX_BYTES => {
            // Its size is exact: the server sends it as the `content-length`.
            ok(RouteBody::Pattern(n))
        }
        _ => status(
            StatusCode::BAD_REQUEST,
            "expected /bytes/N with N <= 2^40\n",
        ),
    }
}

/// Reads a request body to its end; its length, or the error response.
async fn drain(mut body: RecvBody) -> Result<u64, Response<RouteBody>> {
    let mut n = 0u64;
    loop {
        match body.chunk().await {
            Ok(Some(c)) => n += c.len() as u64,
            Ok(None) => return Ok(n),
            Err(_) => return Err(status(StatusCode::BAD_REQUEST, "request body failed\n")),
        }
    }
}

async fn sha256_route(mut body: RecvBody) -> Response<RouteBody> {
    let mut hash = Sha256::new();
    loop {
        match body.chunk().await {
            Ok(Some(c)) => hash.update(&c),
            Ok(None) => break,
            Err(_) => return status(StatusCode::BAD_REQUEST, "request body failed\n"),
        }
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    ok(RouteBody::Full(hex.into()))
}

async fn file_route(root: &Path, path: &str) -> Response<RouteBody> {
    let Some(file) = resolve(root, path) else {
        return status(StatusCode::NOT_FOUND, "not found\n");
    };
    let f = match tokio::fs::File::open(&file).await {
        Ok(f) => f,
        Err(_) => return status(StatusCode::NOT_FOUND, "not found\n"),
    };
    match f.metadata().await {
        Ok(m) if m.is_file() => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(read_file(f, tx));
            let mut r = ok(RouteBody::Channel(rx));
            r.headers_mut()
                .insert(http::header::CONTENT_LENGTH, m.len().into());
            r
        }
        _ => status(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn read_file(mut f: tokio::fs::File, tx: mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let mut buf = vec![0u8; CHUNK];
        match f.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                buf.truncate(n);
                if tx.send(Ok(buf.into())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}

/// The file `path` names under `root`, if it stays inside it: only normal path
/// segments are allowed, and the canonical result must still be under the root (no
/// `..`, no symlink out).
pub fn resolve(root: &Path, path: &str) -> Option<PathBuf> {
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let root = root.canonicalize().ok()?;
    let mut full = root.join(rel);
    if full.is_dir() {
        full = full.join("index.html");
    }
    let full = full.canonicalize().ok()?;
    full.starts_with(&root).then_some(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_outside_the_root_are_refused() {
        let dir = std::env::temp_dir().join(format!("quay-root-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a.txt"), "a").unwrap();
        assert_eq!(
            resolve(&dir, "/sub/a.txt"),
            Some(dir.canonicalize().unwrap().join("sub/a.txt"))
        );
        assert_eq!(resolve(&dir, "/../etc/passwd"), None);
        assert_eq!(resolve(&dir, "/sub/../../etc/passwd"), None);
        assert_eq!(resolve(&dir, "/missing"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_pattern_is_i_mod_256() {
        assert!(
            PATTERN
                .iter()
                .enumerate()
                .all(|(i, b)| *b == (i % 256) as u8)
        );
    }
}
