//! `hq-interop`: HTTP/0.9 over QUIC, the protocol of the QUIC Interop Runner's
//! transport test cases, as an [`ApplicationOverQuic`] of its own.
//!
//! A request is one client-initiated bidirectional stream carrying `GET /path\r\n`
//! and a FIN; the response is the file's raw bytes and a FIN. No status, no headers:
//! a missing file resets the stream with [`NOT_FOUND`].
//!
//! File reads and writes are small blocking calls on local files made from the
//! connection's task, sized to the stream's flow-control credit: fine for an interop
//! endpoint, not a pattern for a production server.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use quay::app::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};
use quay::quiche;
use tokio::sync::oneshot;

/// The ALPN token of the interop runner's HTTP/0.9.
pub const ALPN: &[u8] = b"hq-interop";

/// Application error code of a stream reset for a file that does not exist.
pub const NOT_FOUND: u64 = 0x4;

/// Application error code of a stream reset for a malformed or oversized request.
pub const BAD_REQUEST: u64 = 0x5;

/// The longest request line accepted.
const MAX_REQUEST: usize = 4096;

/// The most file bytes read per `stream_send`.
const CHUNK: usize = 64 * 1024;

/// Serves files under a root directory.
#[derive(Debug)]
pub struct HqServer {
    root: Arc<PathBuf>,
    streams: HashMap<u64, ServerStream>,
    buf: Vec<u8>,
}

#[derive(Debug)]
enum ServerStream {
    /// Reading the request line.
    Request(Vec<u8>),
    /// Sending `file` from `offset`.
    Sending { file: File, offset: u64 },
}

impl HqServer {
    /// A server for one connection, serving files under `root`.
    pub fn new(root: Arc<PathBuf>) -> Self {
        Self {
            root,
            streams: HashMap::new(),
            buf: vec![0; CHUNK],
        }
    }

    /// Handles a complete request line on stream `id`.
    fn start(&mut self, conn: &mut QuicConnection, id: u64, line: &[u8]) {
        let Some(path) = parse_request(line) else {
            tracing::debug!(stream = id, "malformed hq request");
            reset(conn, id, BAD_REQUEST);
            self.streams.remove(&id);
            return;
        };
        let file = crate::routes::resolve(&self.root, path).and_then(|p| File::open(p).ok());
        match file {
            Some(file) => {
                tracing::debug!(stream = id, path, "hq request");
                self.streams
                    .insert(id, ServerStream::Sending { file, offset: 0 });
            }
            None => {
                tracing::debug!(stream = id, path, "hq request: not found");
                reset(conn, id, NOT_FOUND);
                self.streams.remove(&id);
            }
        }
    }
}

/// `GET /path` (with or without the line end) → `/path`.
fn parse_request(line: &[u8]) -> Option<&str> {
    let line = std::str::from_utf8(line).ok()?;
    let line = line.trim_end_matches(['\r', '\n']);
    let path = line.strip_prefix("GET ")?;
    (path.starts_with('/') && !path.contains([' ', '\r', '\n'])).then_some(path)
}

fn reset(conn: &mut QuicConnection, id: u64, code: u64) {
    let _ = conn.stream_shutdown(id, quiche::Shutdown::Read, code);
    let _ = conn.stream_shutdown(id, quiche::Shutdown::Write, code);
}

impl ApplicationOverQuic for HqServer {
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        for id in conn.readable() {
            if id % 4 != 0 {
                // Only client-initiated bidirectional streams carry requests.
                let _ = conn.stream_shutdown(id, quiche::Shutdown::Read, BAD_REQUEST);
                continue;
            }
            loop {
                let (n, fin) = match conn.stream_recv(id, &mut self.buf) {
                    Ok(v) => v,
                    Err(quiche::Error::Done) => break,
                    Err(e) => {
                        tracing::debug!(stream = id, error = %e, "hq stream failed");
                        self.streams.remove(&id);
                        break;
                    }
                };
                let entry = self
                    .streams
                    .entry(id)
                    .or_insert_with(|| ServerStream::Request(Vec::new()));
                let ServerStream::Request(line) = entry else {
                    // Bytes after the request: ignored.
                    continue;
                };
                line.extend_from_slice(&self.buf[..n]);
                if line.len() > MAX_REQUEST {
                    reset(conn, id, BAD_REQUEST);
                    self.streams.remove(&id);
                    break;
                }
                if fin || line.ends_with(b"\n") {
                    let line = std::mem::take(line);
                    self.start(conn, id, &line);
                }
                if fin {
                    break;
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let mut finished = Vec::new();
        for (&id, s) in self.streams.iter_mut() {
            let ServerStream::Sending { file, offset } = s else {
                continue;
            };
            loop {
                let room = match conn.stream_capacity(id) {
                    Ok(0) => break,
                    Ok(n) => n.min(self.buf.len()),
                    Err(e) => {
                        tracing::debug!(stream = id, error = %e, "hq stream ended");
                        finished.push(id);
                        break;
                    }
                };
                let n = match file.read_at(&mut self.buf[..room], *offset) {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(stream = id, error = %e, "file read failed");
                        reset(conn, id, NOT_FOUND);
                        finished.push(id);
                        break;
                    }
                };
                let fin = n == 0;
                match conn.stream_send(id, &self.buf[..n], fin) {
                    Ok(sent) => *offset += sent as u64,
                    Err(quiche::Error::Done) => break,
                    Err(e) => {
                        tracing::debug!(stream = id, error = %e, "hq send failed");
                        finished.push(id);
                        break;
                    }
                }
                if fin {
                    finished.push(id);
                    break;
                }
            }
        }
        for id in finished {
            self.streams.remove(&id);
        }
        Ok(())
    }
}

/// One download of an [`HqClient`].
#[derive(Debug, Clone)]
pub struct Download {
    /// The request path, `/name`.
    pub path: String,
    /// Where the body is written.
    pub output: PathBuf,
}

/// What happened to one download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadResult {
    /// The request path.
    pub path: String,
    /// Body bytes written.
    pub bytes: u64,
    /// `None` when the body arrived complete (FIN); otherwise why not.
    pub error: Option<String>,
}

/// Fetches files over one connection, as many at once as the server's stream limit
/// allows, and closes the connection (code 0) when every download has ended. The
/// results come through the receiver [`HqClient::new`] returns, also when the
/// connection closes early.
#[derive(Debug)]
pub struct HqClient {
    queue: VecDeque<Download>,
    active: HashMap<u64, Active>,
    next_stream: u64,
    results: Vec<DownloadResult>,
    report: Option<oneshot::Sender<Vec<DownloadResult>>>,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Active {
    download: Download,
    file: Option<File>,
    /// Request bytes not yet accepted by the stream.
    request: Vec<u8>,
    bytes: u64,
}

impl HqClient {
    /// A client for `downloads`, and the receiver of its results.
    pub fn new(downloads: Vec<Download>) -> (Self, oneshot::Receiver<Vec<DownloadResult>>) {
        let (tx, rx) = oneshot::channel();
        let client = Self {
            queue: downloads.into(),
            active: HashMap::new(),
            next_stream: 0,
            results: Vec::new(),
            report: Some(tx),
            buf: vec![0; CHUNK],
        };
        (client, rx)
    }

    fn end(&mut self, id: u64, error: Option<String>) {
        if let Some(a) = self.active.remove(&id) {
            self.results.push(DownloadResult {
                path: a.download.path,
                bytes: a.bytes,
                error,
            });
        }
    }

    fn send_report(&mut self) {
        if let Some(tx) = self.report.take() {
            let _ = tx.send(std::mem::take(&mut self.results));
        }
    }
}

/// Where the body of `url_path` goes under `dir`: the path's segments joined under
/// `dir`. `None` when a segment could climb out of `dir` (`..`, `.`, empty, a
/// backslash or NUL) or there is none: a server-chosen name never writes elsewhere.
pub fn output_path(dir: &Path, url_path: &str) -> Option<PathBuf> {
    let mut out = dir.to_path_buf();
    let mut any = false;
    for seg in url_path.trim_start_matches('/').split('/') {
        if seg.is_empty() || seg == "." || seg == ".." || seg.contains(['\\', '\0']) {
            return None;
        }
        out.push(seg);
        any = true;
    }
    any.then_some(out)
}

fn create(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    File::create(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl ApplicationOverQuic for HqClient {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.process_writes(conn)
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        for id in conn.readable() {
            loop {
                let Some(active) = self.active.get_mut(&id) else {
                    let _ = conn.stream_shutdown(id, quiche::Shutdown::Read, 0);
                    break;
                };
                match conn.stream_recv(id, &mut self.buf) {
                    Ok((n, fin)) => {
                        active.bytes += n as u64;
                        let written = match active.file.as_mut() {
                            Some(f) => f.write_all(&self.buf[..n]).map_err(|e| e.to_string()),
                            None => Ok(()),
                        };
                        if let Err(e) = written {
                            let _ = conn.stream_shutdown(id, quiche::Shutdown::Read, 0);
                            self.end(id, Some(format!("write failed: {e}")));
                            break;
                        }
                        if fin {
                            self.end(id, None);
                            break;
                        }
                    }
                    Err(quiche::Error::Done) => break,
                    Err(quiche::Error::StreamReset(code)) => {
                        self.end(id, Some(format!("stream reset with code {code:#x}")));
                        break;
                    }
                    Err(e) => {
                        self.end(id, Some(e.to_string()));
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        // Requests not yet fully accepted by their stream.
        for (&id, a) in self.active.iter_mut() {
            if !a.request.is_empty()
                && let Ok(n) = conn.stream_send(id, &a.request, true)
            {
                a.request.drain(..n);
            }
        }
        while conn.peer_streams_left_bidi() > 0 {
            let Some(download) = self.queue.pop_front() else {
                break;
            };
            let id = self.next_stream;
            self.next_stream += 4;
            let file = match create(&download.output) {
                Ok(f) => Some(f),
                Err(e) => {
                    self.results.push(DownloadResult {
                        path: download.path,
                        bytes: 0,
                        error: Some(format!("cannot create the output file {e}")),
                    });
                    continue;
                }
            };
            let mut request = format!("GET {}\r\n", download.path).into_bytes();
            match conn.stream_send(id, &request, true) {
                Ok(n) => {
                    request.drain(..n);
                }
                Err(quiche::Error::Done) => {}
                Err(e) => return Err(e.into()),
            }
            self.active.insert(
                id,
                Active {
                    download,
                    file,
                    request,
                    bytes: 0,
                },
            );
        }
        if self.queue.is_empty() && self.active.is_empty() && !conn.is_closed() {
            self.send_report();
            return Err(AppError::close(0, "done"));
        }
        Ok(())
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &CloseReason) {
        let ids: Vec<u64> = self.active.keys().copied().collect();
        for id in ids {
            self.end(id, Some(format!("connection closed: {reason}")));
        }
        for d in std::mem::take(&mut self.queue) {
            self.results.push(DownloadResult {
                path: d.path,
                bytes: 0,
                error: Some(format!("never requested: connection closed: {reason}")),
            });
        }
        self.send_report();
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{output_path, parse_request};

    #[test]
    fn output_paths_stay_under_the_directory() {
        let d = Path::new("/downloads");
        assert_eq!(output_path(d, "/a.bin"), Some(d.join("a.bin")));
        assert_eq!(output_path(d, "/sub/a.bin"), Some(d.join("sub/a.bin")));
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/",
            "",
            "/a//b",
            "/./a",
            "/a\\..\\b",
        ] {
            assert_eq!(output_path(d, bad), None, "{bad}");
        }
    }

    #[test]
    fn request_lines_parse_strictly() {
        assert_eq!(parse_request(b"GET /a.bin\r\n"), Some("/a.bin"));
        assert_eq!(parse_request(b"GET /dir/a"), Some("/dir/a"));
        assert_eq!(parse_request(b"GET a.bin\r\n"), None);
        assert_eq!(parse_request(b"POST /a\r\n"), None);
        assert_eq!(parse_request(b"GET /a b\r\n"), None);
        assert_eq!(parse_request(&[0xff, 0xfe]), None);
    }
}
