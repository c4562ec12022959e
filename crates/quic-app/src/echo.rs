//! A reference protocol: every bidirectional stream is echoed back.
//!
//! [`EchoServer`] answers each bidirectional stream with the bytes it received and
//! finishes it when the peer finishes. [`EchoClient`] opens a number of streams, sends a
//! deterministic byte pattern on each, and checks every echoed byte against it. The
//! examples `echo-server` and `echo-client` and the loopback tests run these two over
//! real sockets; the in-memory harness runs them without.
//!
//! Both read only as much as they can write, so a slow peer slows them down through
//! QUIC flow control instead of making them buffer.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};

/// The ALPN the echo examples use.
pub const ALPN: &[u8] = b"quay-echo";

/// Size of the scratch buffer each echo app reads into: one read per 64 KiB.
const SCRATCH_LEN: usize = 64 * 1024;

/// The period of the byte pattern [`EchoClient`] sends: a prime, so the pattern does not
/// line up with packet or buffer sizes.
const PATTERN_PERIOD: usize = 251;

/// The byte at `offset` of the `index`-th stream of an [`EchoClient`].
pub fn pattern_byte(index: u64, offset: u64) -> u8 {
    ((offset + index * 31) % PATTERN_PERIOD as u64) as u8
}

/// Echoes every bidirectional stream.
#[derive(Debug)]
pub struct EchoServer {
    scratch: Box<[u8]>,
    /// Bytes read but not yet accepted by `stream_send`, and whether FIN followed them.
    /// Empty in the steady state: reads are sized to the stream's send capacity.
    pending: HashMap<u64, (Vec<u8>, bool)>,
}

impl Default for EchoServer {
    fn default() -> Self {
        Self::new()
    }
}

impl EchoServer {
    /// A new echo server app for one connection.
    pub fn new() -> Self {
        Self {
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            pending: HashMap::new(),
        }
    }

    fn echo(&mut self, conn: &mut QuicConnection, id: u64) -> Result<(), AppError> {
        if let Some((buf, fin)) = self.pending.remove(&id) {
            let n = match conn.stream_send(id, &buf, fin) {
                Ok(n) => n,
                Err(quiche::Error::Done) => 0,
                Err(_) => return Ok(()),
            };
            if n < buf.len() {
                self.pending.insert(id, (buf[n..].to_vec(), fin));
                return Ok(());
            }
        }
        loop {
            let cap = match conn.stream_capacity(id) {
                Ok(0) | Err(_) => return Ok(()),
                Ok(cap) => cap.min(self.scratch.len()),
            };
            let (len, fin) = match conn.stream_recv(id, &mut self.scratch[..cap]) {
                Ok(v) => v,
                Err(quiche::Error::Done) => return Ok(()),
                Err(quiche::Error::StreamReset(code)) => {
                    let _ = conn.stream_shutdown(id, quiche::Shutdown::Write, code);
                    return Ok(());
                }
                Err(_) => return Ok(()),
            };
            let n = match conn.stream_send(id, &self.scratch[..len], fin) {
                Ok(n) => n,
                Err(quiche::Error::Done) => 0,
                Err(_) => return Ok(()),
            };
            if n < len || (len == 0 && fin && n == 0 && !conn.stream_finished(id)) {
                self.pending
                    .insert(id, (self.scratch[n..len].to_vec(), fin));
                return Ok(());
            }
            if fin {
                return Ok(());
            }
        }
    }
}

impl ApplicationOverQuic for EchoServer {
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        for id in conn.readable() {
            self.echo(conn, id)?;
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        for id in conn.writable() {
            if conn.stream_readable(id) || self.pending.contains_key(&id) {
                self.echo(conn, id)?;
            }
        }
        Ok(())
    }
}

/// What an [`EchoClient`] saw on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoStreamReport {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received back.
    pub received: u64,
    /// SHA-256 of the bytes sent (of nothing when hashing is off).
    pub sent_sha256: [u8; 32],
    /// SHA-256 of the bytes received (of nothing when hashing is off).
    pub received_sha256: [u8; 32],
    /// Offset of the first received byte that differed from what was sent.
    pub first_mismatch: Option<u64>,
    /// Whether the echo finished (FIN received).
    pub finished: bool,
}

impl EchoStreamReport {
    /// Whether the stream came back complete and identical.
    pub fn is_ok(&self) -> bool {
        self.finished
            && self.first_mismatch.is_none()
            && self.sent == self.received
            && self.sent_sha256 == self.received_sha256
    }
}

/// What an [`EchoClient`] saw on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReport {
    /// One report per stream, in the order the streams were opened.
    pub streams: Vec<EchoStreamReport>,
    /// Why the connection closed, if it closed before every echo finished.
    pub close_reason: Option<CloseReason>,
}

impl EchoReport {
    /// Whether every stream came back complete and identical.
    pub fn is_ok(&self) -> bool {
        self.streams.iter().all(EchoStreamReport::is_ok)
    }

    /// Total bytes echoed back on all streams.
    pub fn bytes_received(&self) -> u64 {
        self.streams.iter().map(|s| s.received).sum()
    }
}

#[derive(Debug)]
struct ClientStream {
    sent: u64,
    received: u64,
    sent_hash: Sha256,
    recv_hash: Sha256,
    first_mismatch: Option<u64>,
    finished: bool,
}

/// Sends a byte pattern on a number of streams and verifies what comes back.
///
/// When every stream has come back, the client closes the connection with application
/// code 0 and sends its [`EchoReport`] through the receiver [`EchoClient::new`]
/// returned; if the connection closes first, the report says how far each stream got.
#[derive(Debug)]
pub struct EchoClient {
    bytes_per_stream: u64,
    total_streams: usize,
    streams: Vec<ClientStream>,
    done: usize,
    scratch: Box<[u8]>,
    pattern: Box<[u8]>,
    hashing: bool,
    report_tx: Option<oneshot::Sender<EchoReport>>,
}

impl EchoClient {
    /// A client that echoes `streams` streams of `bytes_per_stream` bytes each, all
    /// open at once as far as the peer's stream limit allows.
    pub fn new(streams: usize, bytes_per_stream: u64) -> (Self, oneshot::Receiver<EchoReport>) {
        let (report_tx, report_rx) = oneshot::channel();
        let pattern: Vec<u8> = (0..SCRATCH_LEN + PATTERN_PERIOD)
            .map(|i| (i % PATTERN_PERIOD) as u8)
            .collect();
        let app = Self {
            bytes_per_stream,
            total_streams: streams,
            streams: Vec::with_capacity(streams),
            done: 0,
            scratch: vec![0; SCRATCH_LEN].into_boxed_slice(),
            pattern: pattern.into_boxed_slice(),
            hashing: true,
            report_tx: Some(report_tx),
        };
        (app, report_rx)
    }

    /// Whether to compute the SHA-256 of what is sent and received (on by default).
    /// Every received byte is compared with the byte sent either way; the hashes are
    /// a second, reportable check that costs CPU time in throughput measurements.
    pub fn hashing(mut self, on: bool) -> Self {
        self.hashing = on;
        self
    }

    /// The pattern bytes of stream `index` from `offset`, at most `max` of them.
    fn pattern_at(&self, index: u64, offset: u64, max: usize) -> &[u8] {
        let start = ((offset + index * 31) % PATTERN_PERIOD as u64) as usize;
        &self.pattern[start..start + max.min(SCRATCH_LEN)]
    }

    fn stream_id(index: usize) -> u64 {
        // RFC 9000 §2.1: client-initiated bidirectional streams are 0, 4, 8, ...
        index as u64 * 4
    }

    fn open_and_send(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        // Open new streams while the peer's limit allows.
        while self.streams.len() < self.total_streams && conn.peer_streams_left_bidi() > 0 {
            let id = Self::stream_id(self.streams.len());
            self.streams.push(ClientStream {
                sent: 0,
                received: 0,
                sent_hash: Sha256::new(),
                recv_hash: Sha256::new(),
                first_mismatch: None,
                finished: false,
            });
            if self.bytes_per_stream == 0 {
                conn.stream_send(id, &[], true)?;
            }
        }
        for index in 0..self.streams.len() {
            let id = Self::stream_id(index);
            loop {
                let sent = self.streams[index].sent;
                let left = self.bytes_per_stream - sent;
                if left == 0 {
                    break;
                }
                let chunk_len = left.min(SCRATCH_LEN as u64) as usize;
                let fin = chunk_len as u64 == left;
                let chunk = self.pattern_at(index as u64, sent, chunk_len);
                let n = match conn.stream_send(id, chunk, fin) {
                    Ok(n) => n,
                    Err(quiche::Error::Done) => 0,
                    Err(e) => return Err(e.into()),
                };
                let start = ((sent + index as u64 * 31) % PATTERN_PERIOD as u64) as usize;
                let stream = &mut self.streams[index];
                if self.hashing {
                    stream.sent_hash.update(&self.pattern[start..start + n]);
                }
                stream.sent += n as u64;
                if n < chunk_len {
                    break;
                }
            }
        }
        Ok(())
    }

    fn report(&mut self, close_reason: Option<CloseReason>) {
        let Some(tx) = self.report_tx.take() else {
            return;
        };
        let streams = self
            .streams
            .iter()
            .map(|s| EchoStreamReport {
                sent: s.sent,
                received: s.received,
                sent_sha256: s.sent_hash.clone().finalize().into(),
                received_sha256: s.recv_hash.clone().finalize().into(),
                first_mismatch: s.first_mismatch,
                finished: s.finished,
            })
            .collect();
        let _ = tx.send(EchoReport {
            streams,
            close_reason,
        });
    }
}

impl ApplicationOverQuic for EchoClient {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.open_and_send(conn)
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        for id in conn.readable() {
            let index = (id / 4) as usize;
            if id % 4 != 0 || index >= self.streams.len() {
                // Not one of ours: refuse to read it.
                let _ = conn.stream_shutdown(id, quiche::Shutdown::Read, 0);
                continue;
            }
            loop {
                let (len, fin) = match conn.stream_recv(id, &mut self.scratch) {
                    Ok(v) => v,
                    Err(quiche::Error::Done) => break,
                    Err(quiche::Error::StreamReset(code)) => {
                        return Err(AppError::close(
                            1,
                            format!("stream {id} reset by peer with code {code}"),
                        ));
                    }
                    Err(e) => return Err(e.into()),
                };
                let offset = self.streams[index].received;
                let start = ((offset + index as u64 * 31) % PATTERN_PERIOD as u64) as usize;
                let expected = &self.pattern[start..start + len];
                let stream = &mut self.streams[index];
                if stream.first_mismatch.is_none() && expected != &self.scratch[..len] {
                    let at = expected
                        .iter()
                        .zip(&self.scratch[..len])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    stream.first_mismatch = Some(offset + at as u64);
                }
                if self.hashing {
                    stream.recv_hash.update(&self.scratch[..len]);
                }
                stream.received += len as u64;
                if fin && !stream.finished {
                    stream.finished = true;
                    self.done += 1;
                }
                if fin {
                    break;
                }
            }
        }
        if self.done == self.total_streams && self.report_tx.is_some() {
            self.report(None);
            conn.close(true, 0, b"done")?;
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        if self.report_tx.is_some() {
            self.open_and_send(conn)?;
        }
        Ok(())
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &CloseReason) {
        self.report(Some(reason.clone()));
    }
}
