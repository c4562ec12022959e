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
    early_data: bool,
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

    /// The whole TLS configuration: roots, verification, client identity. Replaces
    /// what earlier calls set.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = tls;
        self
    }

    /// Presents this certificate chain and key to servers that ask for one (mutual
    /// TLS).
    pub fn identity(mut self, identity: quic_io::TlsConfig) -> Self {
        self.tls = self.tls.with_identity(identity);
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

    /// Sends requests in 0-RTT on resumed connections: the first requests to a
    /// server it has talked to before leave with the first packet instead of after a
    /// round trip. Only safe methods (GET, HEAD, OPTIONS, TRACE) go early, because
    /// early data can be replayed by an attacker; the server must enable early data
    /// too. Off by default.
    pub fn enable_0rtt(mut self) -> Self {
        self.early_data = true;
        self
    }

    /// The client.
    pub fn build(mut self) -> Client {
        if self.early_data {
            self.settings.enable_early_data = true;
        }
        Client {
            inner: Arc::new(Inner {
                tls: self.tls,
                settings: self.settings,
                h3: self.h3,
                pool: Mutex::new(HashMap::new()),
                sessions: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// An HTTP/3 client: verifies certificates by default and keeps one connection per
/// authority, reused by every request to it. When a connection ends, the next one to
/// the same authority resumes its TLS session (and, with
/// [`enable_0rtt`](ClientBuilder::enable_0rtt), sends safe requests in 0-RTT). Cheap
/// to clone.
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
    /// The latest session ticket per authority, from connections no longer pooled.
    sessions: std::sync::Mutex<HashMap<String, Vec<u8>>>,
}

impl Inner {
    /// Keeps the session ticket of a connection leaving the pool.
    fn keep_session(&self, key: &str, pooled: &Pooled) {
        if let Some(ticket) = pooled.handle.session() {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            sessions.insert(key.to_owned(), ticket);
        }
    }

    fn session(&self, key: &str) -> Option<Vec<u8>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.get(key).cloned()
    }
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
        match self.request_once(req.clone()).await {
            Err(ClientError::Stream(e)) if e.is_retryable() => {
                self.forget(req.uri()).await;
                self.request_once(req).await
            }
            other => other,
        }
    }

    async fn request_once(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        let (parts, body) = req.into_parts();
        let (mut sender, response) = self
            .send_request(http::Request::from_parts(parts, ()))
            .await?;
        sender.send_data(body).await?;
        sender.finish().await?;
        Ok(response.await?)
    }

    /// Starts a request whose body is streamed through the returned [`SendBody`].
    ///
    /// On a new connection the request is queued before the handshake starts, so a
    /// resumed connection with 0-RTT carries it in its first flight.
    pub async fn send_request(
        &self,
        req: http::Request<()>,
    ) -> Result<(SendBody, ResponseFuture), ClientError> {
        let (host, port) = target(req.uri())?;
        let key = format!("{host}:{port}");
        let mut pool = self.inner.pool.lock().await;
        if let Some(p) = pool.get(&key) {
            if !p.handle.is_closed() && !p.send.is_draining() {
                let send = p.send.clone();
                drop(pool);
                return Ok(send.send_request(req).await?);
            }
            self.inner.keep_session(&key, p);
        }
        // Connecting holds the pool's lock: concurrent requests to the same authority
        // wait for this connection and share it.
        let addr = resolve(&host, port).await?;
        let mut params = ClientParams::new(&[quic_h3::ALPN]);
        params.tls = self.inner.tls.clone();
        params.settings = self.inner.settings.clone();
        params.server_name = host.parse::<IpAddr>().is_err().then(|| host.clone());
        params.session = self.inner.session(&key);
        let (driver, send) = ClientH3Driver::new(self.inner.h3.clone());
        // The driver is not running yet, and its queue has room: this returns at once.
        let started = send.send_request(req).await?;
        let handle = quic_io::connect(addr, params, driver).await?;
        pool.insert(key, Pooled { send, handle });
        Ok(started)
    }

    async fn forget(&self, uri: &Uri) {
        if let Ok((host, port)) = target(uri) {
            let key = format!("{host}:{port}");
            if let Some(p) = self.inner.pool.lock().await.remove(&key) {
                self.inner.keep_session(&key, &p);
            }
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
