use std::path::PathBuf;
use std::time::Duration;

/// The congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionControl {
    /// CUBIC (RFC 9438).
    #[default]
    Cubic,
    /// BBRv2, as quiche implements it.
    Bbr2,
    /// NewReno (RFC 9002 §7).
    Reno,
}

/// A TLS key-exchange group (RFC 8446 §4.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyExchange {
    /// The post-quantum hybrid of X25519 and ML-KEM-768
    /// (draft-ietf-tls-ecdhe-mlkem): safe against a future quantum computer
    /// recording today's traffic. Its key share makes a ClientHello larger than one
    /// datagram, and costs the server more per handshake.
    X25519MlKem768,
    /// X25519 (RFC 7748).
    X25519,
    /// NIST P-256 (secp256r1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
}

impl KeyExchange {
    /// Its name, as TLS libraries and this crate's tools spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::X25519MlKem768 => "X25519MLKEM768",
            Self::X25519 => "X25519",
            Self::P256 => "P-256",
            Self::P384 => "P-384",
        }
    }

    /// The default preference: the post-quantum hybrid, then X25519, P-256, P-384.
    pub const DEFAULT: [KeyExchange; 4] =
        [Self::X25519MlKem768, Self::X25519, Self::P256, Self::P384];
}

impl std::fmt::Display for KeyExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KeyExchange {
    type Err = SettingError;

    /// A name, in any case, with or without dashes: `x25519mlkem768`, `X25519`,
    /// `p256`, `P-384`.
    fn from_str(s: &str) -> Result<Self, SettingError> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        Ok(match norm.as_str() {
            "x25519mlkem768" => Self::X25519MlKem768,
            "x25519" => Self::X25519,
            "p256" | "secp256r1" => Self::P256,
            "p384" | "secp384r1" => Self::P384,
            _ => {
                return Err(SettingError::new(
                    "settings.key_exchange",
                    "unknown group (known: x25519mlkem768, x25519, p256, p384)",
                ));
            }
        })
    }
}

/// QUIC transport settings shared by listeners and clients.
///
/// Start from [`QuicSettings::default`] and change fields:
///
/// ```
/// let mut settings = quic_io::QuicSettings::default();
/// settings.idle_timeout = std::time::Duration::from_secs(5);
/// settings.enable_datagrams = true;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct QuicSettings {
    /// Close the connection after this long without hearing from the peer
    /// (RFC 9000 §10.1). The effective value is the smaller of both sides'. Zero
    /// means none (only the peer's, if it has one, applies). At most 7 days.
    pub idle_timeout: Duration,
    /// Give up a handshake that has not completed after this long. More than zero, at
    /// most 7 days.
    pub handshake_timeout: Duration,
    /// Connection-level receive window at the start (`initial_max_data`).
    pub initial_max_data: u64,
    /// Per-stream receive window at the start, for every stream type.
    pub initial_max_stream_data: u64,
    /// The largest the connection window may grow to by auto-tuning.
    pub max_connection_window: u64,
    /// The largest a stream window may grow to by auto-tuning.
    pub max_stream_window: u64,
    /// Bidirectional streams the peer may open at once.
    pub max_streams_bidi: u64,
    /// Unidirectional streams the peer may open at once.
    pub max_streams_uni: u64,
    /// The congestion controller.
    pub congestion_control: CongestionControl,
    /// The TLS key-exchange groups offered (client) or accepted (server), most
    /// preferred first. Default [`KeyExchange::DEFAULT`]: the post-quantum hybrid
    /// X25519MLKEM768, then X25519, P-256, P-384. A client's first key share is for
    /// the first group; a server that does not take it asks for another
    /// (HelloRetryRequest: one more round trip).
    ///
    /// What each costs a server per handshake, measured (docs/benchmarks.md, "Key
    /// exchange"): the hybrid about 1.2× X25519's CPU, P-256 about X25519's, P-384
    /// about 3× (BoringSSL computes it in generic code). A server accepts whatever
    /// group on its list a client offers alone, so a client can make it pay for
    /// P-384; where no client needs P-384, leave it out.
    pub key_exchange: Vec<KeyExchange>,
    /// Let quiche pace sends; the worker then holds back packets quiche schedules for
    /// later.
    pub pacing: bool,
    /// Enable DATAGRAM frames (RFC 9221).
    pub enable_datagrams: bool,
    /// Receive and send queue length for DATAGRAM frames, when enabled.
    pub datagram_queue_len: usize,
    /// Accept (server) or attempt (client) 0-RTT data.
    pub enable_early_data: bool,
    /// Allow the peer to migrate to a new address (RFC 9000 §9). When `false`, the
    /// `disable_active_migration` transport parameter is sent.
    pub enable_migration: bool,
    /// Connection IDs the peer may hold for this endpoint at once
    /// (`active_connection_id_limit`, RFC 9000 §18.2). The endpoint itself keeps the
    /// peer supplied with one unused spare ID, and issues the next as soon as the peer
    /// is seen using it, within the peer's own limit. Each spare ID lets the peer move
    /// to a new path without being linkable; each costs a routing entry. 2 to 16;
    /// default 4.
    pub active_connection_id_limit: u64,
    /// The largest UDP payload sent. With [`discover_pmtu`](Self::discover_pmtu) on (the
    /// default) this is the ceiling of the search: a connection sends 1200-byte
    /// packets (QUIC's minimum, which every path carries) until a padded probe of a
    /// larger size is acknowledged, then packets of that size. With discovery off,
    /// packets of this size leave from the first one, so it must fit the path: 1350
    /// is the usual choice for the open internet. 1200 to 1500 (what quay receives);
    /// default 1452, the most a 1500-byte Ethernet frame carries over IPv6.
    pub max_send_udp_payload: usize,
    /// Path MTU discovery (DPLPMTUD, RFC 8899 as QUIC uses it, RFC 9000 §14.3): probe
    /// with padded packets for the largest payload up to
    /// [`max_send_udp_payload`](Self::max_send_udp_payload) the path carries, and use
    /// it. Larger packets mean fewer packets, encryptions and system calls for the
    /// same bytes. Lost probes only lower the size searched; they never count as
    /// congestion. Default on.
    pub discover_pmtu: bool,
    /// Use UDP generic segmentation offload when the kernel has it: many datagrams per
    /// `sendmsg`. Turning it off sends one datagram per call.
    pub enable_gso: bool,
    /// When the application hands work to other tasks (an HTTP/3 request whose
    /// handler waited, or a request queue's reader), let those tasks run before
    /// sending, so a quick answer leaves with the acknowledgement of its request: one
    /// packet and one system call instead of two for a small exchange. Off, the
    /// acknowledgement leaves at once and the answer follows in packets of its own,
    /// which can reach an idle peer a little sooner. (A `quay::h3::Server` handler
    /// that answers without waiting answers inside the connection's task, and its
    /// answer leaves with the acknowledgement either way.)
    pub coalesce_answers: bool,
    /// Write a qlog file per connection into this directory.
    pub qlog_dir: Option<PathBuf>,
    /// The most bytes written to one connection's qlog file; the rest of its trace is
    /// dropped (with a warning), so a long or misbehaving connection cannot fill the
    /// disk. Default 64 MiB.
    pub qlog_max_bytes: u64,
    /// Append TLS secrets in NSS key log format to this file (for packet captures).
    /// A file it creates is readable and writable by its owner only (mode 0600): the
    /// secrets decrypt every connection they were logged for.
    pub keylog_file: Option<PathBuf>,
}

impl Default for QuicSettings {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            initial_max_data: 10 * 1024 * 1024,
            initial_max_stream_data: 1024 * 1024,
            max_connection_window: 24 * 1024 * 1024,
            max_stream_window: 16 * 1024 * 1024,
            max_streams_bidi: 100,
            max_streams_uni: 100,
            congestion_control: CongestionControl::Cubic,
            key_exchange: KeyExchange::DEFAULT.to_vec(),
            pacing: false,
            enable_datagrams: false,
            datagram_queue_len: 1024,
            enable_early_data: false,
            enable_migration: true,
            active_connection_id_limit: 4,
            max_send_udp_payload: 1452,
            discover_pmtu: true,
            enable_gso: true,
            coalesce_answers: true,
            qlog_dir: None,
            qlog_max_bytes: 64 * 1024 * 1024,
            keylog_file: None,
        }
    }
}

impl QuicSettings {
    /// Writes these settings into a quiche configuration.
    pub(crate) fn apply(&self, cfg: &mut quiche::Config) {
        cfg.set_max_idle_timeout(self.idle_timeout.as_millis().min(u64::MAX as u128) as u64);
        cfg.set_initial_max_data(self.initial_max_data);
        cfg.set_initial_max_stream_data_bidi_local(self.initial_max_stream_data);
        cfg.set_initial_max_stream_data_bidi_remote(self.initial_max_stream_data);
        cfg.set_initial_max_stream_data_uni(self.initial_max_stream_data);
        cfg.set_max_connection_window(self.max_connection_window);
        cfg.set_max_stream_window(self.max_stream_window);
        cfg.set_initial_max_streams_bidi(self.max_streams_bidi);
        cfg.set_initial_max_streams_uni(self.max_streams_uni);
        cfg.set_cc_algorithm(match self.congestion_control {
            CongestionControl::Cubic => quiche::CongestionControlAlgorithm::CUBIC,
            CongestionControl::Bbr2 => quiche::CongestionControlAlgorithm::Bbr2Gcongestion,
            CongestionControl::Reno => quiche::CongestionControlAlgorithm::Reno,
        });
        cfg.enable_pacing(self.pacing);
        let groups: Vec<&str> = self.key_exchange.iter().map(|g| g.name()).collect();
        if let Err(e) = cfg.set_curves_list(&groups.join(":")) {
            tracing::warn!(error = %e, ?groups, "the TLS library refused the key-exchange groups; it uses its own");
        }
        if self.enable_datagrams {
            cfg.enable_dgram(true, self.datagram_queue_len, self.datagram_queue_len);
        }
        if self.enable_early_data {
            cfg.enable_early_data();
        }
        cfg.set_disable_active_migration(!self.enable_migration);
        cfg.set_active_connection_id_limit(self.active_connection_id_limit);
        cfg.set_max_send_udp_payload_size(self.max_send_udp_payload);
        cfg.discover_pmtu(self.discover_pmtu);
        cfg.set_max_recv_udp_payload_size(crate::socket::MAX_UDP_PAYLOAD);
        if self.keylog_file.is_some() {
            cfg.log_keys();
        }
    }
}

/// A setting out of its range, found when a listener or a connection is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting `{field}`: {problem}")]
#[non_exhaustive]
pub struct SettingError {
    /// The field, as a path from the parameters (`settings.idle_timeout`).
    pub field: &'static str,
    /// What is wrong with its value.
    pub problem: &'static str,
}

impl SettingError {
    pub(crate) fn new(field: &'static str, problem: &'static str) -> Self {
        Self { field, problem }
    }
}

/// The largest value a QUIC variable-length integer carries (RFC 9000 §16): every
/// transport parameter is one.
const MAX_VARINT: u64 = (1 << 62) - 1;

/// RFC 9000 §4.6: a stream count above 2^60 cannot be encoded as a stream ID.
const MAX_STREAM_COUNT: u64 = 1 << 60;

/// The longest timeout accepted (idle, handshake): beyond it a value is a mistake, and
/// deadlines computed from it could overflow the clock.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(7 * 24 * 3600);

/// RFC 9000 §14: every QUIC endpoint must be able to send datagrams of 1200 bytes.
const MIN_UDP_PAYLOAD: usize = 1200;

impl QuicSettings {
    /// Checks every field against its range; the error names the first field out of
    /// range. Listeners and connections call this before they start.
    pub fn validate(&self) -> Result<(), SettingError> {
        let err = SettingError::new;
        if self.idle_timeout > MAX_TIMEOUT {
            return Err(err(
                "settings.idle_timeout",
                "longer than 7 days (zero means no idle timeout)",
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(err("settings.handshake_timeout", "zero"));
        }
        if !(2..=16).contains(&self.active_connection_id_limit) {
            return Err(err("settings.active_connection_id_limit", "outside 2..=16"));
        }
        if self.handshake_timeout > MAX_TIMEOUT {
            return Err(err("settings.handshake_timeout", "longer than 7 days"));
        }
        let varints = [
            ("settings.initial_max_data", self.initial_max_data),
            (
                "settings.initial_max_stream_data",
                self.initial_max_stream_data,
            ),
            ("settings.max_connection_window", self.max_connection_window),
            ("settings.max_stream_window", self.max_stream_window),
        ];
        for (field, v) in varints {
            if v > MAX_VARINT {
                return Err(err(field, "above 2^62-1, the largest QUIC integer"));
            }
        }
        if self.max_connection_window < self.initial_max_data {
            return Err(err(
                "settings.max_connection_window",
                "smaller than settings.initial_max_data",
            ));
        }
        if self.max_stream_window < self.initial_max_stream_data {
            return Err(err(
                "settings.max_stream_window",
                "smaller than settings.initial_max_stream_data",
            ));
        }
        if self.max_streams_bidi > MAX_STREAM_COUNT {
            return Err(err("settings.max_streams_bidi", "above 2^60"));
        }
        if self.max_streams_uni > MAX_STREAM_COUNT {
            return Err(err("settings.max_streams_uni", "above 2^60"));
        }
        if self.key_exchange.is_empty() {
            return Err(err(
                "settings.key_exchange",
                "empty: at least one group is required",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        if !self.key_exchange.iter().all(|g| seen.insert(*g)) {
            return Err(err("settings.key_exchange", "a group listed twice"));
        }
        if self.enable_datagrams && self.datagram_queue_len == 0 {
            return Err(err(
                "settings.datagram_queue_len",
                "zero while datagrams are enabled",
            ));
        }
        if !(MIN_UDP_PAYLOAD..=crate::socket::MAX_UDP_PAYLOAD).contains(&self.max_send_udp_payload)
        {
            return Err(err(
                "settings.max_send_udp_payload",
                "outside 1200..=1500 bytes",
            ));
        }
        Ok(())
    }
}
