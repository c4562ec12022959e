//! The Capsule Protocol (RFC 9297 §3) and the HTTP Datagrams of an extended CONNECT
//! stream, whichever way they travel.
//!
//! A capsule is a type, a length and a value, back to back on the stream's data after a
//! 2xx response. The DATAGRAM capsule (type 0) carries an HTTP Datagram; endpoints use
//! it where QUIC DATAGRAM frames were not negotiated. Unknown capsule types are skipped
//! without being buffered; a stream that ends inside a capsule, or a DATAGRAM capsule
//! longer than [`MAX_DATAGRAM_CAPSULE`], is a malformed message (RFC 9297 §3.3: an
//! error in the Capsule Protocol is handled as a malformed HTTP message, which HTTP/3
//! answers with H3_MESSAGE_ERROR, RFC 9114 §4.1.2).

use bytes::{Buf, Bytes, BytesMut};

use crate::body::{RecvBody, SendBody};
use crate::datagram::{
    DatagramError, DatagramFlow, DatagramSender, get_varint, put_varint, varint_len,
    write_varint_into,
};
use crate::error::{H3Code, StreamError};

/// Reads a QUIC variable-length integer (RFC 9000 §16) from the front of `buf`: its
/// value and length; `None` if `buf` is shorter than the integer.
pub fn read_varint(buf: &[u8]) -> Option<(u64, usize)> {
    get_varint(buf)
}

/// Appends `v` (below 2^62) to `out` as a QUIC variable-length integer.
pub fn write_varint(out: &mut Vec<u8>, v: u64) {
    put_varint(out, v);
}

/// The DATAGRAM capsule type (RFC 9297 §3.5).
pub const DATAGRAM_CAPSULE: u64 = 0x00;

/// The longest DATAGRAM capsule value accepted: a 65,535-byte payload (the most UDP
/// can carry) behind an 8-byte context ID.
pub const MAX_DATAGRAM_CAPSULE: usize = 65_535 + 8;

/// One capsule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capsule {
    /// Its type.
    pub ty: u64,
    /// Its value.
    pub value: Bytes,
}

impl Capsule {
    /// Appends the capsule's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode(self.ty, &self.value, out);
    }
}

/// Appends a capsule of type `ty` holding `value` to `out`.
pub fn encode(ty: u64, value: &[u8], out: &mut Vec<u8>) {
    out.reserve(varint_len(ty) + varint_len(value.len() as u64) + value.len());
    put_varint(out, ty);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A capsule stream that breaks the protocol: a malformed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CapsuleError {
    /// The stream ended inside a capsule.
    #[error("the stream ended inside a capsule")]
    Truncated,
    /// A capsule longer than this endpoint reads.
    #[error("a capsule of type {ty:#x} and {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The capsule's type.
        ty: u64,
        /// Its announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
}

/// Reads capsules from a stream's data as it arrives, chunk by chunk.
///
/// Capsules of the types it keeps come out whole (up to a size limit); all others
/// are skipped as their bytes arrive, whatever their length.
#[derive(Debug)]
pub struct CapsuleDecoder {
    buf: BytesMut,
    /// Bytes of an unwanted capsule still to skip.
    skipping: u64,
    keep: fn(u64) -> bool,
    max: usize,
}

impl CapsuleDecoder {
    /// A decoder that keeps the capsules whose type `keep` accepts, each up to `max`
    /// bytes of value, and skips every other.
    pub fn new(keep: fn(u64) -> bool, max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            skipping: 0,
            keep,
            max,
        }
    }

    /// A decoder of DATAGRAM capsules (up to [`MAX_DATAGRAM_CAPSULE`]) that skips
    /// every other type.
    pub fn datagrams() -> Self {
        Self::new(|ty| ty == DATAGRAM_CAPSULE, MAX_DATAGRAM_CAPSULE)
    }

    /// Adds the stream's next bytes.
    pub fn push(&mut self, mut chunk: &[u8]) {
        if self.skipping > 0 {
            let n = chunk
                .len()
                .min(usize::try_from(self.skipping).unwrap_or(usize::MAX));
            self.skipping -= n as u64;
            chunk = &chunk[n..];
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next whole capsule of a kept type; `None` until more bytes arrive.
    pub fn next_capsule(&mut self) -> Result<Option<Capsule>, CapsuleError> {
        loop {
            if self.skipping > 0 {
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(self.skipping).unwrap_or(usize::MAX));
                self.buf.advance(n);
                self.skipping -= n as u64;
                if self.skipping > 0 {
                    return Ok(None);
                }
            }
            let Some((ty, ty_len)) = get_varint(&self.buf) else {
                return Ok(None);
            };
            let Some((len, len_len)) = get_varint(&self.buf[ty_len..]) else {
                return Ok(None);
            };
            let head = ty_len + len_len;
            if !(self.keep)(ty) {
                self.buf.advance(head);
                self.skipping = len;
                continue;
            }
            if len > self.max as u64 {
                return Err(CapsuleError::TooLarge {
                    ty,
                    len,
                    max: self.max,
                });
            }
            let len = len as usize;
            if self.buf.len() < head + len {
                self.buf.reserve(head + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(head);
            let value = self.buf.split_to(len).freeze();
            return Ok(Some(Capsule { ty, value }));
        }
    }

    /// Checks the end of the stream: an error if it ended inside a capsule.
    pub fn finish(&self) -> Result<(), CapsuleError> {
        if self.skipping > 0 || !self.buf.is_empty() {
            Err(CapsuleError::Truncated)
        } else {
            Ok(())
        }
    }
}

/// Why a [`DatagramTunnel`] operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The peer broke the Capsule Protocol; the stream was aborted with
    /// H3_MESSAGE_ERROR.
    #[error("malformed capsules: {0}")]
    Malformed(#[source] CapsuleError),
    /// The stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A datagram could not be sent.
    #[error(transparent)]
    Datagram(#[from] DatagramError),
    /// The tunnel was closed or aborted here.
    #[error("the tunnel is closed")]
    Closed,
}

/// The HTTP Datagrams of one extended CONNECT stream (RFC 9297), in QUIC DATAGRAM
/// frames when both endpoints negotiated them and in DATAGRAM capsules on the stream
/// otherwise; received ones come from both. Other capsules are skipped.
///
/// Made from a stream's three parts: the [`DatagramFlow`], the body received and the
/// body sent, on either side (the client's [`ConnectStream`](crate::ConnectStream)
/// and response body; the server's request body, flow and response body).
///
/// # Drop behavior
///
/// Dropping it before [`close`](Self::close) resets the stream (see [`SendBody`]).
#[derive(Debug)]
pub struct DatagramTunnel {
    flow: DatagramFlow,
    recv: RecvBody,
    send: Option<SendBody>,
    decoder: CapsuleDecoder,
    /// The stream's data has ended (or failed): only QUIC datagrams may still come.
    recv_done: bool,
    /// The flow's sending handle, for sends that do not wait.
    sender: DatagramSender,
    /// Where DATAGRAM capsules are built: each is split off the front, so one
    /// allocation serves many.
    out: BytesMut,
}

/// The bytes one allocation of a tunnel's capsule buffer holds.
const CAPSULE_BUFFER: usize = 64 * 1024;

impl DatagramTunnel {
    /// A tunnel over a stream's parts.
    pub fn new(flow: DatagramFlow, recv: RecvBody, send: SendBody) -> Self {
        Self {
            sender: flow.sender(),
            flow,
            recv,
            send: Some(send),
            decoder: CapsuleDecoder::datagrams(),
            recv_done: false,
            out: BytesMut::new(),
        }
    }

    /// Whether datagrams leave as capsules on the stream (QUIC datagrams were not
    /// negotiated).
    pub fn uses_capsules(&self) -> bool {
        self.flow.max_datagram_size().is_none()
    }

    /// The largest payload [`send`](Self::send) takes: what one QUIC datagram can
    /// carry, or [`MAX_DATAGRAM_CAPSULE`] in capsules.
    pub fn max_datagram_size(&self) -> usize {
        self.flow
            .max_datagram_size()
            .unwrap_or(MAX_DATAGRAM_CAPSULE)
    }

    /// The next HTTP Datagram payload; `None` once the peer ended the stream.
    ///
    /// A malformed capsule aborts the stream with H3_MESSAGE_ERROR and returns
    /// [`TunnelError::Malformed`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing received is lost when the future is dropped.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TunnelError> {
        loop {
            match self.decoder.next_capsule() {
                Ok(Some(c)) => return Ok(Some(c.value)),
                Ok(None) => {}
                Err(e) => return Err(self.malformed(e).await),
            }
            if self.recv_done {
                return Ok(None);
            }
            tokio::select! {
                biased;
                d = self.flow.recv() => {
                    if let Some(d) = d {
                        return Ok(Some(d));
                    }
                    // The flow ended with its stream: the stream says how.
                    let chunk = self.recv.chunk().await;
                    self.take_chunk(chunk).await?;
                }
                chunk = self.recv.chunk() => self.take_chunk(chunk).await?,
            }
        }
    }

    async fn take_chunk(
        &mut self,
        chunk: Result<Option<Bytes>, StreamError>,
    ) -> Result<(), TunnelError> {
        match chunk {
            Ok(Some(c)) => self.decoder.push(&c),
            Ok(None) => {
                self.recv_done = true;
                if let Err(e) = self.decoder.finish() {
                    return Err(self.malformed(e).await);
                }
            }
            Err(e) => {
                self.recv_done = true;
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Aborts the stream for a Capsule Protocol error.
    async fn malformed(&mut self, e: CapsuleError) -> TunnelError {
        tracing::debug!(error = %e, "malformed capsules: aborting the stream");
        self.recv_done = true;
        self.decoder = CapsuleDecoder::datagrams();
        if let Some(send) = self.send.take() {
            let _ = send.abort(H3Code::MESSAGE_ERROR).await;
        }
        TunnelError::Malformed(e)
    }

    /// Sends an HTTP Datagram payload: as a QUIC datagram when negotiated (dropped
    /// when the connection's datagram queue is full, as UDP would), or as a DATAGRAM
    /// capsule on the stream.
    pub async fn send(&mut self, payload: Bytes) -> Result<(), TunnelError> {
        if !self.uses_capsules() {
            return match self.sender.try_send(payload) {
                Ok(()) | Err(DatagramError::Full) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        if payload.len() > MAX_DATAGRAM_CAPSULE {
            return Err(DatagramError::TooLarge {
                size: payload.len(),
                max: MAX_DATAGRAM_CAPSULE,
            }
            .into());
        }
        let send = self.send.as_mut().ok_or(TunnelError::Closed)?;
        // The capsule's type and length: two varints, at most 16 bytes.
        let mut head = [0u8; 16];
        let at = write_varint_into(DATAGRAM_CAPSULE, &mut head);
        let at = at + write_varint_into(payload.len() as u64, &mut head[at..]);
        let head = &head[..at];
        let len = head.len() + payload.len();
        if self.out.capacity() < len {
            self.out.reserve(CAPSULE_BUFFER.max(len));
        }
        self.out.extend_from_slice(head);
        self.out.extend_from_slice(&payload);
        send.send_data(self.out.split().freeze())
            .await
            .map_err(Into::into)
    }

    /// Sends a capsule of any type on the stream.
    pub async fn send_capsule(&mut self, capsule: &Capsule) -> Result<(), TunnelError> {
        let send = self.send.as_mut().ok_or(TunnelError::Closed)?;
        let mut out = Vec::new();
        capsule.encode(&mut out);
        send.send_data(out.into()).await.map_err(Into::into)
    }

    /// Ends the stream cleanly in this direction.
    pub async fn close(mut self) -> Result<(), TunnelError> {
        match self.send.take() {
            Some(send) => send.finish().await.map_err(Into::into),
            None => Err(TunnelError::Closed),
        }
    }

    /// Aborts the stream both ways with `code`.
    pub async fn abort(mut self, code: H3Code) {
        if let Some(send) = self.send.take() {
            let _ = send.abort(code).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(capsules: &[(u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (ty, v) in capsules {
            encode(*ty, v, &mut out);
        }
        out
    }

    #[test]
    fn datagram_capsules_come_out_whole_however_the_bytes_are_cut() {
        let big = vec![7u8; 20_000];
        let bytes = wire(&[
            (DATAGRAM_CAPSULE, b"one"),
            (0x2028d7ee, &big), // an unknown type, skipped
            (DATAGRAM_CAPSULE, b""),
            (0x41, b"also unknown"),
            (DATAGRAM_CAPSULE, &big),
        ]);
        for cut in [1, 2, 3, 7, 100, 4096, bytes.len()] {
            let mut d = CapsuleDecoder::datagrams();
            let mut got = Vec::new();
            for chunk in bytes.chunks(cut) {
                d.push(chunk);
                while let Some(c) = d.next_capsule().unwrap() {
                    assert_eq!(c.ty, DATAGRAM_CAPSULE);
                    got.push(c.value);
                }
            }
            d.finish().unwrap();
            assert_eq!(got.len(), 3, "cut {cut}");
            assert_eq!(&got[0][..], b"one");
            assert!(got[1].is_empty());
            assert_eq!(&got[2][..], &big[..]);
        }
    }

    #[test]
    fn a_stream_ending_inside_a_capsule_is_malformed() {
        let bytes = wire(&[(DATAGRAM_CAPSULE, b"hello")]);
        for end in 1..bytes.len() {
            let mut d = CapsuleDecoder::datagrams();
            d.push(&bytes[..end]);
            assert_eq!(d.next_capsule().unwrap(), None);
            assert_eq!(d.finish(), Err(CapsuleError::Truncated), "end {end}");
        }
        // Inside a skipped capsule too.
        let bytes = wire(&[(0x17, &[0u8; 50])]);
        let mut d = CapsuleDecoder::datagrams();
        d.push(&bytes[..20]);
        assert_eq!(d.next_capsule().unwrap(), None);
        assert_eq!(d.finish(), Err(CapsuleError::Truncated));
    }

    #[test]
    fn an_oversized_datagram_capsule_is_refused_before_it_is_buffered() {
        let mut head = Vec::new();
        put_varint(&mut head, DATAGRAM_CAPSULE);
        put_varint(&mut head, 1 << 40);
        let mut d = CapsuleDecoder::datagrams();
        d.push(&head);
        assert!(matches!(
            d.next_capsule(),
            Err(CapsuleError::TooLarge { ty: 0, len, .. }) if len == 1 << 40
        ));
        // An unknown type of any length is skipped, never buffered.
        let mut head = Vec::new();
        put_varint(&mut head, 0x99);
        put_varint(&mut head, 1 << 40);
        let mut d = CapsuleDecoder::datagrams();
        d.push(&head);
        d.push(&[0u8; 100_000]);
        assert_eq!(d.next_capsule().unwrap(), None);
        assert!(d.buf.is_empty());
        assert_eq!(d.skipping, (1 << 40) - 100_000);
    }
}
