//! The router's table from destination connection ID to connection.

use std::collections::HashMap;

/// Destination connection IDs to connections, kept in two maps by who chose the ID.
///
/// - The IDs this endpoint issued (its source IDs: random, or from the configured
///   [`ConnectionIdGenerator`](crate::ConnectionIdGenerator)) are what almost every
///   datagram carries. A peer cannot choose them, so it cannot make them collide: they
///   are hashed with foldhash, seeded at random per table, several times cheaper than
///   SipHash for a 16-byte ID.
/// - The IDs a peer chose (the destination ID of a client's first Initial, routed
///   until the connection ends, for its Initial and 0-RTT packets) could be chosen to
///   collide in a weak hash, each admitted connection inserting one: they keep std's
///   SipHash with its random keys.
///
/// A lookup tries the first map, then the second (empty but for the connections a
/// server accepted; an empty map answers without hashing).
pub(crate) struct Routes<V> {
    own: HashMap<Vec<u8>, V, foldhash::fast::RandomState>,
    peer: HashMap<Vec<u8>, V>,
}

/// Who chose a connection ID, which decides how [`Routes`] hashes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChosenBy {
    /// This endpoint issued it.
    Us,
    /// The peer picked it (a client's first destination ID).
    Peer,
}

impl<V> std::fmt::Debug for Routes<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes")
            .field("own", &self.own.len())
            .field("peer", &self.peer.len())
            .finish()
    }
}

impl<V> Default for Routes<V> {
    fn default() -> Self {
        Self {
            own: HashMap::default(),
            peer: HashMap::new(),
        }
    }
}

impl<V> Routes<V> {
    /// The route of `cid`, if any.
    #[inline]
    pub(crate) fn get(&self, cid: &[u8]) -> Option<&V> {
        // An empty map answers without hashing.
        self.own.get(cid).or_else(|| self.peer.get(cid))
    }

    /// Routes `cid` to `route`, replacing a route it had.
    pub(crate) fn insert(&mut self, cid: Vec<u8>, by: ChosenBy, route: V) {
        // One map holds an ID at a time, so that a lookup cannot find a stale route.
        match by {
            ChosenBy::Us => {
                self.peer.remove(&cid);
                self.own.insert(cid, route);
            }
            ChosenBy::Peer => {
                self.own.remove(&cid);
                self.peer.insert(cid, route);
            }
        }
    }

    /// Removes the route of `cid` if `owns` says it is the caller's.
    pub(crate) fn remove_if(&mut self, cid: &[u8], owns: impl Fn(&V) -> bool) {
        if self.own.get(cid).is_some_and(&owns) {
            self.own.remove(cid);
        } else if self.peer.get(cid).is_some_and(&owns) {
            self.peer.remove(cid);
        }
    }

    /// The number of IDs routed.
    pub(crate) fn len(&self) -> usize {
        self.own.len() + self.peer.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every route.
    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.own.values().chain(self.peer.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_whoever_chose_them_and_removed_only_by_their_owner() {
        let mut r = Routes::default();
        r.insert(vec![1; 16], ChosenBy::Us, 1u64);
        r.insert(vec![2; 8], ChosenBy::Peer, 1);
        r.insert(vec![3; 16], ChosenBy::Us, 2);
        assert_eq!(r.get(&[1; 16]), Some(&1));
        assert_eq!(r.get(&[2; 8]), Some(&1));
        assert_eq!(r.get(&[3; 16]), Some(&2));
        assert_eq!(r.get(&[4; 16]), None);
        assert_eq!(r.len(), 3);
        // Another connection's removal leaves the route alone.
        r.remove_if(&[2; 8], |owner| *owner == 2);
        assert_eq!(r.get(&[2; 8]), Some(&1));
        r.remove_if(&[2; 8], |owner| *owner == 1);
        r.remove_if(&[1; 16], |owner| *owner == 1);
        assert_eq!(r.get(&[2; 8]), None);
        assert_eq!(r.get(&[1; 16]), None);
        assert_eq!(r.values().copied().collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn an_id_lives_in_one_map_at_a_time() {
        let mut r = Routes::default();
        r.insert(vec![9; 16], ChosenBy::Peer, 1u64);
        r.insert(vec![9; 16], ChosenBy::Us, 2);
        assert_eq!(r.len(), 1);
        assert_eq!(r.get(&[9; 16]), Some(&2));
        r.insert(vec![9; 16], ChosenBy::Peer, 3);
        assert_eq!(r.len(), 1);
        assert_eq!(r.get(&[9; 16]), Some(&3));
        r.remove_if(&[9; 16], |_| true);
        assert!(r.is_empty());
    }
}
