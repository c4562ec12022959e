//! What the client's calls return when they fail, and reading a response whole.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quic_h3::{RecvBody, StreamError};
use quic_io::{ConnectError, TlsError};

/// Why a request failed.
///
/// Cheap to clone: a connection attempt's failure is handed to every request that
/// waited for it. Ask [`is_timeout`](Self::is_timeout), [`is_connect`](Self::is_connect)
/// and friends rather than matching every variant.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URI has no `https` scheme or no host (local fault).
    #[error("invalid URI {0}: need https://host[:port]/path")]
    InvalidUri(String),
    /// The host name did not resolve.
    #[error("cannot resolve {host}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// No connection could be established (every address tried failed; this is the
    /// first address's error).
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    /// No connection was established within the connect timeout.
    #[error("connecting to {authority} timed out after {after:?}")]
    ConnectTimeout {
        /// `host:port`.
        authority: String,
        /// The connect timeout.
        after: Duration,
    },
    /// The response did not arrive within the request timeout.
    #[error("no response within the request timeout of {after:?}")]
    Timeout {
        /// The request timeout.
        after: Duration,
    },
    /// The request or response stream failed; [`StreamError::Timeout`] and
    /// [`StreamError::ReadTimeout`] when a timeout ended the body.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The TLS configuration was refused (local fault).
    #[error(transparent)]
    Tls(Arc<TlsError>),
    /// A redirect was not followed: to a scheme other than https, without a usable
    /// `Location`, or beyond the redirect policy's limit.
    #[error("redirect not followed: {0}")]
    Redirect(String),
    /// The body could not be decoded as JSON.
    #[cfg(feature = "json")]
    #[error("invalid JSON body")]
    Json(#[source] Arc<serde_json::Error>),
}

impl From<ConnectError> for ClientError {
    fn from(e: ConnectError) -> Self {
        Self::Connect(Arc::new(e))
    }
}

impl From<TlsError> for ClientError {
    fn from(e: TlsError) -> Self {
        Self::Tls(Arc::new(e))
    }
}

impl ClientError {
    /// Whether a timeout ended the request: connect, handshake, request or read.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::ConnectTimeout { .. } | Self::Timeout { .. } => true,
            Self::Connect(e) => matches!(**e, ConnectError::HandshakeTimeout { .. }),
            Self::Stream(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// Whether no connection could be made: resolution, handshake, refusal, timeout
    /// while connecting.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Resolve { .. } | Self::Connect(_) | Self::ConnectTimeout { .. }
        )
    }

    /// Whether TLS failed: a certificate not trusted, a TLS alert from the server, or
    /// a local TLS configuration that was refused.
    pub fn is_tls(&self) -> bool {
        match self {
            Self::Tls(_) => true,
            Self::Connect(e) => matches!(**e, ConnectError::Tls { .. } | ConnectError::Config(_)),
            _ => false,
        }
    }

    /// Whether a redirect was refused or too many followed.
    pub fn is_redirect(&self) -> bool {
        matches!(self, Self::Redirect(_))
    }
}

/// Reads a response's body whole: [`bytes`](Self::bytes), [`text`](Self::text) and
/// (feature `json`) [`json`](Self::json), as reqwest's `Response` has them.
pub trait ResponseExt: Sized + Send {
    /// The whole body.
    fn bytes(self) -> impl std::future::Future<Output = Result<Bytes, ClientError>> + Send;

    /// The whole body as text (UTF-8; invalid sequences become U+FFFD).
    fn text(self) -> impl std::future::Future<Output = Result<String, ClientError>> + Send {
        async move {
            let bytes = self.bytes().await?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    /// The whole body, decoded from JSON.
    #[cfg(feature = "json")]
    fn json<T: serde::de::DeserializeOwned>(
        self,
    ) -> impl std::future::Future<Output = Result<T, ClientError>> + Send {
        async move {
            let bytes = self.bytes().await?;
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Json(Arc::new(e)))
        }
    }
}

impl ResponseExt for http::Response<RecvBody> {
    async fn bytes(mut self) -> Result<Bytes, ClientError> {
        let mut out = bytes::BytesMut::new();
        while let Some(chunk) = self.body_mut().chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}
