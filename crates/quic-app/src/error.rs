use std::fmt;

/// An application's reason to close its connection, returned from an
/// [`ApplicationOverQuic`](crate::ApplicationOverQuic) method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AppError {
    /// Close the connection with an application error code (a CONNECTION_CLOSE frame
    /// of type 0x1d, RFC 9000 §19.19).
    #[error("application closed the connection with code {code:#x}")]
    Close {
        /// The application protocol's error code.
        code: u64,
        /// A human-readable reason sent to the peer.
        reason: Vec<u8>,
    },
    /// A `quiche` call failed; the connection closes with the matching transport error.
    #[error("quic connection error")]
    Quic(#[from] quiche::Error),
}

impl AppError {
    /// Close with an application error code and reason.
    pub fn close(code: u64, reason: impl Into<Vec<u8>>) -> Self {
        Self::Close {
            code,
            reason: reason.into(),
        }
    }
}

/// Why a connection closed, and whose doing it was.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// This endpoint closed the connection (CONNECTION_CLOSE sent).
    Local {
        /// `true` for an application close (frame 0x1d), `false` for a transport one.
        app: bool,
        /// The error code sent.
        code: u64,
        /// The reason phrase sent.
        reason: Vec<u8>,
    },
    /// The peer closed the connection (CONNECTION_CLOSE received).
    Peer {
        /// `true` for an application close (frame 0x1d), `false` for a transport one.
        app: bool,
        /// The error code received.
        code: u64,
        /// The reason phrase received.
        reason: Vec<u8>,
    },
    /// Nothing was heard from the peer for the idle timeout (RFC 9000 §10.1).
    IdleTimeout,
    /// The handshake did not complete within the configured handshake timeout.
    HandshakeTimeout,
    /// The peer answered with a stateless reset (RFC 9000 §10.3): it has lost the
    /// connection's state.
    StatelessReset,
    /// The endpoint was aborted: the connection ended without telling the peer.
    Aborted,
}

impl CloseReason {
    /// Reads the reason from a closed (or closing) connection's recorded errors.
    ///
    /// A connection closed with none recorded and not timed out is reported as
    /// [`CloseReason::Aborted`]; the I/O layer, which knows more, reports resets and
    /// handshake timeouts itself.
    pub fn from_connection(conn: &quiche::Connection) -> Self {
        if let Some(e) = conn.peer_error() {
            return Self::Peer {
                app: e.is_app,
                code: e.error_code,
                reason: e.reason.clone(),
            };
        }
        if let Some(e) = conn.local_error() {
            return Self::Local {
                app: e.is_app,
                code: e.error_code,
                reason: e.reason.clone(),
            };
        }
        if conn.is_timed_out() {
            return Self::IdleTimeout;
        }
        Self::Aborted
    }

    /// The application error code, if this was an application close by either side.
    pub fn app_code(&self) -> Option<u64> {
        match self {
            Self::Local {
                app: true, code, ..
            }
            | Self::Peer {
                app: true, code, ..
            } => Some(*code),
            _ => None,
        }
    }

    /// Whether the connection ended cleanly: a close with code 0 (NO_ERROR) by either
    /// side, application or transport.
    pub fn is_clean(&self) -> bool {
        matches!(
            self,
            Self::Local { code: 0, .. } | Self::Peer { code: 0, .. }
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = |app: bool| if app { "application" } else { "transport" };
        match self {
            Self::Local { app, code, reason } => write!(
                f,
                "closed locally ({} error {code:#x}: {})",
                kind(*app),
                String::from_utf8_lossy(reason)
            ),
            Self::Peer { app, code, reason } => write!(
                f,
                "closed by peer ({} error {code:#x}: {})",
                kind(*app),
                String::from_utf8_lossy(reason)
            ),
            Self::IdleTimeout => f.write_str("idle timeout"),
            Self::HandshakeTimeout => f.write_str("handshake timeout"),
            Self::StatelessReset => f.write_str("stateless reset by peer"),
            Self::Aborted => f.write_str("aborted"),
        }
    }
}

impl AppError {
    /// Closes `conn` as this error says: an application close with its code and reason,
    /// or a transport close with the wire code of the quiche error.
    pub fn close_connection(&self, conn: &mut quiche::Connection) {
        // `close` fails only with `Done` when the connection is already closing, which
        // is fine: the first close wins.
        let _ = match self {
            Self::Close { code, reason } => conn.close(true, *code, reason),
            Self::Quic(e) => conn.close(false, transport_code(e), b""),
        };
    }
}

/// The transport error code (RFC 9000 §20.1) a connection closes with when an
/// application returns this quiche error: the matching code where the error names a
/// protocol violation, INTERNAL_ERROR (0x1) otherwise.
pub fn transport_code(e: &quiche::Error) -> u64 {
    match e {
        quiche::Error::FlowControl => 0x3,
        quiche::Error::StreamLimit => 0x4,
        quiche::Error::InvalidStreamState(_) => 0x5,
        quiche::Error::FinalSize => 0x6,
        quiche::Error::InvalidFrame => 0x7,
        quiche::Error::InvalidTransportParam => 0x8,
        quiche::Error::IdLimit => 0x9,
        quiche::Error::CryptoBufferExceeded => 0xd,
        quiche::Error::KeyUpdate => 0xe,
        _ => 0x1,
    }
}
