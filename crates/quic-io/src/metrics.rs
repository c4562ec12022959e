//! What an endpoint counts, behind a neutral interface.
//!
//! The router and the workers report events to a [`Metrics`] implementation. The
//! default, [`NoopMetrics`], ignores them; [`CountingMetrics`] keeps atomic counters
//! that can be read at any time; users plug their own exporter in by implementing the
//! trait.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Why the router turned away an Initial packet that would have started a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The UDP datagram carrying it was shorter than 1200 bytes (RFC 9000 §14.1).
    TooShort,
    /// The source port is one that reflection attacks use (DNS, NTP, ...).
    ReflectionPort,
    /// Its Retry token was malformed, forged, expired or for another address.
    InvalidToken,
    /// The endpoint already has its maximum number of connections.
    ConnectionLimit,
    /// The endpoint has its maximum number of handshakes in flight.
    HandshakeLimit,
    /// The client's address (IPv4 address, IPv6 /64) has its maximum number of
    /// connections.
    SourceConnectionLimit,
    /// The client's address has its maximum number of handshakes in flight.
    SourceHandshakeLimit,
    /// The accept backlog was full: the application is not accepting fast enough.
    BacklogFull,
    /// The endpoint is shutting down.
    ShuttingDown,
    /// quiche refused to create the connection.
    AcceptFailed,
    /// The Initial did not decrypt or carried nothing acceptable.
    InvalidInitial,
}

/// Why the router dropped a datagram that was not an acceptable Initial.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// No QUIC header could be parsed.
    Malformed,
    /// A long-header packet (not an Initial) for no known connection.
    UnknownConnection,
    /// A short-header packet for no known connection that got no stateless reset
    /// (too short to answer, or the reset rate limit was reached).
    ResetSuppressed,
    /// A Version Negotiation packet, or a packet that gets none in return.
    VersionNegotiationSuppressed,
}

/// Receives an endpoint's events. Every method has an empty default.
///
/// Methods are called from the router task and the connection workers; they must be
/// cheap and must not block.
pub trait Metrics: Send + Sync + 'static {
    /// An Initial started a new connection.
    fn initial_accepted(&self) {}
    /// An Initial was turned away.
    fn initial_rejected(&self, _reason: RejectReason) {}
    /// A datagram was dropped by the router.
    fn datagram_dropped(&self, _reason: DropReason) {}
    /// A Retry packet was sent.
    fn retry_sent(&self) {}
    /// A Version Negotiation packet was sent.
    fn version_negotiation_sent(&self) {}
    /// A stateless reset was sent.
    fn stateless_reset_sent(&self) {}
    /// A datagram for a known connection was dropped because its worker's queue (or,
    /// on a sharded listener, its shard's) was full.
    fn queue_full_drop(&self) {}
    /// A sharded listener's router handed a datagram to the shard that owns its
    /// connection (the kernel delivered it to another shard's socket).
    fn datagram_forwarded(&self) {}
    /// A handshake completed, after `duration`.
    fn handshake_completed(&self, _duration: Duration) {}
    /// A handshake failed or timed out.
    fn handshake_failed(&self) {}
    /// A connection closed.
    fn connection_closed(&self) {}
}

/// Ignores every event.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoopMetrics;

impl Metrics for NoopMetrics {}

/// Counts every event in atomic counters; [`CountingMetrics::snapshot`] reads them.
#[derive(Debug, Default)]
pub struct CountingMetrics {
    accepted: AtomicU64,
    rejected: [AtomicU64; 11],
    dropped: [AtomicU64; 4],
    retries: AtomicU64,
    version_negotiations: AtomicU64,
    resets: AtomicU64,
    queue_full: AtomicU64,
    forwarded: AtomicU64,
    handshakes: AtomicU64,
    handshake_micros: AtomicU64,
    handshakes_failed: AtomicU64,
    closed: AtomicU64,
}

/// The counters of a [`CountingMetrics`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Initials that started a connection.
    pub initials_accepted: u64,
    /// Initials turned away, by reason.
    pub initials_rejected: Vec<(RejectReason, u64)>,
    /// Datagrams dropped by the router, by reason.
    pub datagrams_dropped: Vec<(DropReason, u64)>,
    /// Retry packets sent.
    pub retries_sent: u64,
    /// Version Negotiation packets sent.
    pub version_negotiations_sent: u64,
    /// Stateless resets sent.
    pub stateless_resets_sent: u64,
    /// Datagrams dropped because a worker's queue was full.
    pub queue_full_drops: u64,
    /// Datagrams a sharded listener's router handed to the shard that owns them.
    pub datagrams_forwarded: u64,
    /// Handshakes completed.
    pub handshakes_completed: u64,
    /// Sum of the durations of completed handshakes.
    pub handshake_time_total: Duration,
    /// Handshakes that failed or timed out.
    pub handshakes_failed: u64,
    /// Connections closed.
    pub connections_closed: u64,
}

impl MetricsSnapshot {
    /// Initials rejected for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        self.initials_rejected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }

    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.datagrams_dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

const REJECT_REASONS: [RejectReason; 11] = [
    RejectReason::TooShort,
    RejectReason::ReflectionPort,
    RejectReason::InvalidToken,
    RejectReason::ConnectionLimit,
    RejectReason::HandshakeLimit,
    RejectReason::SourceConnectionLimit,
    RejectReason::SourceHandshakeLimit,
    RejectReason::BacklogFull,
    RejectReason::ShuttingDown,
    RejectReason::AcceptFailed,
    RejectReason::InvalidInitial,
];

const DROP_REASONS: [DropReason; 4] = [
    DropReason::Malformed,
    DropReason::UnknownConnection,
    DropReason::ResetSuppressed,
    DropReason::VersionNegotiationSuppressed,
];

impl CountingMetrics {
    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            initials_accepted: load(&self.accepted),
            initials_rejected: REJECT_REASONS
                .iter()
                .zip(&self.rejected)
                .map(|(r, c)| (*r, load(c)))
                .collect(),
            datagrams_dropped: DROP_REASONS
                .iter()
                .zip(&self.dropped)
                .map(|(r, c)| (*r, load(c)))
                .collect(),
            retries_sent: load(&self.retries),
            version_negotiations_sent: load(&self.version_negotiations),
            stateless_resets_sent: load(&self.resets),
            queue_full_drops: load(&self.queue_full),
            datagrams_forwarded: load(&self.forwarded),
            handshakes_completed: load(&self.handshakes),
            handshake_time_total: Duration::from_micros(load(&self.handshake_micros)),
            handshakes_failed: load(&self.handshakes_failed),
            connections_closed: load(&self.closed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics for CountingMetrics {
    fn initial_accepted(&self) {
        bump(&self.accepted);
    }
    fn initial_rejected(&self, reason: RejectReason) {
        let i = REJECT_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        bump(&self.rejected[i]);
    }
    fn datagram_dropped(&self, reason: DropReason) {
        let i = DROP_REASONS.iter().position(|r| *r == reason).unwrap_or(0);
        bump(&self.dropped[i]);
    }
    fn retry_sent(&self) {
        bump(&self.retries);
    }
    fn version_negotiation_sent(&self) {
        bump(&self.version_negotiations);
    }
    fn stateless_reset_sent(&self) {
        bump(&self.resets);
    }
    fn queue_full_drop(&self) {
        bump(&self.queue_full);
    }
    fn datagram_forwarded(&self) {
        bump(&self.forwarded);
    }
    fn handshake_completed(&self, duration: Duration) {
        bump(&self.handshakes);
        self.handshake_micros
            .fetch_add(duration.as_micros() as u64, Ordering::Relaxed);
    }
    fn handshake_failed(&self) {
        bump(&self.handshakes_failed);
    }
    fn connection_closed(&self) {
        bump(&self.closed);
    }
}
