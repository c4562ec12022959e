//! The HTTP/3 driver family of quay (in progress).
//!
//! `quic-h3` will turn `quiche::h3` events into `http`-typed, per-request handles:
//! `H3Driver<H>` implements [`quic_app::ApplicationOverQuic`], with `ServerH3Driver`
//! and `ClientH3Driver` as its two variants. Like every protocol over quay, it does no
//! I/O itself: `quic-io` runs it over UDP, and the `quic-app` harness runs it in
//! memory for tests.
//!
//! Today the crate holds only the names it shares with the rest of the stack, so that
//! dependents can already refer to them.
#![warn(missing_docs)]

/// The ALPN token of HTTP/3 (RFC 9114 §3.1).
pub const ALPN: &[u8] = b"h3";
