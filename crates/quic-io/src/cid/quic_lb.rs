//! QUIC-LB connection IDs (draft-ietf-quic-load-balancers-21): IDs that carry the
//! issuing server's ID, readable by a load balancer that holds the same
//! configuration, and by nobody else when a key is set.
//!
//! Layout: a first octet (three config rotation bits, then five bits that hold the
//! ID's length minus one, or random bits), then the server ID and a nonce, encrypted
//! together when the configuration has a key: in one AES-128 block when they make 16
//! bytes, otherwise with the draft's four-pass Feistel network whose round function is
//! AES-128. Decoding needs only the configuration, so any load balancer, or a shard
//! router inside one host, can read the server ID back.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};

use super::{ConnectionIdGenerator, random_bytes};

/// The config rotation value that marks a connection ID as routable by no
/// configuration (the load balancer falls back to the 4-tuple).
pub const UNROUTABLE_CONFIG_ID: u8 = 0b111;

/// The longest server ID a configuration may have.
pub const MAX_SERVER_ID_LEN: usize = 15;

/// A QUIC-LB configuration was invalid, or a server ID does not fit it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuicLbError {
    /// The config rotation value is above 6 (7 means unroutable).
    #[error("QUIC-LB config id {0} is outside 0..=6 (7 marks unroutable IDs)")]
    ConfigId(u8),
    /// The server ID length is outside 1..=15.
    #[error("QUIC-LB server ID length {0} is outside 1..=15")]
    ServerIdLen(usize),
    /// The nonce length is outside 4..=18, or server ID and nonce make more than 19.
    #[error(
        "QUIC-LB nonce length {nonce_len} is outside 4..=18, or with a {server_id_len}-byte server ID makes more than 19"
    )]
    NonceLen {
        /// The configured server ID length.
        server_id_len: usize,
        /// The configured nonce length.
        nonce_len: usize,
    },
    /// A server ID of the wrong length for the configuration.
    #[error("a {got}-byte server ID for a configuration of {want}-byte server IDs")]
    ServerId {
        /// The configuration's server ID length.
        want: usize,
        /// The given server ID's length.
        got: usize,
    },
}

/// A QUIC-LB configuration: what the servers behind a load balancer and the load
/// balancer itself share.
///
/// ```
/// use quic_io::QuicLbConfig;
///
/// let config = QuicLbConfig::new(1, 2, 6)?.with_key([7; 16]);
/// let generator = config.generator(&[0x01, 0x02])?;
/// let cid = quic_io::ConnectionIdGenerator::new_id(&generator);
/// assert_eq!(cid.len(), config.cid_len());
/// assert_eq!(config.server_id(&cid).unwrap().as_bytes(), &[0x01, 0x02]);
/// # Ok::<(), quic_io::QuicLbError>(())
/// ```
#[derive(Clone)]
pub struct QuicLbConfig {
    config_id: u8,
    server_id_len: usize,
    nonce_len: usize,
    key: Option<Aes128>,
    encode_length: bool,
}

impl fmt::Debug for QuicLbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicLbConfig")
            .field("config_id", &self.config_id)
            .field("server_id_len", &self.server_id_len)
            .field("nonce_len", &self.nonce_len)
            .field("encrypted", &self.key.is_some())
            .field("encode_length", &self.encode_length)
            .finish()
    }
}

/// A server ID read back from a connection ID.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerId {
    len: u8,
    bytes: [u8; MAX_SERVER_ID_LEN],
}

impl ServerId {
    /// A server ID of 1..=15 bytes; `None` otherwise.
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.is_empty() || bytes.len() > MAX_SERVER_ID_LEN {
            return None;
        }
        let mut out = [0u8; MAX_SERVER_ID_LEN];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(Self {
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    /// Its bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl fmt::Debug for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerId(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The half of a Feistel block: up to 10 bytes.
type Half = [u8; 10];

impl QuicLbConfig {
    /// A configuration without a key (server IDs in the clear): config rotation value
    /// `config_id` (0..=6), server IDs of `server_id_len` bytes (1..=15) and nonces of
    /// `nonce_len` bytes (4..=18, at most 19 with the server ID). The connection IDs
    /// are `1 + server_id_len + nonce_len` bytes long and encode their length in
    /// their first octet.
    pub fn new(config_id: u8, server_id_len: usize, nonce_len: usize) -> Result<Self, QuicLbError> {
        if config_id >= UNROUTABLE_CONFIG_ID {
            return Err(QuicLbError::ConfigId(config_id));
        }
        if !(1..=MAX_SERVER_ID_LEN).contains(&server_id_len) {
            return Err(QuicLbError::ServerIdLen(server_id_len));
        }
        if !(4..=18).contains(&nonce_len) || server_id_len + nonce_len > 19 {
            return Err(QuicLbError::NonceLen {
                server_id_len,
                nonce_len,
            });
        }
        Ok(Self {
            config_id,
            server_id_len,
            nonce_len,
            key: None,
            encode_length: true,
        })
    }

    /// Encrypts server ID and nonce with this AES-128 key, so that only holders of the
    /// configuration can read the server ID or link two IDs of one connection.
    pub fn with_key(mut self, key: [u8; 16]) -> Self {
        self.key = Some(Aes128::new(&GenericArray::from(key)));
        self
    }

    /// Fills the five low bits of the first octet with random bits instead of the
    /// length (for load balancers configured without length self-description).
    pub fn without_length_encoding(mut self) -> Self {
        self.encode_length = false;
        self
    }

    /// The config rotation value.
    pub fn config_id(&self) -> u8 {
        self.config_id
    }

    /// The length of the server IDs.
    pub fn server_id_len(&self) -> usize {
        self.server_id_len
    }

    /// The length of the nonces.
    pub fn nonce_len(&self) -> usize {
        self.nonce_len
    }

    /// Whether server ID and nonce are encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.key.is_some()
    }

    /// The length of the connection IDs of this configuration.
    pub fn cid_len(&self) -> usize {
        1 + self.server_id_len + self.nonce_len
    }

    fn plaintext_len(&self) -> usize {
        self.server_id_len + self.nonce_len
    }

    /// Writes the connection ID for `server_id` and `nonce` into `out` (which must be
    /// [`cid_len`](Self::cid_len) bytes long).
    ///
    /// # Panics
    ///
    /// If the lengths of `server_id`, `nonce` or `out` do not match the configuration.
    pub fn encode(&self, server_id: &[u8], nonce: &[u8], out: &mut [u8]) {
        assert_eq!(server_id.len(), self.server_id_len, "server ID length");
        assert_eq!(nonce.len(), self.nonce_len, "nonce length");
        assert_eq!(out.len(), self.cid_len(), "connection ID length");
        out[0] = self.first_octet();
        let l = self.plaintext_len();
        let body = &mut out[1..=l];
        body[..self.server_id_len].copy_from_slice(server_id);
        body[self.server_id_len..].copy_from_slice(nonce);
        match &self.key {
            None => {}
            Some(aes) if l == 16 => {
                let block = GenericArray::from_mut_slice(body);
                aes.encrypt_block(block);
            }
            Some(aes) => feistel_encrypt(aes, body),
        }
    }

    /// The server ID a connection ID of this configuration carries; `None` for an ID
    /// of another configuration (its config rotation bits differ) or too short.
    pub fn server_id(&self, cid: &[u8]) -> Option<ServerId> {
        let l = self.plaintext_len();
        if cid.len() < 1 + l || cid[0] >> 5 != self.config_id {
            return None;
        }
        let mut body = [0u8; 19];
        let body = &mut body[..l];
        body.copy_from_slice(&cid[1..=l]);
        match &self.key {
            None => {}
            Some(aes) if l == 16 => {
                aes.decrypt_block(GenericArray::from_mut_slice(body));
            }
            Some(aes) => feistel_decrypt(aes, body),
        }
        ServerId::new(&body[..self.server_id_len])
    }

    /// A generator of this configuration's connection IDs for the server `server_id`.
    pub fn generator(&self, server_id: &[u8]) -> Result<QuicLbGenerator, QuicLbError> {
        if server_id.len() != self.server_id_len {
            return Err(QuicLbError::ServerId {
                want: self.server_id_len,
                got: server_id.len(),
            });
        }
        let mut start = [0u8; 8];
        random_bytes(&mut start);
        let mut prefix = [0u8; 18];
        random_bytes(&mut prefix);
        Ok(QuicLbGenerator {
            config: self.clone(),
            server_id: ServerId::new(server_id).expect("length checked"),
            start: u64::from_be_bytes(start),
            prefix,
            issued: AtomicU64::new(0),
        })
    }

    fn first_octet(&self) -> u8 {
        let low = if self.encode_length {
            (self.cid_len() - 1) as u8 & 0x1f
        } else {
            let mut r = [0u8; 1];
            random_bytes(&mut r);
            r[0] & 0x1f
        };
        (self.config_id << 5) | low
    }
}

/// The 16-byte AES input of one Feistel pass: the half, zeros, the plaintext length,
/// the pass number.
fn expand(
    half: &[u8],
    plaintext_len: usize,
    pass: u8,
) -> GenericArray<u8, aes::cipher::consts::U16> {
    let mut block = [0u8; 16];
    block[..half.len()].copy_from_slice(half);
    block[14] = plaintext_len as u8;
    block[15] = pass;
    GenericArray::from(block)
}

/// XORs `target` with the first bytes of AES(expand(`input`)), then clears the nibble
/// of the middle octet that does not belong to `target`'s side.
fn feistel_pass(
    aes: &Aes128,
    input: &[u8],
    target: &mut [u8],
    plaintext_len: usize,
    pass: u8,
    target_is_left: bool,
) {
    let mut block = expand(input, plaintext_len, pass);
    aes.encrypt_block(&mut block);
    for (t, k) in target.iter_mut().zip(block.iter()) {
        *t ^= k;
    }
    if plaintext_len % 2 == 1 {
        if target_is_left {
            let last = target.len() - 1;
            target[last] &= 0xf0;
        } else {
            target[0] &= 0x0f;
        }
    }
}

/// Splits `body` into its halves; with an odd length they share the middle octet,
/// its high nibble on the left and its low nibble on the right.
fn split(body: &[u8]) -> (Half, Half, usize) {
    let l = body.len();
    let h = l.div_ceil(2);
    let (mut left, mut right) = ([0u8; 10], [0u8; 10]);
    left[..h].copy_from_slice(&body[..h]);
    right[..h].copy_from_slice(&body[l - h..]);
    if l % 2 == 1 {
        left[h - 1] &= 0xf0;
        right[0] &= 0x0f;
    }
    (left, right, h)
}

/// Joins two halves back into `body` (the inverse of [`split`]).
fn join(left: &Half, right: &Half, h: usize, body: &mut [u8]) {
    let l = body.len();
    if l % 2 == 1 {
        body[..h - 1].copy_from_slice(&left[..h - 1]);
        body[h - 1] = left[h - 1] | right[0];
        body[h..].copy_from_slice(&right[1..h]);
    } else {
        body[..h].copy_from_slice(&left[..h]);
        body[h..].copy_from_slice(&right[..h]);
    }
}

/// The four-pass encryption of server ID and nonce, in place.
fn feistel_encrypt(aes: &Aes128, body: &mut [u8]) {
    let l = body.len();
    let (mut left, mut right, h) = split(body);
    feistel_pass(aes, &left[..h], &mut right[..h], l, 1, false);
    feistel_pass(aes, &right[..h], &mut left[..h], l, 2, true);
    feistel_pass(aes, &left[..h], &mut right[..h], l, 3, false);
    feistel_pass(aes, &right[..h], &mut left[..h], l, 4, true);
    join(&left, &right, h, body);
}

/// The four-pass decryption, in place: the passes in reverse order.
fn feistel_decrypt(aes: &Aes128, body: &mut [u8]) {
    let l = body.len();
    let (mut left, mut right, h) = split(body);
    feistel_pass(aes, &right[..h], &mut left[..h], l, 4, true);
    feistel_pass(aes, &left[..h], &mut right[..h], l, 3, false);
    feistel_pass(aes, &right[..h], &mut left[..h], l, 2, true);
    feistel_pass(aes, &left[..h], &mut right[..h], l, 1, false);
    join(&left, &right, h, body);
}

/// Makes one server's QUIC-LB connection IDs.
///
/// With a key, nonces count up from a random start (the draft's counter method: no
/// nonce repeats until the space is used up); without one they are random, so that
/// IDs in the clear cannot be linked. A generator that has used up its nonces (only
/// possible with nonces of under 8 bytes) issues unroutable IDs (config rotation
/// `0b111`, random, length encoded) and logs it once: the configuration needs a
/// longer nonce or a new key.
pub struct QuicLbGenerator {
    config: QuicLbConfig,
    server_id: ServerId,
    start: u64,
    /// Fixed random high bytes of nonces longer than the 8-byte counter.
    prefix: [u8; 18],
    issued: AtomicU64,
}

impl fmt::Debug for QuicLbGenerator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicLbGenerator")
            .field("config", &self.config)
            .field("server_id", &self.server_id)
            .field("issued", &self.issued.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl QuicLbGenerator {
    /// The configuration.
    pub fn config(&self) -> &QuicLbConfig {
        &self.config
    }

    /// The server ID its connection IDs carry.
    pub fn server_id(&self) -> ServerId {
        self.server_id
    }

    /// How many nonces the counter has: 2^(8 × nonce length), saturating.
    fn capacity(&self) -> u64 {
        let bits = 8 * self.config.nonce_len.min(8) as u32;
        1u64.checked_shl(bits).unwrap_or(u64::MAX)
    }
}

impl ConnectionIdGenerator for QuicLbGenerator {
    fn cid_len(&self) -> usize {
        self.config.cid_len()
    }

    /// Only without length encoding: then the low bits are random.
    fn first_octet_bits_free(&self) -> bool {
        !self.config.encode_length
    }

    fn generate(&self, out: &mut [u8]) {
        let n = self.config.nonce_len;
        let mut nonce = [0u8; 18];
        let nonce = &mut nonce[..n];
        if self.config.is_encrypted() {
            let i = self.issued.fetch_add(1, Ordering::Relaxed);
            if i >= self.capacity() {
                if i == self.capacity() {
                    tracing::warn!(
                        config_id = self.config.config_id,
                        "QUIC-LB nonces used up: issuing unroutable connection IDs"
                    );
                }
                return unroutable(out);
            }
            let counter = self.start.wrapping_add(i).to_be_bytes();
            let low = n.min(8);
            nonce[..n - low].copy_from_slice(&self.prefix[..n - low]);
            nonce[n - low..].copy_from_slice(&counter[8 - low..]);
        } else {
            random_bytes(nonce);
        }
        self.config.encode(self.server_id.as_bytes(), nonce, out);
    }
}

/// A random connection ID that no QUIC-LB configuration routes: config rotation
/// `0b111`, its length in the low bits.
fn unroutable(out: &mut [u8]) {
    random_bytes(out);
    out[0] = (UNROUTABLE_CONFIG_ID << 5) | ((out.len() - 1) as u8 & 0x1f);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn key(s: &str) -> [u8; 16] {
        hex(s).try_into().unwrap()
    }

    /// The test vectors of draft-ietf-quic-load-balancers-21, appendix B: (config
    /// rotation, server ID, nonce, connection ID). The key is the same for all.
    const KEY: &str = "8f95f09245765f80256934e50c66207f";
    const ENCRYPTED: [(u8, &str, &str, &str); 4] = [
        (0, "ed793a", "ee080dbf", "0720b1d07b359d3c"),
        (
            1,
            "ed793a51d49b8f5fab65",
            "ee080dbf48",
            "2fcc381bc74cb4fbad2823a3d1f8fed2",
        ),
        (
            2,
            "ed793a51d49b8f5f",
            "ee080dbf48c0d1e5",
            "504dd2d05a7b0de9b2b9907afb5ecf8cc3",
        ),
        // The draft prints this one with first octet 0x12 (config 0), though its row
        // says config 3, which makes 0x72; the 18 encrypted bytes are the draft's.
        (
            3,
            "ed793a51d49b8f5fab",
            "ee080dbf48c0d1e55d",
            "725779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
        ),
    ];

    #[test]
    fn the_drafts_encrypted_vectors_encode_and_decode() {
        for (config_id, sid, nonce, want) in ENCRYPTED {
            let (sid, nonce, want) = (hex(sid), hex(nonce), hex(want));
            let config = QuicLbConfig::new(config_id, sid.len(), nonce.len())
                .unwrap()
                .with_key(key(KEY));
            let mut out = vec![0u8; config.cid_len()];
            config.encode(&sid, &nonce, &mut out);
            assert_eq!(out, want, "config {config_id}");
            assert_eq!(
                config.server_id(&want).unwrap().as_bytes(),
                sid,
                "config {config_id}"
            );
        }
    }

    #[test]
    fn the_drafts_plaintext_vector_and_worked_example() {
        let config = QuicLbConfig::new(0, 3, 4).unwrap();
        let mut out = [0u8; 8];
        config.encode(&hex("c4605e"), &hex("4504cc4f"), &mut out);
        assert_eq!(out.to_vec(), hex("07c4605e4504cc4f"));
        assert_eq!(config.server_id(&out).unwrap().as_bytes(), hex("c4605e"));
        // Section 5.4.1's example: the middle octet split between the halves.
        let config = config.with_key(key("fdf726a9893ec05c0632d3956680baf0"));
        config.encode(&hex("31441a"), &hex("9c69c275"), &mut out);
        assert_eq!(out.to_vec(), hex("0767947d29be054a"));
        assert_eq!(config.server_id(&out).unwrap().as_bytes(), hex("31441a"));
    }

    #[test]
    fn every_length_round_trips() {
        for sid_len in 1..=15 {
            for nonce_len in 4..=(19 - sid_len).min(18) {
                for keyed in [false, true] {
                    let mut config = QuicLbConfig::new(5, sid_len, nonce_len).unwrap();
                    if keyed {
                        config = config.with_key([0x5a; 16]);
                    }
                    let sid: Vec<u8> = (0..sid_len as u8)
                        .map(|i| i.wrapping_mul(37) ^ 0xa5)
                        .collect();
                    let generator = config.generator(&sid).unwrap();
                    let mut a = vec![0u8; config.cid_len()];
                    let mut b = vec![0u8; config.cid_len()];
                    generator.generate(&mut a);
                    generator.generate(&mut b);
                    assert_ne!(a, b, "{sid_len}+{nonce_len} keyed {keyed}");
                    assert_eq!(a[0] >> 5, 5);
                    assert_eq!(usize::from(a[0] & 0x1f), config.cid_len() - 1);
                    for cid in [&a, &b] {
                        assert_eq!(
                            config.server_id(cid).unwrap().as_bytes(),
                            sid,
                            "{sid_len}+{nonce_len} keyed {keyed}"
                        );
                    }
                    if keyed && sid_len >= 4 {
                        // The server ID does not show (a shorter one matches its
                        // ciphertext by chance too often to assert: 1 in 256 for one
                        // byte; from 4 bytes, 1 in 2^32).
                        assert_ne!(&a[1..=sid_len], &sid[..], "{sid_len}+{nonce_len}");
                    }
                }
            }
        }
    }

    #[test]
    fn ids_of_another_configuration_or_too_short_decode_to_nothing() {
        let config = QuicLbConfig::new(1, 2, 4).unwrap().with_key([1; 16]);
        let other = QuicLbConfig::new(2, 2, 4).unwrap().with_key([1; 16]);
        let mut cid = [0u8; 7];
        other.generator(&[9, 9]).unwrap().generate(&mut cid);
        assert_eq!(config.server_id(&cid), None);
        assert_eq!(config.server_id(&cid[..6]), None);
        let mut unroutable_cid = [0u8; 7];
        unroutable(&mut unroutable_cid);
        assert_eq!(unroutable_cid[0], 0xe6);
        assert_eq!(config.server_id(&unroutable_cid), None);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert_eq!(
            QuicLbConfig::new(7, 2, 4).unwrap_err(),
            QuicLbError::ConfigId(7)
        );
        assert_eq!(
            QuicLbConfig::new(0, 0, 4).unwrap_err(),
            QuicLbError::ServerIdLen(0)
        );
        assert_eq!(
            QuicLbConfig::new(0, 16, 4).unwrap_err(),
            QuicLbError::ServerIdLen(16)
        );
        assert!(matches!(
            QuicLbConfig::new(0, 2, 3),
            Err(QuicLbError::NonceLen { .. })
        ));
        assert!(matches!(
            QuicLbConfig::new(0, 15, 5),
            Err(QuicLbError::NonceLen { .. })
        ));
        let config = QuicLbConfig::new(0, 2, 4).unwrap();
        assert_eq!(
            config.generator(&[1]).unwrap_err(),
            QuicLbError::ServerId { want: 2, got: 1 }
        );
    }

    #[test]
    fn keyed_nonces_count_and_a_used_up_counter_issues_unroutable_ids() {
        let config = QuicLbConfig::new(0, 1, 4).unwrap();
        let keyed = config.clone().with_key([3; 16]);
        let generator = keyed.generator(&[7]).unwrap();
        // Decrypting shows consecutive nonces.
        let nonce_of = |cid: &[u8]| {
            let mut body = cid[1..].to_vec();
            feistel_decrypt(keyed.key.as_ref().unwrap(), &mut body);
            u32::from_be_bytes(body[1..5].try_into().unwrap())
        };
        let mut a = [0u8; 6];
        let mut b = [0u8; 6];
        generator.generate(&mut a);
        generator.generate(&mut b);
        assert_eq!(nonce_of(&b), nonce_of(&a).wrapping_add(1));
        generator
            .issued
            .store(u64::from(u32::MAX) + 1, Ordering::Relaxed);
        generator.generate(&mut a);
        assert_eq!(a[0] >> 5, UNROUTABLE_CONFIG_ID);
        assert_eq!(keyed.server_id(&a), None);
    }
}
