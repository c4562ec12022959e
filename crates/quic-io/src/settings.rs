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
    /// (RFC 9000 §10.1). The effective value is the smaller of both sides'.
    pub idle_timeout: Duration,
    /// Give up a handshake that has not completed after this long.
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
    /// The largest UDP payload sent; 1350 fits common paths without fragmentation.
    pub max_send_udp_payload: usize,
    /// Use UDP generic segmentation offload when the kernel has it: many datagrams per
    /// `sendmsg`. Turning it off sends one datagram per call.
    pub enable_gso: bool,
    /// When the application hands work to other tasks (an HTTP/3 request to its
    /// handler), let those tasks run before sending, so a quick answer leaves with the
    /// acknowledgement of its request: one packet and one system call instead of two
    /// for a small exchange. Off, the acknowledgement leaves at once and the answer
    /// follows in packets of its own, which can reach an idle peer a little sooner.
    pub coalesce_answers: bool,
    /// Write a qlog file per connection into this directory.
    pub qlog_dir: Option<PathBuf>,
    /// Append TLS secrets in NSS key log format to this file (for packet captures).
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
            pacing: false,
            enable_datagrams: false,
            datagram_queue_len: 1024,
            enable_early_data: false,
            enable_migration: true,
            max_send_udp_payload: 1350,
            enable_gso: true,
            coalesce_answers: true,
            qlog_dir: None,
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
        if self.enable_datagrams {
            cfg.enable_dgram(true, self.datagram_queue_len, self.datagram_queue_len);
        }
        if self.enable_early_data {
            cfg.enable_early_data();
        }
        cfg.set_disable_active_migration(!self.enable_migration);
        cfg.set_max_send_udp_payload_size(self.max_send_udp_payload);
        cfg.set_max_recv_udp_payload_size(crate::socket::MAX_UDP_PAYLOAD);
        if self.keylog_file.is_some() {
            cfg.log_keys();
        }
    }
}
