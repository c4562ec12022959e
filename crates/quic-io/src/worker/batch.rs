//! Turns a connection's output into GSO batches.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Send buffers kept for reuse per endpoint, beyond those in use.
const POOL_MAX_FREE: usize = 64;

/// Send buffers shared by the connections of one endpoint. A connection holds one
/// only while it sends (or holds a paced packet), so an idle connection costs no
/// send buffer.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<Box<[u8]>>>,
}

impl BufferPool {
    fn take(&self, size: usize) -> Box<[u8]> {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .filter(|b| b.len() == size);
        reused.unwrap_or_else(|| vec![0; size].into_boxed_slice())
    }

    fn give(&self, buf: Box<[u8]>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.len() < POOL_MAX_FREE {
            free.push(buf);
        }
    }
}

/// The most bytes one GSO send may carry: the kernel's limit on a UDP datagram before
/// segmentation (64 KiB), less headers.
const MAX_GSO_BYTES: usize = 65_000;

/// Packets quiche schedules this close to now are sent at once rather than held.
const PACING_GRANULARITY: std::time::Duration = std::time::Duration::from_millis(1);

/// One batch, ready to send: `len` bytes to `dst` in segments of `segment` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    /// The local address it leaves from (a migrating client has two).
    pub(crate) src: SocketAddr,
    pub(crate) dst: SocketAddr,
    pub(crate) len: usize,
    pub(crate) segment: usize,
    pub(crate) count: usize,
}

/// Why filling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// quiche has nothing more to send now.
    Done,
    /// More may follow at once: send this batch and fill again.
    More,
    /// The next packet is held until this instant (pacing).
    HoldUntil(Instant),
}

/// Where a packet that could not join the current batch waits: right after it in the
/// buffer, moved to the front once the batch is sent.
#[derive(Debug, Clone, Copy)]
struct Carry {
    len: usize,
    src: SocketAddr,
    dst: SocketAddr,
    at: Instant,
}

/// Packs one connection's output into batches, in a buffer taken from the endpoint's
/// pool while it sends.
#[derive(Debug)]
pub(crate) struct SendBatcher {
    buf: Option<Box<[u8]>>,
    pool: Arc<BufferPool>,
    /// One slot more than a batch holds, for the packet that ends it.
    buf_len: usize,
    max_payload: usize,
    max_segments: usize,
    pacing: bool,
    carry: Option<Carry>,
    /// Where the carried packet sits while the batch before it is sent.
    carry_offset: usize,
}

impl SendBatcher {
    pub(crate) fn new(
        max_payload: usize,
        socket_segments: usize,
        pacing: bool,
        pool: Arc<BufferPool>,
    ) -> Self {
        let max_segments = socket_segments.min(MAX_GSO_BYTES / max_payload).max(1);
        Self {
            buf: None,
            pool,
            buf_len: max_payload * (max_segments + 1),
            max_payload,
            max_segments,
            pacing,
            carry: None,
            carry_offset: 0,
        }
    }

    /// The bytes of a batch [`fill`](Self::fill) returned.
    pub(crate) fn bytes(&self, batch: &Batch) -> &[u8] {
        self.buf.as_ref().map_or(&[], |b| &b[..batch.len])
    }

    /// Returns the buffer to the pool unless a paced packet waits in it.
    pub(crate) fn release(&mut self) {
        if self.carry.is_none()
            && let Some(buf) = self.buf.take()
        {
            self.pool.give(buf);
        }
    }

    /// Whether a packet is held back for pacing.
    pub(crate) fn holding(&self) -> Option<Instant> {
        self.carry
            .filter(|c| self.pacing && c.at > Instant::now())
            .map(|c| c.at)
    }

    /// Fills a batch from `conn`. Call [`sent`](Self::sent) after sending it.
    pub(crate) fn fill(&mut self, conn: &mut quiche::Connection) -> (Option<Batch>, Next) {
        self.fill_at_most(conn, usize::MAX)
    }

    /// Fills a batch of at most `max` datagrams (at least one) from `conn`.
    pub(crate) fn fill_at_most(
        &mut self,
        conn: &mut quiche::Connection,
        max: usize,
    ) -> (Option<Batch>, Next) {
        let max_segments = self.max_segments.min(max.max(1));
        let now = Instant::now();
        let buf_len = self.buf_len;
        let pool = &self.pool;
        let buf = self.buf.get_or_insert_with(|| pool.take(buf_len));
        let mut batch: Option<Batch> = None;
        if let Some(c) = self.carry {
            if self.pacing && c.at > now + PACING_GRANULARITY {
                return (None, Next::HoldUntil(c.at));
            }
            self.carry = None;
            batch = Some(Batch {
                src: c.src,
                dst: c.dst,
                len: c.len,
                segment: c.len,
                count: 1,
            });
        }
        loop {
            let len = batch.map_or(0, |b| b.len);
            if batch.is_some_and(|b| b.count >= max_segments) {
                return (batch, Next::More);
            }
            let (n, info) = match conn.send(&mut buf[len..len + self.max_payload]) {
                Ok(v) => v,
                Err(quiche::Error::Done) => return (batch, Next::Done),
                Err(e) => {
                    tracing::debug!(error = %e, "send failed");
                    return (batch, Next::Done);
                }
            };
            let held = self.pacing && info.at > now + PACING_GRANULARITY;
            let Some(b) = batch.as_mut() else {
                if held {
                    self.carry = Some(Carry {
                        len: n,
                        src: info.from,
                        dst: info.to,
                        at: info.at,
                    });
                    self.carry_offset = 0;
                    return (None, Next::HoldUntil(info.at));
                }
                batch = Some(Batch {
                    src: info.from,
                    dst: info.to,
                    len: n,
                    segment: n,
                    count: 1,
                });
                continue;
            };
            if held || info.to != b.dst || info.from != b.src || n > b.segment {
                self.carry = Some(Carry {
                    len: n,
                    src: info.from,
                    dst: info.to,
                    at: info.at,
                });
                self.carry_offset = len;
                let next = if held {
                    Next::HoldUntil(info.at)
                } else {
                    Next::More
                };
                return (batch, next);
            }
            b.len += n;
            b.count += 1;
            if n < b.segment {
                // A shorter packet can only be the last segment of a GSO batch.
                return (batch, Next::More);
            }
        }
    }

    /// The batch went out: move a carried packet to the front.
    pub(crate) fn sent(&mut self) {
        if let Some(c) = self.carry
            && self.carry_offset != 0
            && let Some(buf) = self.buf.as_mut()
        {
            buf.copy_within(self.carry_offset..self.carry_offset + c.len, 0);
            self.carry_offset = 0;
        }
    }
}
