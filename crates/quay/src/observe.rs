//! The server's per-request and per-connection bookkeeping: span fields always,
//! metrics with the `metrics` feature.

#[cfg(feature = "metrics")]
use std::sync::Arc;
use std::time::Instant;

use quic_io::ConnectionClosed;

/// What one connection's requests record into: the metric handles, looked up once
/// per connection.
#[derive(Clone)]
pub(crate) struct RequestRecorder {
    #[cfg(feature = "metrics")]
    metrics: Arc<crate::metrics::RequestMetrics>,
}

impl RequestRecorder {
    pub(crate) fn new() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            metrics: Arc::new(crate::metrics::RequestMetrics::new()),
        }
    }
}

/// One request being served: counted as active until dropped.
pub(crate) struct RequestStarted {
    at: Instant,
    /// Whether the request's span is enabled: its fields are recorded only then.
    traced: bool,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    recorder: RequestRecorder,
}

impl RequestStarted {
    /// A request starts, in a span that is enabled or not (`traced`).
    pub(crate) fn new(recorder: RequestRecorder, traced: bool) -> Self {
        #[cfg(feature = "metrics")]
        recorder.metrics.request_started();
        Self {
            at: Instant::now(),
            traced,
            recorder,
        }
    }

    /// The response went out (or failed) with `status`: recorded in the request's
    /// span (the current one, where the request's future runs) and metrics.
    pub(crate) fn finished(self, status: http::StatusCode) {
        let elapsed = self.at.elapsed();
        if self.traced {
            let span = tracing::Span::current();
            span.record("status", status.as_u16());
            span.record("ms", elapsed.as_secs_f64() * 1000.0);
        }
        #[cfg(feature = "metrics")]
        self.recorder.metrics.response_sent(status, elapsed);
    }
}

impl Drop for RequestStarted {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.recorder.metrics.request_ended();
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
