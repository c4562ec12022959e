//! HTTP Datagrams (RFC 9297) on extended CONNECT streams (RFC 9220): the unreliable
//! side channel CONNECT-UDP and similar protocols are built on.
//!
//! Each datagram travels in a QUIC DATAGRAM frame (RFC 9221) that starts with the
//! Quarter Stream ID of its request stream. Datagrams can be lost, reordered or
//! dropped when a queue is full; they are never split.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use quic_app::queue;

/// Datagrams queued per flow, each way. When the receiving queue is full new
/// datagrams are dropped (they are unreliable anyway); a full sending queue makes
/// [`DatagramSender::send`] wait.
pub(crate) const DATAGRAM_QUEUE: usize = 64;

/// Why a datagram was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The request stream, or the connection, has ended.
    #[error("the datagram flow is closed")]
    Closed,
    /// The connection cannot carry HTTP Datagrams: one side did not enable QUIC
    /// DATAGRAM frames and the H3_DATAGRAM setting, or the peer's settings have not
    /// arrived yet.
    #[error("HTTP datagrams are not enabled on this connection")]
    Unsupported,
    /// Larger than the largest datagram the path can carry now.
    #[error("datagram of {size} bytes exceeds the current limit of {max} bytes")]
    TooLarge {
        /// The payload's size.
        size: usize,
        /// The largest payload that fits now.
        max: usize,
    },
    /// The sending queue is full ([`DatagramSender::try_send`] only).
    #[error("the datagram send queue is full")]
    Full,
}

/// The largest datagram payload the connection can carry now, for a stream: kept up to
/// date by the driver; 0 while datagrams cannot be sent.
#[derive(Debug, Clone, Default)]
pub(crate) struct MaxDatagram(Arc<AtomicUsize>);

impl MaxDatagram {
    pub(crate) fn set(&self, frame_payload: usize) {
        self.0.store(frame_payload, Ordering::Relaxed);
    }

    fn for_stream(&self, stream_id: u64) -> Option<usize> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n.saturating_sub(varint_len(stream_id / 4))),
        }
    }
}

/// The datagrams of one extended CONNECT request: send with [`send`](Self::send),
/// receive with [`recv`](Self::recv); [`sender`](Self::sender) gives a cloneable
/// handle for another task.
///
/// # Drop behavior
///
/// Dropping it stops this side's datagrams of the flow; datagrams that arrive later
/// are dropped. The request stream is not affected.
#[derive(Debug)]
pub struct DatagramFlow {
    sender: DatagramSender,
    rx: queue::Receiver<Bytes>,
}

/// Sends the datagrams of one flow; clone it to send from several tasks.
#[derive(Debug, Clone)]
pub struct DatagramSender {
    stream_id: u64,
    tx: queue::Sender<Bytes>,
    max: MaxDatagram,
}

/// The driver's end of a flow.
#[derive(Debug)]
pub(crate) struct FlowEnd {
    /// Towards the user: datagrams received.
    pub(crate) to_user: queue::Sender<Bytes>,
    /// From the user: datagrams to send.
    pub(crate) from_user: queue::Receiver<Bytes>,
}

impl DatagramFlow {
    pub(crate) fn new(stream_id: u64, max: MaxDatagram) -> (Self, FlowEnd) {
        let (out_tx, out_rx) = queue::channel(DATAGRAM_QUEUE);
        let (in_tx, in_rx) = queue::channel(DATAGRAM_QUEUE);
        let flow = Self {
            sender: DatagramSender {
                stream_id,
                tx: out_tx,
                max,
            },
            rx: in_rx,
        };
        let end = FlowEnd {
            to_user: in_tx,
            from_user: out_rx,
        };
        (flow, end)
    }

    /// The next datagram received; `None` once the flow ended (stream or connection
    /// closed).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }

    /// Sends a datagram; see [`DatagramSender::send`].
    pub async fn send(&self, payload: Bytes) -> Result<(), DatagramError> {
        self.sender.send(payload).await
    }

    /// A sending handle that can move to another task.
    pub fn sender(&self) -> DatagramSender {
        self.sender.clone()
    }

    /// The request stream the flow belongs to.
    pub fn stream_id(&self) -> u64 {
        self.sender.stream_id
    }

    /// The largest payload that fits in one datagram now; `None` while the
    /// connection cannot carry HTTP Datagrams.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.sender.max_datagram_size()
    }
}

impl DatagramSender {
    /// Queues a datagram for sending; waits while the flow's queue is full. Success
    /// means queued, not delivered: datagrams can be lost.
    pub async fn send(&self, payload: Bytes) -> Result<(), DatagramError> {
        self.check(&payload)?;
        self.tx
            .send(payload)
            .await
            .map_err(|_| DatagramError::Closed)
    }

    /// Queues a datagram without waiting; [`DatagramError::Full`] if the queue is full.
    pub fn try_send(&self, payload: Bytes) -> Result<(), DatagramError> {
        self.check(&payload)?;
        self.tx.try_send(payload).map_err(|e| match e {
            queue::TrySendError::Full(_) => DatagramError::Full,
            queue::TrySendError::Closed(_) => DatagramError::Closed,
        })
    }

    /// The largest payload that fits in one datagram now; `None` while the
    /// connection cannot carry HTTP Datagrams.
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.max.for_stream(self.stream_id)
    }

    fn check(&self, payload: &Bytes) -> Result<(), DatagramError> {
        if self.tx.is_closed() {
            return Err(DatagramError::Closed);
        }
        let max = self.max_datagram_size().ok_or(DatagramError::Unsupported)?;
        if payload.len() > max {
            return Err(DatagramError::TooLarge {
                size: payload.len(),
                max,
            });
        }
        Ok(())
    }
}

/// Length of a QUIC variable-length integer (RFC 9000 §16).
pub(crate) fn varint_len(v: u64) -> usize {
    match v {
        0..=63 => 1,
        64..=16_383 => 2,
        16_384..=1_073_741_823 => 4,
        _ => 8,
    }
}

/// Appends `v` (below 2^62) as a QUIC variable-length integer.
pub(crate) fn put_varint(out: &mut Vec<u8>, v: u64) {
    match varint_len(v) {
        1 => out.push(v as u8),
        2 => out.extend_from_slice(&(v as u16 | 0x4000).to_be_bytes()),
        4 => out.extend_from_slice(&(v as u32 | 0x8000_0000).to_be_bytes()),
        _ => out.extend_from_slice(&(v | 0xc000_0000_0000_0000).to_be_bytes()),
    }
}

/// Writes `v` (below 2^62) as a QUIC variable-length integer at the front of `out`
/// (at least 8 bytes); its length.
pub(crate) fn write_varint_into(v: u64, out: &mut [u8]) -> usize {
    let len = varint_len(v);
    let tag = match len {
        1 => 0,
        2 => 0x40,
        4 => 0x80,
        _ => 0xc0,
    };
    let bytes = v.to_be_bytes();
    out[..len].copy_from_slice(&bytes[8 - len..]);
    out[0] |= tag;
    len
}

/// Reads a QUIC variable-length integer; returns it and its length.
pub(crate) fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let first = *buf.first()?;
    let len = 1usize << (first >> 6);
    let bytes = buf.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for b in &bytes[1..] {
        v = (v << 8) | u64::from(*b);
    }
    Some((v, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length_boundary() {
        for v in [
            0,
            63,
            64,
            16_383,
            16_384,
            1_073_741_823,
            1_073_741_824,
            (1 << 62) - 1,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(get_varint(&out), Some((v, out.len())), "{v}");
            let mut in_place = [0u8; 8];
            let n = write_varint_into(v, &mut in_place);
            assert_eq!(&in_place[..n], &out[..], "{v}");
        }
        // RFC 9000 §A.1's examples.
        assert_eq!(get_varint(&[0x25]), Some((37, 1)));
        assert_eq!(get_varint(&[0x7b, 0xbd]), Some((15_293, 2)));
        assert_eq!(
            get_varint(&[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c]),
            Some((151_288_809_941_952_652, 8))
        );
        assert_eq!(get_varint(&[0x7b]), None);
        assert_eq!(get_varint(&[]), None);
    }
}
