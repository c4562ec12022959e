//! Metrics through the [`metrics`](https://docs.rs/metrics) crate's facade (feature
//! `metrics`, on by default).
//!
//! [`h3::Server`](crate::h3::Server) records the metrics below into whatever recorder
//! the application installed (`metrics-exporter-prometheus`, StatsD, ...); with none
//! installed, recording costs a few loads and nothing is kept. Its listener reports
//! the transport's events through [`TransportMetrics`]; a listener built directly
//! with `quay::io` can use it too (`params.metrics = Arc::new(TransportMetrics)`).
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `quay_http_requests_total` | counter | | requests handed to the handler |
//! | `quay_http_responses_total` | counter | `class` (`1xx`..`5xx`) | final responses sent |
//! | `quay_http_request_duration_seconds` | histogram | | request start to response end |
//! | `quay_http_requests_active` | gauge | | requests being handled |
//! | `quay_connections_active` | gauge | | connections being served |
//! | `quay_connections_closed_total` | counter | `reason` | closes: `local`, `local_error`, `peer`, `peer_error`, `idle_timeout`, `handshake_timeout`, `stateless_reset`, `aborted` |
//! | `quay_bytes_received_total` | counter | | UDP payload bytes of closed connections, received |
//! | `quay_bytes_sent_total` | counter | | UDP payload bytes of closed connections, sent |
//! | `quay_handshakes_total` | counter | | handshakes completed |
//! | `quay_handshake_duration_seconds` | histogram | | first packet to completed handshake |
//! | `quay_handshakes_failed_total` | counter | | handshakes failed or timed out |
//! | `quay_initials_accepted_total` | counter | | Initials that started a connection |
//! | `quay_initials_rejected_total` | counter | `reason` | Initials turned away ([`RejectReason`], snake case) |
//! | `quay_datagrams_dropped_total` | counter | `reason` | datagrams the router dropped ([`DropReason`], snake case) |
//! | `quay_retries_sent_total` | counter | | Retry packets sent |
//! | `quay_version_negotiations_sent_total` | counter | | Version Negotiation packets sent |
//! | `quay_stateless_resets_sent_total` | counter | | stateless resets sent |
//! | `quay_queue_full_drops_total` | counter | | datagrams dropped on a full connection (or shard) queue |
//! | `quay_datagrams_forwarded_total` | counter | | datagrams a sharded listener handed to the shard owning their connection |
//! | `quay_client_requests_total` | counter | `class` (`2xx`.., or `error`) | requests [`Client::request`](crate::h3::Client::request) completed |
//! | `quay_client_request_duration_seconds` | histogram | | request start to response head |
//!
//! Bytes are counted when a connection closes, from its final statistics.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use quic_app::CloseReason;
use quic_io::{ConnectionClosed, DropReason, Metrics, RejectReason};

/// Reports a listener's transport events to the `metrics` facade; the default of
/// [`h3::Server`](crate::h3::Server) when the feature is on.
#[derive(Debug, Default, Clone, Copy)]
pub struct TransportMetrics;

impl Metrics for TransportMetrics {
    fn initial_accepted(&self) {
        counter!("quay_initials_accepted_total").increment(1);
    }
    fn initial_rejected(&self, reason: RejectReason) {
        counter!("quay_initials_rejected_total", "reason" => reject_label(reason)).increment(1);
    }
    fn datagram_dropped(&self, reason: DropReason) {
        counter!("quay_datagrams_dropped_total", "reason" => drop_label(reason)).increment(1);
    }
    fn retry_sent(&self) {
        counter!("quay_retries_sent_total").increment(1);
    }
    fn version_negotiation_sent(&self) {
        counter!("quay_version_negotiations_sent_total").increment(1);
    }
    fn stateless_reset_sent(&self) {
        counter!("quay_stateless_resets_sent_total").increment(1);
    }
    fn queue_full_drop(&self) {
        counter!("quay_queue_full_drops_total").increment(1);
    }
    fn datagram_forwarded(&self) {
        counter!("quay_datagrams_forwarded_total").increment(1);
    }
    fn handshake_completed(&self, duration: Duration) {
        counter!("quay_handshakes_total").increment(1);
        histogram!("quay_handshake_duration_seconds").record(duration.as_secs_f64());
    }
    fn handshake_failed(&self) {
        counter!("quay_handshakes_failed_total").increment(1);
    }
}

fn reject_label(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::TooShort => "too_short",
        RejectReason::ReflectionPort => "reflection_port",
        RejectReason::InvalidToken => "invalid_token",
        RejectReason::ConnectionLimit => "connection_limit",
        RejectReason::HandshakeLimit => "handshake_limit",
        RejectReason::SourceConnectionLimit => "source_connection_limit",
        RejectReason::SourceHandshakeLimit => "source_handshake_limit",
        RejectReason::BacklogFull => "backlog_full",
        RejectReason::ShuttingDown => "shutting_down",
        RejectReason::AcceptFailed => "accept_failed",
        RejectReason::InvalidInitial => "invalid_initial",
        _ => "other",
    }
}

fn drop_label(reason: DropReason) -> &'static str {
    match reason {
        DropReason::Malformed => "malformed",
        DropReason::UnknownConnection => "unknown_connection",
        DropReason::ResetSuppressed => "reset_suppressed",
        DropReason::VersionNegotiationSuppressed => "version_negotiation_suppressed",
        _ => "other",
    }
}

fn close_label(reason: &CloseReason) -> &'static str {
    match reason {
        CloseReason::Local { .. } if reason.is_clean() => "local",
        CloseReason::Local { .. } => "local_error",
        CloseReason::Peer { .. } if reason.is_clean() => "peer",
        CloseReason::Peer { .. } => "peer_error",
        CloseReason::IdleTimeout => "idle_timeout",
        CloseReason::HandshakeTimeout => "handshake_timeout",
        CloseReason::StatelessReset => "stateless_reset",
        _ => "aborted",
    }
}

/// The response classes, in the order [`class_index`] numbers them.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn class_index(status: http::StatusCode) -> usize {
    match status.as_u16() / 100 {
        1 => 0,
        2 => 1,
        3 => 2,
        4 => 3,
        _ => 4,
    }
}

fn status_class(status: http::StatusCode) -> &'static str {
    CLASSES[class_index(status)]
}

/// The handles one connection's requests record through. Each `counter!` call looks
/// its series up in the recorder (a hash of the name and labels, and a map lookup),
/// so the server does that once per connection, not several times per request. A
/// response class's counter is looked up the first time the connection sends one, so
/// classes never sent do not appear in the recorder.
pub(crate) struct RequestMetrics {
    requests: Counter,
    active: Gauge,
    duration: Histogram,
    responses: [OnceLock<Counter>; 5],
}

impl RequestMetrics {
    /// Looks the handles up in the recorder in effect now.
    pub(crate) fn new() -> Self {
        Self {
            requests: counter!("quay_http_requests_total"),
            active: gauge!("quay_http_requests_active"),
            duration: histogram!("quay_http_request_duration_seconds"),
            responses: Default::default(),
        }
    }

    pub(crate) fn request_started(&self) {
        self.requests.increment(1);
        self.active.increment(1.0);
    }

    pub(crate) fn response_sent(&self, status: http::StatusCode, elapsed: Duration) {
        let i = class_index(status);
        self.responses[i]
            .get_or_init(|| counter!("quay_http_responses_total", "class" => CLASSES[i]))
            .increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }

    pub(crate) fn request_ended(&self) {
        self.active.decrement(1.0);
    }
}

pub(crate) fn connection_opened() {
    gauge!("quay_connections_active").increment(1.0);
}

pub(crate) fn connection_ended() {
    gauge!("quay_connections_active").decrement(1.0);
}

pub(crate) fn connection_closed(closed: &ConnectionClosed) {
    counter!("quay_connections_closed_total", "reason" => close_label(&closed.reason)).increment(1);
    counter!("quay_bytes_received_total").increment(closed.stats.bytes_recv);
    counter!("quay_bytes_sent_total").increment(closed.stats.bytes_sent);
}

pub(crate) fn client_request(status: Option<http::StatusCode>, started: std::time::Instant) {
    let class = status.map_or("error", status_class);
    counter!("quay_client_requests_total", "class" => class).increment(1);
    histogram!("quay_client_request_duration_seconds").record(started.elapsed().as_secs_f64());
}
