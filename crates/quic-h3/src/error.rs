use std::fmt;

/// An HTTP/3 error code (RFC 9114 §8.1), carried in RESET_STREAM, STOP_SENDING and
/// CONNECTION_CLOSE frames.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct H3Code(pub u64);

impl H3Code {
    /// No error: a graceful close.
    pub const NO_ERROR: Self = Self(0x100);
    /// A protocol error with no more specific code.
    pub const GENERAL_PROTOCOL_ERROR: Self = Self(0x101);
    /// An internal error of this endpoint.
    pub const INTERNAL_ERROR: Self = Self(0x102);
    /// The peer created a stream it should not have.
    pub const STREAM_CREATION_ERROR: Self = Self(0x103);
    /// A stream the connection needs was closed.
    pub const CLOSED_CRITICAL_STREAM: Self = Self(0x104);
    /// A frame arrived where it is not allowed.
    pub const FRAME_UNEXPECTED: Self = Self(0x105);
    /// A frame was malformed.
    pub const FRAME_ERROR: Self = Self(0x106);
    /// The peer generates excessive load.
    pub const EXCESSIVE_LOAD: Self = Self(0x107);
    /// A stream or push ID was used wrongly.
    pub const ID_ERROR: Self = Self(0x108);
    /// A SETTINGS frame was malformed.
    pub const SETTINGS_ERROR: Self = Self(0x109);
    /// No SETTINGS frame at the start of the control stream.
    pub const MISSING_SETTINGS: Self = Self(0x10a);
    /// The request was rejected without any processing: safe to retry.
    pub const REQUEST_REJECTED: Self = Self(0x10b);
    /// The request or its response was cancelled.
    pub const REQUEST_CANCELLED: Self = Self(0x10c);
    /// The stream ended before the request was complete.
    pub const REQUEST_INCOMPLETE: Self = Self(0x10d);
    /// A message was malformed.
    pub const MESSAGE_ERROR: Self = Self(0x10e);
    /// A CONNECT request's TCP connection failed.
    pub const CONNECT_ERROR: Self = Self(0x10f);
    /// Retry over HTTP/1.1.
    pub const VERSION_FALLBACK: Self = Self(0x110);
    /// H3_DATAGRAM_ERROR (RFC 9297 §2.1): a malformed HTTP Datagram.
    pub const DATAGRAM_ERROR: Self = Self(0x33);

    fn name(self) -> Option<&'static str> {
        Some(match self {
            Self::NO_ERROR => "H3_NO_ERROR",
            Self::GENERAL_PROTOCOL_ERROR => "H3_GENERAL_PROTOCOL_ERROR",
            Self::INTERNAL_ERROR => "H3_INTERNAL_ERROR",
            Self::STREAM_CREATION_ERROR => "H3_STREAM_CREATION_ERROR",
            Self::CLOSED_CRITICAL_STREAM => "H3_CLOSED_CRITICAL_STREAM",
            Self::FRAME_UNEXPECTED => "H3_FRAME_UNEXPECTED",
            Self::FRAME_ERROR => "H3_FRAME_ERROR",
            Self::EXCESSIVE_LOAD => "H3_EXCESSIVE_LOAD",
            Self::ID_ERROR => "H3_ID_ERROR",
            Self::SETTINGS_ERROR => "H3_SETTINGS_ERROR",
            Self::MISSING_SETTINGS => "H3_MISSING_SETTINGS",
            Self::REQUEST_REJECTED => "H3_REQUEST_REJECTED",
            Self::REQUEST_CANCELLED => "H3_REQUEST_CANCELLED",
            Self::REQUEST_INCOMPLETE => "H3_REQUEST_INCOMPLETE",
            Self::MESSAGE_ERROR => "H3_MESSAGE_ERROR",
            Self::CONNECT_ERROR => "H3_CONNECT_ERROR",
            Self::VERSION_FALLBACK => "H3_VERSION_FALLBACK",
            Self::DATAGRAM_ERROR => "H3_DATAGRAM_ERROR",
            _ => return None,
        })
    }
}

impl fmt::Debug for H3Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "H3Code({:#x})", self.0),
        }
    }
}

impl fmt::Display for H3Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Why a request or response stream failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The peer reset the stream (RESET_STREAM) with this code.
    #[error("stream reset by peer with {0}")]
    Reset(H3Code),
    /// The request was not processed by the peer (REQUEST_REJECTED, or above the
    /// peer's GOAWAY limit): it is safe to send it again on another connection.
    #[error("request refused by the peer before processing; safe to retry")]
    Refused,
    /// The peer sent a malformed message.
    #[error("malformed message from peer: {0}")]
    Malformed(&'static str),
    /// The connection closed before the stream finished.
    #[error("connection closed before the stream finished")]
    ConnectionClosed,
    /// The request's field section is larger than the peer accepts
    /// (SETTINGS_MAX_FIELD_SECTION_SIZE, RFC 9114 §4.2.2); it was not sent.
    #[error("header section of {size} bytes exceeds the peer's limit of {limit}")]
    HeadersTooLarge {
        /// The section's size as RFC 9114 §4.2.2 counts it.
        size: u64,
        /// The peer's limit.
        limit: u64,
    },
    /// The body is larger than the configured limit; the rest was refused.
    #[error("body larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The local end of the stream was dropped or the driver is gone.
    #[error("stream cancelled locally")]
    Cancelled,
    /// The peer did not enable what the request needs (extended CONNECT, say); it was
    /// not sent.
    #[error("the peer does not support {0}")]
    Unsupported(&'static str),
    /// The exchange did not complete by its deadline
    /// ([`RecvBody::set_deadline`](crate::RecvBody::set_deadline)).
    #[error("timed out: the exchange did not complete in time")]
    Timeout,
    /// No body data arrived within the read timeout
    /// ([`RecvBody::set_read_timeout`](crate::RecvBody::set_read_timeout)).
    #[error("timed out waiting for body data")]
    ReadTimeout,
}

impl StreamError {
    /// Whether sending the request again (on a new connection) is safe.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Refused) || *self == Self::Reset(H3Code::REQUEST_REJECTED)
    }

    /// Whether a deadline or read timeout ended the stream.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout | Self::ReadTimeout)
    }
}
