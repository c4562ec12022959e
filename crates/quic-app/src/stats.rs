use std::time::Duration;

/// A snapshot of a connection's counters, readable while it runs and after it closed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// QUIC packets sent.
    pub packets_sent: usize,
    /// QUIC packets received.
    pub packets_recv: usize,
    /// QUIC packets declared lost.
    pub packets_lost: usize,
    /// Packets that carried retransmitted data.
    pub packets_retransmitted: usize,
    /// Bytes sent, all packets.
    pub bytes_sent: u64,
    /// Bytes received, all packets.
    pub bytes_recv: u64,
    /// Bytes in packets declared lost.
    pub bytes_lost: u64,
    /// Smoothed round-trip time on the active path.
    pub rtt: Duration,
    /// Minimum observed round-trip time on the active path.
    pub min_rtt: Option<Duration>,
    /// Congestion window on the active path, in bytes.
    pub cwnd: usize,
    /// The delivery rate estimate on the active path, in bytes per second.
    pub delivery_rate: u64,
    /// Path MTU in use: the largest UDP payload sent on the active path.
    pub pmtu: usize,
}

impl ConnectionStats {
    /// Reads the counters of `conn` now.
    pub fn from_connection(conn: &quiche::Connection) -> Self {
        let s = conn.stats();
        let mut out = Self {
            packets_sent: s.sent,
            packets_recv: s.recv,
            packets_lost: s.lost,
            packets_retransmitted: s.retrans,
            bytes_sent: s.sent_bytes,
            bytes_recv: s.recv_bytes,
            bytes_lost: s.lost_bytes,
            ..Self::default()
        };
        if let Some(p) = conn.path_stats().next() {
            out.rtt = p.rtt;
            out.min_rtt = p.min_rtt;
            out.cwnd = p.cwnd;
            out.delivery_rate = p.delivery_rate;
            out.pmtu = p.pmtu;
        }
        out
    }
}
