//! Tests of the HTTP/3 drivers, in memory through the quic-app harness.

mod it;
