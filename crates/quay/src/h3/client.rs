use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use quic_h3::{
    ClientH3Driver, H3Settings, RecvBody, ResponseFuture, SendBody, SendRequest, StreamError,
};
use quic_io::{
    ClientParams, ClientTlsConfig, ConnectError, ConnectionHandle, QuicSettings, TlsError,
};
use tokio::sync::Mutex;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
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
        source: std::io::Error,
    },
    /// The connection could not be established.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request or response stream failed.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The TLS configuration was refused (local fault).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Builds a [`Client`].
#[derive(Debug, Default)]
pub struct ClientBuilder {
    tls: ClientTlsConfig,
    settings: QuicSettings,
    h3: H3Settings,
}

impl ClientBuilder {
    /// Trusts the certificates in this PEM text (instead of the system's roots).
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        self.tls = self.tls.add_root_pem(pem)?;
        Ok(self)
    }

    /// Turns certificate verification off. Anyone on the path can then impersonate
    /// the server; the client logs a warning on every connection.
    pub fn insecure(mut self) -> Self {
        self.tls = ClientTlsConfig::insecure();
        self
    }

    /// QUIC transport settings.
    pub fn settings(mut self, settings: QuicSettings) -> Self {
        self.settings = settings;
        self
    }

    /// HTTP/3 settings.
    pub fn h3_settings(mut self, h3: H3Settings) -> Self {
        self.h3 = h3;
        self
    }

    /// The client.
    pub fn build(self) -> Client {
        Client {
            inner: Arc::new(Inner {
                tls: self.tls,
                settings: self.settings,
                h3: self.h3,
                pool: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// An HTTP/3 client: verifies certificates by default and keeps one connection per
/// authority, reused by every request to it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: ClientTlsConfig,
    settings: QuicSettings,
    h3: H3Settings,
    pool: Mutex<HashMap<String, Pooled>>,
}

#[derive(Debug, Clone)]
struct Pooled {
    send: SendRequest,
    handle: ConnectionHandle,
}

impl Client {
    /// A builder.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// `GET uri`.
    pub async fn get(&self, uri: &str) -> Result<http::Response<RecvBody>, ClientError> {
        let req = http::Request::get(uri)
            .body(Bytes::new())
            .map_err(|_| ClientError::InvalidUri(uri.to_owned()))?;
        self.request(req).await
    }

    /// `POST uri` with `body`.
    pub async fn post(
        &self,
        uri: &str,
        body: impl Into<Bytes>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        let req = http::Request::post(uri)
            .body(body.into())
            .map_err(|_| ClientError::InvalidUri(uri.to_owned()))?;
        self.request(req).await
    }

    /// Sends a request with a complete body. A request the server refused before
    /// processing (GOAWAY) is sent once more on a new connection.
    pub async fn request(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        let send = self.connection(req.uri()).await?;
        match send.send(req.clone()).await {
            Err(e) if e.is_retryable() => {
                self.forget(req.uri()).await;
                let send = self.connection(req.uri()).await?;
                Ok(send.send(req).await?)
            }
            other => Ok(other?),
        }
    }

    /// Starts a request whose body is streamed through the returned [`SendBody`].
    pub async fn send_request(
        &self,
        req: http::Request<()>,
    ) -> Result<(SendBody, ResponseFuture), ClientError> {
        let send = self.connection(req.uri()).await?;
        Ok(send.send_request(req).await?)
    }

    /// The pooled connection for `uri`'s authority, connecting if there is none (or
    /// it closed, or the server is draining it).
    async fn connection(&self, uri: &Uri) -> Result<SendRequest, ClientError> {
        let (host, port) = target(uri)?;
        let key = format!("{host}:{port}");
        let mut pool = self.inner.pool.lock().await;
        if let Some(p) = pool.get(&key)
            && !p.handle.is_closed()
            && !p.send.is_draining()
        {
            return Ok(p.send.clone());
        }
        let addr = resolve(&host, port).await?;
        let mut params = ClientParams::new(&[quic_h3::ALPN]);
        params.tls = self.inner.tls.clone();
        params.settings = self.inner.settings.clone();
        params.server_name = host.parse::<IpAddr>().is_err().then(|| host.clone());
        let (driver, send) = ClientH3Driver::new(self.inner.h3.clone());
        let handle = quic_io::connect(addr, params, driver).await?;
        pool.insert(
            key,
            Pooled {
                send: send.clone(),
                handle,
            },
        );
        Ok(send)
    }

    async fn forget(&self, uri: &Uri) {
        if let Ok((host, port)) = target(uri) {
            self.inner
                .pool
                .lock()
                .await
                .remove(&format!("{host}:{port}"));
        }
    }
}

fn target(uri: &Uri) -> Result<(String, u16), ClientError> {
    if uri.scheme_str() != Some("https") {
        return Err(ClientError::InvalidUri(uri.to_string()));
    }
    let host = uri
        .host()
        .ok_or_else(|| ClientError::InvalidUri(uri.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok((host, uri.port_u16().unwrap_or(443)))
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, ClientError> {
    let err = |source| ClientError::Resolve {
        host: host.to_owned(),
        source,
    };
    tokio::net::lookup_host((host, port))
        .await
        .map_err(err)?
        .next()
        .ok_or_else(|| {
            err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ))
        })
}
