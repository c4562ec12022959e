//! The part of a QUIC header the router needs, parsed without allocating.
//!
//! Only the version-independent invariants (RFC 8999 §5) and, for QUIC v1, the long
//! header packet type are read. The full parse (token and all) happens once per new
//! connection, in quiche.

/// What routing needs of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing<'a> {
    /// A short-header packet (RFC 9000 §17.3): the DCID has the length we issue.
    Short {
        /// Destination connection ID.
        dcid: &'a [u8],
    },
    /// A long-header packet (RFC 8999 §5.1).
    Long {
        /// The QUIC version.
        version: u32,
        /// The two type bits of QUIC v1 (RFC 9000 §17.2): 0 Initial, 1 0-RTT,
        /// 2 Handshake, 3 Retry. Meaningless for other versions.
        ty: u8,
        /// Destination connection ID.
        dcid: &'a [u8],
        /// Source connection ID.
        scid: &'a [u8],
    },
}

/// The v1 long header type of an Initial packet.
pub(crate) const TYPE_INITIAL: u8 = 0;

/// The long-header type of a Handshake packet (RFC 9000 §17.2.4).
pub(crate) const TYPE_HANDSHAKE: u8 = 2;

/// Parses the routing part of a datagram's first packet; `None` if malformed.
///
/// RFC 8999 §5.1: connection IDs of a long header are at most 255 bytes in general; for
/// versions quiche supports, at most 20 (RFC 9000 §17.2).
pub fn parse(buf: &[u8], short_dcid_len: usize) -> Option<Routing<'_>> {
    let first = *buf.first()?;
    if first & 0x80 == 0 {
        let dcid = buf.get(1..1 + short_dcid_len)?;
        return Some(Routing::Short { dcid });
    }
    let version = u32::from_be_bytes(buf.get(1..5)?.try_into().ok()?);
    let dcid_len = usize::from(*buf.get(5)?);
    let dcid = buf.get(6..6 + dcid_len)?;
    let scid_len = usize::from(*buf.get(6 + dcid_len)?);
    let scid = buf.get(7 + dcid_len..7 + dcid_len + scid_len)?;
    if quiche::version_is_supported(version)
        && (dcid_len > quiche::MAX_CONN_ID_LEN || scid_len > quiche::MAX_CONN_ID_LEN)
    {
        return None;
    }
    Some(Routing::Long {
        version,
        ty: (first & 0x30) >> 4,
        dcid,
        scid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_short_and_long_headers() {
        let mut short = vec![0x40];
        short.extend_from_slice(&[9; 8]);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(parse(&short, 8), Some(Routing::Short { dcid: &[9; 8] }));
        assert_eq!(parse(&short[..5], 8), None);

        let mut long = vec![0xc0, 0, 0, 0, 1, 3, 1, 2, 3, 2, 7, 7];
        long.extend_from_slice(&[0; 10]);
        assert_eq!(
            parse(&long, 8),
            Some(Routing::Long {
                version: 1,
                ty: TYPE_INITIAL,
                dcid: &[1, 2, 3],
                scid: &[7, 7],
            })
        );
        // A v1 DCID longer than 20 bytes is invalid.
        let mut bad = vec![0xc0, 0, 0, 0, 1, 21];
        bad.extend_from_slice(&[0; 30]);
        assert_eq!(parse(&bad, 8), None);
    }

    #[test]
    fn never_panics_on_truncations() {
        let long = [0xc0, 0, 0, 0, 1, 3, 1, 2, 3, 2, 7, 7];
        for len in 0..long.len() {
            let _ = parse(&long[..len], 8);
        }
        assert!(parse(&long, 8).is_some());
    }
}
