//! The server's per-request and per-connection bookkeeping: span fields always,
//! metrics with the `metrics` feature.

use std::time::Instant;

use quic_io::ConnectionClosed;

/// One request being served: counted as active until dropped.
pub(crate) struct RequestStarted {
    at: Instant,
}

impl RequestStarted {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        crate::metrics::request_started();
        Self { at: Instant::now() }
    }

    /// The response went out (or failed) with `status`: recorded in the request's
    /// span and metrics.
    pub(crate) fn finished(self, status: http::StatusCode, span: &tracing::Span) {
        let elapsed = self.at.elapsed();
        span.record("status", status.as_u16());
        span.record("ms", elapsed.as_secs_f64() * 1000.0);
        #[cfg(feature = "metrics")]
        crate::metrics::response_sent(status, elapsed);
    }
}

impl Drop for RequestStarted {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        crate::metrics::request_ended();
    }
}

/// One connection being served: counted as active until it closes.
pub(crate) struct ConnectionOpened;

impl ConnectionOpened {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        crate::metrics::connection_opened();
        Self
    }

    /// The connection closed: why, and what it carried.
    pub(crate) fn closed(self, closed: &ConnectionClosed) {
        #[cfg(feature = "metrics")]
        crate::metrics::connection_closed(closed);
        let _ = closed;
    }
}

impl Drop for ConnectionOpened {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        crate::metrics::connection_ended();
    }
}
