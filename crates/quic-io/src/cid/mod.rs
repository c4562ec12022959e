//! Connection IDs and the stateless reset tokens derived from them.

pub(crate) mod quic_lb;

use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The length of the connection IDs quay issues unless told otherwise: 16 bytes, enough
/// randomness that IDs cannot be guessed, well under the 20-byte maximum.
pub const DEFAULT_CID_LEN: usize = 16;

/// Fills `out` with random bytes from BoringSSL's CSPRNG.
pub(crate) fn random_bytes(out: &mut [u8]) {
    // BoringSSL's RAND_bytes cannot fail; the Result exists for OpenSSL compatibility.
    boring::rand::rand_bytes(out).expect("BoringSSL RAND_bytes does not fail");
}

/// A new random connection ID of `len` bytes (1..=20).
pub(crate) fn random_cid(len: usize) -> quiche::ConnectionId<'static> {
    let mut buf = [0u8; quiche::MAX_CONN_ID_LEN];
    let len = len.clamp(1, quiche::MAX_CONN_ID_LEN);
    random_bytes(&mut buf[..len]);
    quiche::ConnectionId::from_vec(buf[..len].to_vec())
}

/// Makes the connection IDs a listener issues: the one of each new connection (and of
/// each Retry), and the spare ones it gives each client for migration.
///
/// The default, [`RandomConnectionIds`], makes random ones;
/// [`QuicLbGenerator`](crate::QuicLbGenerator) makes IDs that carry a server ID, for
/// load balancers and sharded listeners. One generator may serve several routers at
/// once, so it takes `&self`.
pub trait ConnectionIdGenerator: Send + Sync + std::fmt::Debug + 'static {
    /// The length of every ID it makes (1..=20): a short header carries no length,
    /// so a listener's IDs all have one.
    fn cid_len(&self) -> usize;

    /// Writes a new ID into `out`, which is [`cid_len`](Self::cid_len) bytes long.
    fn generate(&self, out: &mut [u8]);

    /// Whether the five low bits of each ID's first octet carry nothing (random bits),
    /// so that a [sharded listener](crate::listen_sharded) may write its shard number
    /// there. Default `false`: such a generator cannot serve a sharded listener.
    fn first_octet_bits_free(&self) -> bool {
        false
    }

    /// A new ID.
    fn new_id(&self) -> quiche::ConnectionId<'static> {
        let mut buf = [0u8; quiche::MAX_CONN_ID_LEN];
        let len = self.cid_len().clamp(1, quiche::MAX_CONN_ID_LEN);
        self.generate(&mut buf[..len]);
        quiche::ConnectionId::from_vec(buf[..len].to_vec())
    }
}

/// Random connection IDs of one length, from BoringSSL's CSPRNG.
#[derive(Debug, Clone, Copy)]
pub struct RandomConnectionIds {
    len: usize,
}

impl RandomConnectionIds {
    /// IDs of `len` bytes (1..=20; checked when the listener starts).
    pub fn new(len: usize) -> Self {
        Self { len }
    }
}

impl Default for RandomConnectionIds {
    fn default() -> Self {
        Self::new(DEFAULT_CID_LEN)
    }
}

impl ConnectionIdGenerator for RandomConnectionIds {
    fn cid_len(&self) -> usize {
        self.len
    }

    fn generate(&self, out: &mut [u8]) {
        random_bytes(out);
    }

    fn first_octet_bits_free(&self) -> bool {
        true
    }
}

/// The most shards a [sharded listener](crate::listen_sharded) may have: its shard
/// number lives in the five low bits of the first octet of each connection ID.
pub const MAX_SHARDS: usize = 32;

/// The bits of a connection ID's first octet that hold a shard number.
pub(crate) const SHARD_MASK: u8 = 0x1f;

/// The shard a connection ID of a sharded listener names.
pub(crate) fn shard_of(cid: &[u8]) -> Option<usize> {
    cid.first().map(|b| usize::from(b & SHARD_MASK))
}

/// One shard's IDs: the listener's generator's, with the shard number in the low bits
/// of the first octet (which the generator leaves free).
#[derive(Debug)]
pub(crate) struct ShardIds {
    pub(crate) inner: Arc<dyn ConnectionIdGenerator>,
    pub(crate) shard: u8,
}

impl ConnectionIdGenerator for ShardIds {
    fn cid_len(&self) -> usize {
        self.inner.cid_len()
    }

    fn generate(&self, out: &mut [u8]) {
        self.inner.generate(out);
        if let Some(first) = out.first_mut() {
            *first = (*first & !SHARD_MASK) | (self.shard & SHARD_MASK);
        }
    }
}

/// The secret from which stateless reset tokens are derived, one token per connection
/// ID (RFC 9000 §10.3.2): HMAC-SHA256(key, label || cid), first 16 bytes.
///
/// Endpoints that share a key (for example the processes behind one load balancer, or
/// a restarted server) can reset each other's connections; keep it secret.
#[derive(Clone)]
pub struct ResetKey {
    /// Keyed, with the label taken in: each token costs a copy of it and the hash of
    /// one connection ID, not the key's schedule again.
    keyed: Hmac<Sha256>,
}

/// What every token's input starts with.
const RESET_LABEL: &[u8] = b"quay stateless reset";

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl ResetKey {
    /// A fresh random key.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        Self::from_bytes(key)
    }

    /// A key from 32 secret bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let mut keyed =
            Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
        keyed.update(RESET_LABEL);
        Self { keyed }
    }

    /// The stateless reset token for `cid`.
    pub fn token(&self, cid: &[u8]) -> [u8; 16] {
        let mut mac = self.keyed.clone();
        mac.update(cid);
        let full = mac.finalize().into_bytes();
        let mut token = [0u8; 16];
        token.copy_from_slice(&full[..16]);
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_the_hmac_of_the_label_and_the_cid() {
        // Endpoints that share a key must agree on every token, whatever version of
        // this code each runs: the token is fixed by the key and the CID alone.
        let key = [9u8; 32];
        let cid = [0x5a; 16];
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"quay stateless reset");
        mac.update(&cid);
        let full = mac.finalize().into_bytes();
        assert_eq!(ResetKey::from_bytes(key).token(&cid), full[..16]);
        assert_eq!(
            ResetKey::from_bytes(key).token(&cid),
            ResetKey::from_bytes(key).clone().token(&cid)
        );
    }

    #[test]
    fn tokens_differ_per_cid_and_per_key() {
        let a = ResetKey::from_bytes([1; 32]);
        let b = ResetKey::from_bytes([2; 32]);
        assert_eq!(a.token(b"abcd"), a.token(b"abcd"));
        assert_ne!(a.token(b"abcd"), a.token(b"abce"));
        assert_ne!(a.token(b"abcd"), b.token(b"abcd"));
    }

    #[test]
    fn shard_ids_carry_their_shard_and_keep_the_rest_random() {
        let inner: Arc<dyn ConnectionIdGenerator> = Arc::new(RandomConnectionIds::new(16));
        for shard in [0u8, 1, 7, 31] {
            let g = ShardIds {
                inner: Arc::clone(&inner),
                shard,
            };
            let mut high = 0u8;
            for _ in 0..64 {
                let id = g.new_id();
                assert_eq!(id.len(), 16);
                assert_eq!(shard_of(&id), Some(usize::from(shard)));
                high |= id[0] & !SHARD_MASK;
            }
            // The three high bits stay the generator's (random here).
            assert_eq!(high, !SHARD_MASK);
        }
    }

    #[test]
    fn quic_lb_ids_keep_their_server_id_under_a_shard_number() {
        let config = quic_lb::QuicLbConfig::new(2, 2, 6)
            .unwrap()
            .with_key([9; 16])
            .without_length_encoding();
        let g = ShardIds {
            inner: Arc::new(config.generator(&[0xab, 0xcd]).unwrap()),
            shard: 5,
        };
        assert!(g.inner.first_octet_bits_free());
        for _ in 0..16 {
            let id = g.new_id();
            assert_eq!(shard_of(&id), Some(5));
            assert_eq!(id[0] >> 5, 2, "config rotation bits kept");
            assert_eq!(config.server_id(&id).unwrap().as_bytes(), &[0xab, 0xcd]);
        }
        let encoded = quic_lb::QuicLbConfig::new(2, 2, 6).unwrap();
        assert!(!encoded.generator(&[1, 2]).unwrap().first_octet_bits_free());
    }

    #[test]
    fn random_cids_have_the_asked_length() {
        for len in [1, 8, 16, 20] {
            assert_eq!(random_cid(len).len(), len);
        }
        assert_ne!(random_cid(16), random_cid(16));
    }
}
