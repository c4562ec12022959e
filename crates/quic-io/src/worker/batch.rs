//! Turns a connection's output into GSO batches.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Send buffers kept for reuse per endpoint, beyond those in use.
const POOL_MAX_FREE: usize = 64;

/// The most batches one send carries (one `sendmmsg`, each batch a message of its
/// own with its own segment size).
pub(crate) const MAX_BATCHES: usize = 16;

/// Packets a send buffer holds at least: without GSO every packet is a batch of its
/// own, and this many leave in one call.
const MIN_BUFFER_PACKETS: usize = MAX_BATCHES;

/// A send buffer and the batches packed into it.
#[derive(Debug)]
struct SendBuf {
    bytes: Box<[u8]>,
    batches: Vec<Batch>,
}

/// Send buffers shared by the connections of one endpoint. A connection holds one
/// only while it sends (or holds a paced packet), so an idle connection costs no
/// send buffer.
#[derive(Debug, Default)]
pub(crate) struct BufferPool {
    free: Mutex<Vec<SendBuf>>,
}

impl BufferPool {
    fn take(&self, size: usize) -> SendBuf {
        let reused = self
            .free
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .filter(|b| b.bytes.len() == size);
        reused.unwrap_or_else(|| SendBuf {
            bytes: vec![0; size].into_boxed_slice(),
            batches: Vec::with_capacity(MAX_BATCHES),
        })
    }

    fn give(&self, buf: SendBuf) {
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

/// One batch, ready to send: `len` bytes at `offset` of the send buffer, to `dst` in
/// segments of `segment` bytes (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Batch {
    pub(crate) dst: SocketAddr,
    pub(crate) offset: usize,
    pub(crate) len: usize,
    pub(crate) segment: usize,
    pub(crate) count: usize,
}

/// Why filling stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// quiche has nothing more to send now.
    Done,
    /// More may follow at once: send these batches and fill again.
    More,
    /// The next packet is held until this instant (pacing).
    HoldUntil(Instant),
    /// quiche could not build a packet: an error other than `Done` from `send`.
    Failed(quiche::Error),
}

/// Where a packet that could not join the batches filled waits: right after them in
/// the buffer, moved to the front once they are sent.
#[derive(Debug, Clone, Copy)]
struct Carry {
    len: usize,
    src: SocketAddr,
    dst: SocketAddr,
    at: Instant,
}

/// Packs one connection's output into batches, in a buffer taken from the endpoint's
/// pool while it sends. One fill packs as many batches as the buffer holds (up to
/// [`MAX_BATCHES`]), all leaving from one local address, so that they go out in one
/// system call: each short packet (the end of a response) ends a GSO batch, and a
/// turn that answers ten requests fills ten batches.
#[derive(Debug)]
pub(crate) struct SendBatcher {
    buf: Option<SendBuf>,
    pool: Arc<BufferPool>,
    /// The send buffer's size: a full GSO batch (without GSO, [`MIN_BUFFER_PACKETS`]
    /// packets) and one slot more, where a packet that joins none of the batches
    /// waits as the next send's first.
    buf_len: usize,
    max_payload: usize,
    max_segments: usize,
    pacing: bool,
    /// The local address the filled batches leave from (a migrating client has two).
    src: Option<SocketAddr>,
    carry: Option<Carry>,
    /// Where the carried packet sits while the batches before it are sent.
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
            buf_len: max_payload * (max_segments.max(MIN_BUFFER_PACKETS) + 1),
            max_payload,
            max_segments,
            pacing,
            src: None,
            carry: None,
            carry_offset: 0,
        }
    }

    /// The batches the last [`fill`](Self::fill) packed, and their buffer.
    pub(crate) fn batches(&self) -> (&[u8], &[Batch]) {
        self.buf
            .as_ref()
            .map_or((&[], &[]), |b| (&b.bytes[..], &b.batches[..]))
    }

    /// The local address the batches leave from; `None` when there are none.
    pub(crate) fn src(&self) -> Option<SocketAddr> {
        self.src
    }

    /// Returns the buffer to the pool unless a paced packet waits in it.
    pub(crate) fn release(&mut self) {
        if self.carry.is_none()
            && let Some(mut buf) = self.buf.take()
        {
            buf.batches.clear();
            self.src = None;
            self.pool.give(buf);
        }
    }

    /// Whether a packet is held back for pacing.
    pub(crate) fn holding(&self) -> Option<Instant> {
        self.carry
            .filter(|c| self.pacing && c.at > Instant::now())
            .map(|c| c.at)
    }

    /// Fills batches from `conn`. Call [`sent`](Self::sent) after sending them.
    pub(crate) fn fill(&mut self, conn: &mut quiche::Connection) -> Next {
        self.fill_at_most(conn, usize::MAX)
    }

    /// Fills batches of at most `max` datagrams in all (at least one) from `conn`.
    pub(crate) fn fill_at_most(&mut self, conn: &mut quiche::Connection, max: usize) -> Next {
        let max = max.max(1);
        let now = Instant::now();
        let (buf_len, max_payload, max_segments) =
            (self.buf_len, self.max_payload, self.max_segments);
        let pool = &self.pool;
        let buf = self.buf.get_or_insert_with(|| pool.take(buf_len));
        let SendBuf { bytes, batches } = buf;
        batches.clear();
        self.src = None;
        let mut used = 0;
        let mut datagrams = 0;
        // The last batch takes no more packets (it ended with a short one).
        let mut closed = false;
        if let Some(c) = self.carry {
            if self.pacing && c.at > now + PACING_GRANULARITY {
                return Next::HoldUntil(c.at);
            }
            self.carry = None;
            self.src = Some(c.src);
            batches.push(Batch {
                dst: c.dst,
                offset: 0,
                len: c.len,
                segment: c.len,
                count: 1,
            });
            used = c.len;
            datagrams = 1;
        }
        loop {
            if datagrams >= max || used + max_payload > bytes.len() {
                return Next::More;
            }
            // After a full batch, a packet that only just fits would go out alone; it
            // starts the next send's batch instead.
            if used + 2 * max_payload > bytes.len()
                && batches.last().is_some_and(|b| b.count >= max_segments)
            {
                return Next::More;
            }
            let (n, info) = match conn.send(&mut bytes[used..used + max_payload]) {
                Ok(v) => v,
                Err(quiche::Error::Done) => return Next::Done,
                Err(e) => return Next::Failed(e),
            };
            let held = self.pacing && info.at > now + PACING_GRANULARITY;
            let joins = !closed
                && batches
                    .last()
                    .is_some_and(|b| b.dst == info.to && n <= b.segment && b.count < max_segments);
            let other_src = self.src.is_some_and(|s| s != info.from);
            if held || other_src || (!joins && batches.len() == MAX_BATCHES) {
                self.carry = Some(Carry {
                    len: n,
                    src: info.from,
                    dst: info.to,
                    at: info.at,
                });
                self.carry_offset = used;
                return if held {
                    Next::HoldUntil(info.at)
                } else {
                    Next::More
                };
            }
            self.src = Some(info.from);
            if joins && let Some(b) = batches.last_mut() {
                b.len += n;
                b.count += 1;
                // A shorter packet can only be the last segment of a GSO batch.
                closed = n < b.segment;
            } else {
                batches.push(Batch {
                    dst: info.to,
                    offset: used,
                    len: n,
                    segment: n,
                    count: 1,
                });
                closed = false;
            }
            used += n;
            datagrams += 1;
        }
    }

    /// The batches went out: move a carried packet to the front.
    pub(crate) fn sent(&mut self) {
        if let Some(buf) = self.buf.as_mut() {
            buf.batches.clear();
            if let Some(c) = self.carry
                && self.carry_offset != 0
            {
                buf.bytes
                    .copy_within(self.carry_offset..self.carry_offset + c.len, 0);
                self.carry_offset = 0;
            }
        }
        self.src = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use quic_app::testing::{Idle, Pair, PairConfig};

    use super::*;

    const MAX_PAYLOAD: usize = 1350;

    /// An established pair whose server has `responses` bodies of `size` bytes queued,
    /// one per stream, with windows wide enough to send all of them at once.
    fn responses(responses: u64, size: usize) -> Pair<Idle, Idle> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let config = PairConfig::new(b"batch").configure(|c| {
            c.set_initial_max_data(1 << 24);
            c.set_initial_max_stream_data_bidi_local(1 << 20);
            c.set_initial_max_stream_data_bidi_remote(1 << 20);
            c.set_initial_congestion_window_packets(1000);
        });
        let mut pair = Pair::new(config, Idle, Idle).expect("pair");
        rt.block_on(pair.run_until_established(Duration::from_secs(10)))
            .expect("handshake");
        let conn = pair.server_mut().conn_mut();
        let body = vec![0x5a; size];
        for i in 0..responses {
            let written = conn
                .stream_send(1 + 4 * i, &body, true)
                .expect("stream_send");
            assert_eq!(written, size);
        }
        pair
    }

    /// Checks that `batches` lie back to back in the buffer, each a valid GSO batch
    /// (equal segments, only the last shorter); returns their bytes.
    fn check(batches: &[Batch], max_segments: usize) -> usize {
        let mut offset = 0;
        for b in batches {
            assert_eq!(b.offset, offset, "{batches:?}");
            assert!(b.count >= 1 && b.count <= max_segments, "{b:?}");
            assert!(b.len <= b.segment * b.count, "{b:?}");
            assert!(b.len > b.segment * (b.count - 1), "{b:?}");
            offset += b.len;
        }
        offset
    }

    #[test]
    fn one_fill_packs_batches_of_different_segment_sizes_for_one_send() {
        let mut pair = responses(8, 4000);
        let conn = pair.server_mut().conn_mut();
        let mut batcher = SendBatcher::new(MAX_PAYLOAD, 64, false, Arc::default());
        let next = batcher.fill(conn);
        assert_eq!(next, Next::Done, "32 KB fits one send buffer");
        let (buf, batches) = batcher.batches();
        assert!(batcher.src().is_some());
        // The stream data fills full packets; the short packets after it (their last
        // bytes, acknowledgements) cannot join that GSO batch and form more.
        assert!(batches.len() >= 2, "{batches:?}");
        assert!(
            batches.windows(2).any(|w| w[0].segment != w[1].segment),
            "{batches:?}"
        );
        let bytes = check(batches, 64);
        assert!(bytes > 8 * 4000 && bytes <= buf.len(), "{bytes} bytes");
        batcher.sent();
        batcher.release();
        assert!(batcher.batches().1.is_empty());
    }

    #[test]
    fn without_gso_a_fill_packs_up_to_max_batches_single_packets() {
        let mut pair = responses(8, 4000);
        let conn = pair.server_mut().conn_mut();
        let mut batcher = SendBatcher::new(MAX_PAYLOAD, 1, false, Arc::default());
        let mut total = 0;
        let mut fills = 0;
        loop {
            let next = batcher.fill(conn);
            let (_, batches) = batcher.batches();
            assert!(batches.len() <= MAX_BATCHES);
            assert!(batches.iter().all(|b| b.count == 1));
            if next == Next::More {
                assert_eq!(batches.len(), MAX_BATCHES, "a full send");
            }
            total += check(batches, 1);
            fills += 1;
            batcher.sent();
            if next != Next::More {
                break;
            }
        }
        assert!(total > 8 * 4000, "{total} bytes");
        assert!(
            fills <= total.div_ceil(MAX_PAYLOAD * MAX_BATCHES) + 1,
            "{fills} fills"
        );
    }

    #[test]
    fn a_bulk_send_fills_whole_batches_and_carries_nothing_over() {
        let mut pair = responses(1, 1 << 20);
        let conn = pair.server_mut().conn_mut();
        let mut batcher = SendBatcher::new(MAX_PAYLOAD, 64, false, Arc::default());
        let max_segments = MAX_GSO_BYTES / MAX_PAYLOAD;
        let mut total = 0;
        loop {
            let next = batcher.fill_at_most(conn, usize::MAX);
            let (_, batches) = batcher.batches();
            total += check(batches, max_segments);
            if next == Next::More {
                // One full batch per send, as many packets as GSO takes.
                assert_eq!(batches.len(), 1, "{batches:?}");
                assert_eq!(batches[0].count, max_segments, "{batches:?}");
            }
            batcher.sent();
            if next != Next::More {
                break;
            }
        }
        assert!(total > 1 << 20, "{total} bytes");
    }
}
