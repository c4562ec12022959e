//! Retry tokens (RFC 9000 §8.1.2): stateless proof that a client owns its address.
//!
//! A token binds the client's address and port, the original destination connection
//! ID, the source connection ID of the Retry that carried it (which the client must
//! use as its destination) and the time it was minted, under an HMAC key. Tokens expire; keys rotate, and a
//! token minted under the previous key stays valid until it expires.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::cid::random_bytes;

/// Token layout: version, key id, mint time (8, seconds), ODCID length, ODCID, MAC.
const TOKEN_VERSION: u8 = 1;
const MAC_LEN: usize = 16;
/// The longest token: 1 + 1 + 8 + 1 + 20 + 16.
pub(crate) const MAX_TOKEN_LEN: usize = 3 + 8 + quiche::MAX_CONN_ID_LEN + MAC_LEN;

/// Why a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    Malformed,
    UnknownKey,
    BadMac,
    Expired,
}

/// The current and previous token keys.
#[derive(Debug, Clone)]
pub(crate) struct RetryTokens {
    current: (u8, [u8; 32]),
    previous: Option<(u8, [u8; 32])>,
    lifetime: Duration,
}

impl RetryTokens {
    pub(crate) fn new(lifetime: Duration) -> Self {
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        Self {
            current: (0, key),
            previous: None,
            lifetime,
        }
    }

    /// Starts minting under a new random key; tokens of the old one stay valid until
    /// they expire.
    #[cfg(test)]
    pub(crate) fn rotate(&mut self) {
        let mut key = [0u8; 32];
        random_bytes(&mut key);
        self.rotate_to(key);
    }

    /// Starts minting under `key`; tokens of the old one stay valid until they expire.
    pub(crate) fn rotate_to(&mut self, key: [u8; 32]) {
        let id = self.current.0.wrapping_add(1);
        self.previous = Some(self.current);
        self.current = (id, key);
    }

    /// Writes a token for `peer` and `odcid`, sent in a Retry whose source connection
    /// ID is `retry_scid`, minted at `now_secs` (Unix seconds) into `out`; returns its
    /// length.
    pub(crate) fn mint(
        &self,
        peer: SocketAddr,
        odcid: &[u8],
        retry_scid: &[u8],
        now_secs: u64,
        out: &mut [u8; MAX_TOKEN_LEN],
    ) -> usize {
        let (id, key) = &self.current;
        let odcid = &odcid[..odcid.len().min(quiche::MAX_CONN_ID_LEN)];
        out[0] = TOKEN_VERSION;
        out[1] = *id;
        out[2..10].copy_from_slice(&now_secs.to_be_bytes());
        out[10] = odcid.len() as u8;
        let body_len = 11 + odcid.len();
        out[11..body_len].copy_from_slice(odcid);
        let mac = mac(key, &out[..body_len], retry_scid, peer);
        out[body_len..body_len + MAC_LEN].copy_from_slice(&mac);
        body_len + MAC_LEN
    }

    /// Checks a token from `peer`, in an Initial sent to `dcid`, at `now_secs`;
    /// returns the original destination connection ID it carries.
    pub(crate) fn validate<'t>(
        &self,
        token: &'t [u8],
        peer: SocketAddr,
        dcid: &[u8],
        now_secs: u64,
    ) -> Result<&'t [u8], TokenError> {
        if token.len() < 11 + MAC_LEN || token[0] != TOKEN_VERSION {
            return Err(TokenError::Malformed);
        }
        let odcid_len = token[10] as usize;
        let body_len = 11 + odcid_len;
        if odcid_len > quiche::MAX_CONN_ID_LEN || token.len() != body_len + MAC_LEN {
            return Err(TokenError::Malformed);
        }
        let key = if token[1] == self.current.0 {
            &self.current.1
        } else {
            match &self.previous {
                Some((id, key)) if *id == token[1] => key,
                _ => return Err(TokenError::UnknownKey),
            }
        };
        verify_mac(key, &token[..body_len], dcid, peer, &token[body_len..])?;
        let minted = u64::from_be_bytes(token[2..10].try_into().expect("8-byte slice"));
        // A token from the future (clock stepped back) is as suspect as an old one.
        if minted > now_secs.saturating_add(1)
            || now_secs.saturating_sub(minted) > self.lifetime.as_secs()
        {
            return Err(TokenError::Expired);
        }
        Ok(&token[11..body_len])
    }
}

fn keyed(key: &[u8; 32], body: &[u8], retry_scid: &[u8], peer: SocketAddr) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(body);
    // Length first: no two (id, address) pairs feed the MAC the same bytes.
    mac.update(&[retry_scid.len() as u8]);
    mac.update(retry_scid);
    match peer.ip() {
        IpAddr::V4(ip) => mac.update(&ip.octets()),
        IpAddr::V6(ip) => mac.update(&ip.octets()),
    }
    mac.update(&peer.port().to_be_bytes());
    mac
}

fn mac(key: &[u8; 32], body: &[u8], retry_scid: &[u8], peer: SocketAddr) -> [u8; MAC_LEN] {
    let full = keyed(key, body, retry_scid, peer).finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

fn verify_mac(
    key: &[u8; 32],
    body: &[u8],
    retry_scid: &[u8],
    peer: SocketAddr,
    tag: &[u8],
) -> Result<(), TokenError> {
    keyed(key, body, retry_scid, peer)
        .verify_truncated_left(tag)
        .map_err(|_| TokenError::BadMac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.1:4433".parse().unwrap()
    }

    #[test]
    fn a_minted_token_validates_and_returns_the_odcid() {
        let tokens = RetryTokens::new(Duration::from_secs(10));
        let mut buf = [0u8; MAX_TOKEN_LEN];
        let len = tokens.mint(peer(), b"original-dcid", b"retry-scid", 1000, &mut buf);
        assert_eq!(
            tokens.validate(&buf[..len], peer(), b"retry-scid", 1005),
            Ok(&b"original-dcid"[..])
        );
    }

    #[test]
    fn tokens_expire_and_bind_the_address() {
        let tokens = RetryTokens::new(Duration::from_secs(10));
        let mut buf = [0u8; MAX_TOKEN_LEN];
        let len = tokens.mint(peer(), b"dcid", b"retry-scid", 1000, &mut buf);
        assert_eq!(
            tokens.validate(&buf[..len], peer(), b"retry-scid", 1011),
            Err(TokenError::Expired)
        );
        let other: SocketAddr = "192.0.2.1:4434".parse().unwrap();
        assert_eq!(
            tokens.validate(&buf[..len], other, b"retry-scid", 1001),
            Err(TokenError::BadMac)
        );
        let mut flipped = buf;
        flipped[12] ^= 1;
        assert_eq!(
            tokens.validate(&flipped[..len], peer(), b"retry-scid", 1001),
            Err(TokenError::BadMac)
        );
        assert_eq!(
            tokens.validate(&buf[..5], peer(), b"retry-scid", 1001),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn tokens_bind_the_retry_source_connection_id() {
        let tokens = RetryTokens::new(Duration::from_secs(10));
        let mut buf = [0u8; MAX_TOKEN_LEN];
        let len = tokens.mint(peer(), b"dcid", b"retry-scid", 1000, &mut buf);
        assert_eq!(
            tokens.validate(&buf[..len], peer(), b"other-scid", 1001),
            Err(TokenError::BadMac)
        );
        assert!(
            tokens
                .validate(&buf[..len], peer(), b"retry-scid", 1001)
                .is_ok()
        );
    }

    #[test]
    fn rotation_keeps_the_previous_key_until_the_next_rotation() {
        let mut tokens = RetryTokens::new(Duration::from_secs(10));
        let mut buf = [0u8; MAX_TOKEN_LEN];
        let len = tokens.mint(peer(), b"dcid", b"retry-scid", 1000, &mut buf);
        tokens.rotate();
        assert!(
            tokens
                .validate(&buf[..len], peer(), b"retry-scid", 1001)
                .is_ok()
        );
        tokens.rotate();
        assert_eq!(
            tokens.validate(&buf[..len], peer(), b"retry-scid", 1001),
            Err(TokenError::UnknownKey)
        );
    }
}
