//! The source connection IDs a connection's peer retired lately.
//!
//! Once the peer retires one of our IDs, quiche forgets it, and a short-header
//! packet it can still decrypt but whose destination ID it no longer holds makes it
//! close the connection with PROTOCOL_VIOLATION. Such packets are not hostile: the
//! peer sent them before the retirement, and they arrive after it, reordered on the
//! path or, after a client migration, on the old socket behind the new one (two
//! routers feed one worker queue). The worker drops them instead; the peer declares
//! them lost and sends their frames again under a current ID.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use quiche::ConnectionId;

/// How many retired IDs are remembered; the oldest is forgotten first. The peer's
/// `active_connection_id_limit` bounds how many it can retire at once.
const KEPT: usize = 8;

/// How long a retired ID is remembered. Loss detection gives a packet up after about
/// one round trip of reordering; a packet late by seconds is long since resent.
const GRACE: Duration = Duration::from_secs(10);

#[derive(Default)]
pub(super) struct RetiredIds {
    ids: VecDeque<(ConnectionId<'static>, Instant)>,
}

impl RetiredIds {
    /// Notes that the peer retired `cid` at `now`.
    pub(super) fn push(&mut self, cid: ConnectionId<'static>, now: Instant) {
        if self.ids.len() == KEPT {
            self.ids.pop_front();
        }
        self.ids.push_back((cid, now));
    }

    /// Forgets the IDs retired longer ago than the grace period.
    pub(super) fn expire(&mut self, now: Instant) {
        while self
            .ids
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) >= GRACE)
        {
            self.ids.pop_front();
        }
    }

    /// Whether `datagram` is a short-header packet addressed to a retired ID. A long
    /// header names its destination too, but none is sent once IDs are retired
    /// (retirement needs the handshake confirmed).
    pub(super) fn addressed(&self, datagram: &[u8]) -> bool {
        if self.ids.is_empty() {
            return false;
        }
        let Some(&first) = datagram.first() else {
            return false;
        };
        first & 0x80 == 0
            && self
                .ids
                .iter()
                .any(|(id, _)| datagram.get(1..1 + id.len()) == Some(id.as_ref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(b: u8) -> ConnectionId<'static> {
        ConnectionId::from_vec(vec![b; 8])
    }

    #[test]
    fn only_short_headers_to_a_retired_id_match() {
        let now = Instant::now();
        let mut r = RetiredIds::default();
        let short = |b: u8| [&[0x40][..], &[b; 8], &[1, 2, 3]].concat();
        assert!(!r.addressed(&short(1)));
        r.push(id(1), now);
        assert!(r.addressed(&short(1)));
        assert!(!r.addressed(&short(2)));
        // A long header with the same bytes after its first octet.
        assert!(!r.addressed(&[&[0xc0][..], &[1; 8]].concat()));
        // Too short to hold the ID, and empty.
        assert!(!r.addressed(&[0x40, 1, 1]));
        assert!(!r.addressed(&[]));
    }

    #[test]
    fn ids_are_forgotten_after_the_grace_period_or_when_too_many() {
        let now = Instant::now();
        let mut r = RetiredIds::default();
        let short = |b: u8| [&[0x40][..], &[b; 8]].concat();
        for b in 0..KEPT as u8 + 1 {
            r.push(id(b), now);
        }
        assert!(!r.addressed(&short(0)), "the oldest was forgotten");
        assert!(r.addressed(&short(1)));
        r.expire(now + GRACE - Duration::from_millis(1));
        assert!(r.addressed(&short(KEPT as u8)));
        r.expire(now + GRACE);
        assert!(!r.addressed(&short(KEPT as u8)));
        assert!(r.ids.is_empty());
    }
}
