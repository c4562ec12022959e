//! DNS over dedicated QUIC connections (RFC 9250), as `ApplicationOverQuic` protocols.
//!
//! - [`DoqServer`] answers queries with a [`Resolver`]: a [`Zone`] read from a
//!   master file, and optionally an upstream server over UDP (TCP when the answer
//!   is truncated) for the names the zone does not hold.
//! - [`DoqClient`] sends queries handed in through its [`QueryHandle`].
//!
//! Each query travels on a client-initiated bidirectional stream of its own, as a
//! 2-byte length and the message, which the client finishes; the answer comes back on
//! the same stream the same way. Message IDs are 0 on the wire (the server forwards
//! with IDs of its own). What breaks the protocol (a second message on a stream, a
//! length that disagrees with the data, a message ID other than 0, the
//! edns-tcp-keepalive option, a unidirectional stream, a server-initiated stream)
//! closes the connection with [`DOQ_PROTOCOL_ERROR`]. Messages are at most 65,535
//! bytes (the length prefix), queries in flight per connection are bounded
//! ([`ServerLimits`]), and in 0-RTT only standard queries are answered (anything else
//! gets REFUSED until the handshake completes, RFC 9250 §4.5).
//!
//! These apps run on any quay endpoint: `quic_io` listeners and connections, or the
//! in-memory harness of `quic-app`; the `quay` crate's `doq` feature bundles them.
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod client;
pub use client::{DoqClient, QueryError, QueryHandle};

mod resolver;
pub use resolver::{Resolver, Upstream};

mod server;
pub use server::{DoqServer, ServerLimits};

mod zone;
pub use zone::{Zone, ZoneError};

pub use hickory_proto as proto;

/// The ALPN token of DNS over QUIC.
pub const ALPN: &[u8] = b"doq";

/// The port DoQ servers listen on (RFC 9250 §4.1.1).
pub const DEFAULT_PORT: u16 = 853;

/// The largest DNS message a stream carries: the 2-byte length prefix's limit.
pub const MAX_MESSAGE: usize = 65_535;

/// No error: closing a connection (or a stream) normally.
pub const DOQ_NO_ERROR: u64 = 0x0;
/// The endpoint failed inside (a stream reset when no answer can be made).
pub const DOQ_INTERNAL_ERROR: u64 = 0x1;
/// The peer broke the protocol.
pub const DOQ_PROTOCOL_ERROR: u64 = 0x2;
/// A query was cancelled.
pub const DOQ_REQUEST_CANCELLED: u64 = 0x3;
/// The endpoint is overloaded.
pub const DOQ_EXCESSIVE_LOAD: u64 = 0x4;
/// Any other error.
pub const DOQ_UNSPECIFIED_ERROR: u64 = 0x5;

/// The name of a DoQ error code, for logs.
pub fn error_name(code: u64) -> &'static str {
    match code {
        DOQ_NO_ERROR => "DOQ_NO_ERROR",
        DOQ_INTERNAL_ERROR => "DOQ_INTERNAL_ERROR",
        DOQ_PROTOCOL_ERROR => "DOQ_PROTOCOL_ERROR",
        DOQ_REQUEST_CANCELLED => "DOQ_REQUEST_CANCELLED",
        DOQ_EXCESSIVE_LOAD => "DOQ_EXCESSIVE_LOAD",
        _ => "DOQ_UNSPECIFIED_ERROR",
    }
}

/// Whether `id` is a stream a client opened for a query: client-initiated and
/// bidirectional (RFC 9000 §2.1).
pub(crate) fn is_query_stream(id: u64) -> bool {
    id & 0x3 == 0
}
