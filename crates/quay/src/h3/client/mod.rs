use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use quic_h3::{
    ClientH3Driver, H3Settings, RecvBody, ResponseFuture, SendBody, SendRequest, StreamError,
};
use quic_io::{ClientParams, ClientTlsConfig, ConnectionHandle, QuicSettings};
use tokio::task::JoinSet;
use tracing::Instrument;

mod error;
pub use error::{ClientError, ResponseExt};

/// Which redirects [`Client::request`] follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectPolicy {
    max: usize,
}

impl RedirectPolicy {
    /// Follows none: a 3xx response is returned as it is.
    pub fn none() -> Self {
        Self { max: 0 }
    }

    /// Follows up to `max` redirects in a row, then fails with
    /// [`ClientError::Redirect`].
    pub fn limited(max: usize) -> Self {
        Self { max }
    }
}

impl Default for RedirectPolicy {
    /// Up to 10, like reqwest and browsers.
    fn default() -> Self {
        Self::limited(10)
    }
}

/// Builds a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    tls: ClientTlsConfig,
    tls_given: bool,
    built_in_roots: Option<bool>,
    settings: QuicSettings,
    h3: H3Settings,
    early_data: bool,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    default_headers: HeaderMap,
    redirect: RedirectPolicy,
    resolve: HashMap<String, Vec<SocketAddr>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            tls: ClientTlsConfig::new(),
            tls_given: false,
            built_in_roots: None,
            settings: QuicSettings::default(),
            h3: H3Settings::default(),
            early_data: false,
            connect_timeout: None,
            timeout: None,
            read_timeout: None,
            default_headers: HeaderMap::new(),
            redirect: RedirectPolicy::default(),
            resolve: HashMap::new(),
        }
    }
}

impl ClientBuilder {
    /// Also trusts the certificates in this PEM text, besides the built-in (system)
    /// roots; [`tls_built_in_root_certs(false)`](Self::tls_built_in_root_certs) turns
    /// those off.
    pub fn add_root_certificate_pem(mut self, pem: &[u8]) -> Result<Self, ClientError> {
        self.tls = self.tls.add_root_pem(pem)?;
        Ok(self)
    }

    /// Also trusts this DER certificate, besides the built-in roots.
    pub fn add_root_certificate_der(mut self, der: &[u8]) -> Result<Self, ClientError> {
        self.tls = self.tls.add_root_der(der)?;
        Ok(self)
    }

    /// Whether to trust the system's roots (default: yes).
    pub fn tls_built_in_root_certs(mut self, yes: bool) -> Self {
        self.built_in_roots = Some(yes);
        self
    }

    /// Turns certificate verification off. Anyone on the path can then impersonate
    /// the server; the client logs a warning on every connection.
    pub fn insecure(mut self) -> Self {
        self.tls = ClientTlsConfig::insecure();
        self
    }

    /// The whole TLS configuration: roots, verification, client identity. Replaces
    /// what earlier calls set; its system-roots choice stands unless
    /// [`tls_built_in_root_certs`](Self::tls_built_in_root_certs) is called after.
    pub fn tls(mut self, tls: ClientTlsConfig) -> Self {
        self.tls = tls;
        self.tls_given = true;
        self.built_in_roots = None;
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

    /// How long connecting may take, every address tried included (default: only
    /// the handshake timeout of [`QuicSettings`], per address).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a request made with [`Client::request`] (or `get`, `post`) may take
    /// as a whole: connecting, sending, and reading the response body to its end
    /// (default: no limit). The body then fails with [`StreamError::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long to wait for the response head, and then for each chunk of the body
    /// (default: no limit). The body then fails with [`StreamError::ReadTimeout`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Headers added to every request that does not set them itself.
    pub fn default_headers(mut self, headers: HeaderMap) -> Self {
        self.default_headers = headers;
        self
    }

    /// Which redirects [`Client::request`] follows (default: up to 10). A redirect
    /// away from https is never followed.
    pub fn redirect(mut self, policy: RedirectPolicy) -> Self {
        self.redirect = policy;
        self
    }

    /// Connects to `addrs` for `host` instead of resolving it (every port but the
    /// one in each address is ignored: the request's port is used).
    pub fn resolve_to_addrs(mut self, host: &str, addrs: &[SocketAddr]) -> Self {
        self.resolve
            .insert(host.to_ascii_lowercase(), addrs.to_vec());
        self
    }

    /// The client.
    pub fn build(mut self) -> Client {
        if self.early_data {
            self.settings.enable_early_data = true;
        }
        let tls = match self.built_in_roots {
            Some(yes) => self.tls.with_system_roots(yes),
            None if self.tls_given => self.tls,
            None => self.tls.with_system_roots(true),
        };
        Client {
            inner: Arc::new(Inner {
                tls,
                settings: self.settings,
                h3: self.h3,
                connect_timeout: self.connect_timeout,
                timeout: self.timeout,
                read_timeout: self.read_timeout,
                default_headers: self.default_headers,
                redirect: self.redirect,
                resolve: self.resolve,
                pool: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
            }),
        }
    }
}

/// An HTTP/3 client: verifies certificates by default and keeps one connection per
/// authority, reused by every request to it. When a connection ends, the next one to
/// the same authority resumes its TLS session (and, with
/// [`enable_0rtt`](ClientBuilder::enable_0rtt), sends safe requests in 0-RTT). Cheap
/// to clone.
///
/// Connecting to one authority never holds up requests to another; concurrent
/// requests to an authority with no connection share one handshake (and its failure).
/// Every resolved address is tried, IPv6 and IPv4 alternating, each 250 ms after the
/// one before unless it failed sooner (Happy Eyeballs, RFC 8305); the first to
/// complete its handshake is kept.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tls: ClientTlsConfig,
    settings: QuicSettings,
    h3: H3Settings,
    connect_timeout: Option<Duration>,
    timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    default_headers: HeaderMap,
    redirect: RedirectPolicy,
    resolve: HashMap<String, Vec<SocketAddr>>,
    /// One entry per authority (`host:port`); the map's lock is never held across an
    /// await.
    pool: Mutex<HashMap<String, Arc<Authority>>>,
    /// The latest session ticket per authority, from connections no longer pooled.
    sessions: Mutex<HashMap<String, Vec<u8>>>,
}

/// An authority's connection, and the outcome of the last attempt to make one.
#[derive(Debug, Default)]
struct Authority {
    /// Held while connecting: requests to the same authority wait and share.
    conn: tokio::sync::Mutex<Option<Pooled>>,
    /// Connection attempts started.
    attempts: AtomicU64,
    /// The last attempt that failed: its number and error.
    failed: Mutex<Option<(u64, ClientError)>>,
    /// The address the last connection used (0-RTT goes there first).
    last_addr: Mutex<Option<SocketAddr>>,
}

/// The time between starting connection attempts to successive addresses
/// (RFC 8305 §5 recommends 250 ms).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

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

    fn authority(&self, key: &str) -> Arc<Authority> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(pool.entry(key.to_owned()).or_default())
    }
}

/// What was started on a connection: a request, or an extended CONNECT stream.
enum Started {
    Request(SendBody, ResponseFuture),
    Connect(quic_h3::ConnectStream),
}

impl Started {
    async fn on(
        send: &SendRequest,
        req: http::Request<()>,
        extended: bool,
    ) -> Result<Self, StreamError> {
        Ok(if extended {
            Self::Connect(send.send_connect(req).await?)
        } else {
            let (body, response) = send.send_request(req).await?;
            Self::Request(body, response)
        })
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

    /// Sends a request with a complete body and returns the response, its body
    /// streaming. The response's extensions hold the
    /// [`ConnectionInfo`](quic_app::ConnectionInfo) of the connection it came on
    /// (server address, ALPN, whether the session was resumed, the server's
    /// certificates, handshake time), and its
    /// [`ConnectionHandle`](quic_io::ConnectionHandle) (its counters; `migrate` to move
    /// it to a new local socket).
    ///
    /// The default headers are added, redirects followed as the policy says, and the
    /// client's timeouts apply (the request timeout to the body too). A request the
    /// server refused before processing it (GOAWAY, H3_REQUEST_REJECTED) is sent once
    /// more on a new connection: its body is in memory, so that is safe.
    pub async fn request(
        &self,
        req: http::Request<Bytes>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        let span = tracing::info_span!(
            "h3_request",
            method = %req.method(),
            uri = %req.uri(),
            status = tracing::field::Empty,
        );
        let deadline = self.inner.timeout.map(|t| tokio::time::Instant::now() + t);
        let work = async {
            let mut req = req;
            let mut redirects = 0;
            loop {
                self.add_default_headers(req.headers_mut());
                let resp = self.request_retrying(req.clone(), deadline).await?;
                match self.redirect_of(&req, &resp, &mut redirects)? {
                    Some(next) => req = next,
                    None => {
                        tracing::Span::current().record("status", resp.status().as_u16());
                        return Ok(resp);
                    }
                }
            }
        };
        let started = std::time::Instant::now();
        let result = work.instrument(span).await;
        #[cfg(feature = "metrics")]
        crate::metrics::client_request(result.as_ref().map(|r| r.status()).ok(), started);
        let _ = started;
        result
    }

    fn add_default_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.inner.default_headers {
            if !headers.contains_key(name) {
                headers.insert(name, value.clone());
            }
        }
    }

    /// The request a redirect response asks for, if the policy follows it.
    fn redirect_of(
        &self,
        req: &http::Request<Bytes>,
        resp: &http::Response<RecvBody>,
        redirects: &mut usize,
    ) -> Result<Option<http::Request<Bytes>>, ClientError> {
        let status = resp.status();
        if !matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308) || self.inner.redirect.max == 0 {
            return Ok(None);
        }
        let Some(location) = resp.headers().get(http::header::LOCATION) else {
            return Ok(None);
        };
        *redirects += 1;
        if *redirects > self.inner.redirect.max {
            return Err(ClientError::Redirect(format!(
                "more than {} redirects",
                self.inner.redirect.max
            )));
        }
        let location = location
            .to_str()
            .map_err(|_| ClientError::Redirect("a Location that is not text".into()))?;
        let next = join(req.uri(), location)?;
        if next.scheme_str() != Some("https") {
            return Err(ClientError::Redirect(format!(
                "refusing to leave https for {next}"
            )));
        }
        let mut builder = http::Request::builder().uri(next.clone());
        let (method, body) = match status {
            StatusCode::SEE_OTHER => (Method::GET, Bytes::new()),
            StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND if req.method() == Method::POST => {
                (Method::GET, Bytes::new())
            }
            _ => (req.method().clone(), req.body().clone()),
        };
        let same_authority = next.authority() == req.uri().authority();
        for (name, value) in req.headers() {
            let dropped_with_body = body.is_empty()
                && (name == http::header::CONTENT_TYPE || name == http::header::CONTENT_LENGTH);
            let sensitive = name == http::header::AUTHORIZATION
                || name == http::header::COOKIE
                || name == http::header::PROXY_AUTHORIZATION;
            if dropped_with_body || (sensitive && !same_authority) {
                continue;
            }
            builder = builder.header(name, value);
        }
        let next_req = builder
            .method(method)
            .body(body)
            .map_err(|e| ClientError::Redirect(e.to_string()))?;
        tracing::debug!(%status, to = %next, "following a redirect");
        Ok(Some(next_req))
    }

    async fn request_retrying(
        &self,
        req: http::Request<Bytes>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        match self.request_once(req.clone(), deadline).await {
            Err(ClientError::Stream(e)) if e.is_retryable() => {
                tracing::debug!("request refused before processing; sending it again");
                self.forget(req.uri()).await;
                self.request_once(req, deadline).await
            }
            other => other,
        }
    }

    async fn request_once(
        &self,
        req: http::Request<Bytes>,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<http::Response<RecvBody>, ClientError> {
        let exchange = async {
            let (parts, body) = req.into_parts();
            let (mut sender, response, handle) = self
                .start_request(http::Request::from_parts(parts, ()))
                .await?;
            let sent = async {
                let uploaded = async {
                    sender.send_data(body).await?;
                    sender.finish().await
                };
                if uploaded.await.is_err() {
                    // The stream ended before the body went out; the response says
                    // why: a refusal (safe to retry), a reset, or an early answer.
                    return response.await;
                }
                match self.inner.read_timeout {
                    Some(t) => tokio::time::timeout(t, response)
                        .await
                        .map_err(|_| StreamError::ReadTimeout)?,
                    None => response.await,
                }
            };
            let mut head = match sent.await {
                Ok(head) => head,
                Err(e) => return Err(closed_error(&handle, e).await),
            };
            if let Some(info) = handle.handshake_info() {
                head.extensions_mut()
                    .insert(quic_app::ConnectionInfo::new(Arc::new(info)));
            }
            head.extensions_mut().insert(handle.clone());
            Ok::<_, ClientError>(head)
        };
        let mut resp = match deadline {
            Some(at) => tokio::time::timeout_at(at, exchange).await.map_err(|_| {
                ClientError::Timeout {
                    after: self.inner.timeout.unwrap_or_default(),
                }
            })??,
            None => exchange.await?,
        };
        if let Some(at) = deadline {
            resp.body_mut().set_deadline(at);
        }
        if let Some(t) = self.inner.read_timeout {
            resp.body_mut().set_read_timeout(t);
        }
        Ok(resp)
    }

    /// Starts a request whose body is streamed through the returned [`SendBody`]: an
    /// upload of any size. Default headers are added; redirects are not followed and
    /// the request is not sent again if the server refuses it (its body is gone), the
    /// error then says so ([`StreamError::is_retryable`]). The connect timeout
    /// applies; the request and read timeouts do not (wrap the futures in
    /// `tokio::time::timeout`).
    ///
    /// On a new connection the request is queued before the handshake starts, so a
    /// resumed connection with 0-RTT carries it in its first flight.
    pub async fn send_request(
        &self,
        req: http::Request<()>,
    ) -> Result<(SendBody, ResponseFuture), ClientError> {
        let (body, response, _) = self.start_request(req).await?;
        Ok((body, response))
    }

    /// Opens an extended CONNECT stream (RFC 9220): `req` is a CONNECT request with a
    /// [`Protocol`](quic_h3::Protocol) extension (`connect-udp`, say). Returns once the
    /// stream is open: the body sent, the response to come, and the stream's HTTP
    /// Datagrams. [`DatagramTunnel`](quic_h3::DatagramTunnel) joins the three into
    /// one channel of HTTP Datagrams (in QUIC DATAGRAM frames when both sides enable
    /// them: [`QuicSettings::enable_datagrams`](quic_io::QuicSettings), else in
    /// capsules on the stream).
    ///
    /// Default headers are added; no redirect, retry or timeout but the connect
    /// timeout applies. A server that did not enable extended CONNECT fails it with
    /// [`StreamError::Unsupported`].
    pub async fn send_connect(
        &self,
        req: http::Request<()>,
    ) -> Result<quic_h3::ConnectStream, ClientError> {
        match self.start(req, true).await? {
            (Started::Connect(stream), _) => Ok(stream),
            (Started::Request(..), _) => unreachable!("a CONNECT was asked for"),
        }
    }

    /// [`send_request`](Self::send_request), and the connection it went on.
    async fn start_request(
        &self,
        req: http::Request<()>,
    ) -> Result<(SendBody, ResponseFuture, ConnectionHandle), ClientError> {
        match self.start(req, false).await? {
            (Started::Request(body, response), handle) => Ok((body, response, handle)),
            (Started::Connect(_), _) => unreachable!("a request was asked for"),
        }
    }

    /// Starts `req` (an extended CONNECT if `extended`) on the pooled connection to
    /// its authority, or a new one.
    async fn start(
        &self,
        mut req: http::Request<()>,
        extended: bool,
    ) -> Result<(Started, ConnectionHandle), ClientError> {
        self.add_default_headers(req.headers_mut());
        let (host, port) = target(req.uri())?;
        let key = format!("{host}:{port}");
        let authority = self.inner.authority(&key);
        let seen = authority.attempts.load(Ordering::Acquire);
        let mut slot = authority.conn.lock().await;
        if let Some(p) = slot.as_ref() {
            if !p.handle.is_closed() && !p.send.is_draining() {
                let Pooled { send, handle } = p.clone();
                drop(slot);
                let started = Started::on(&send, req, extended).await?;
                return Ok((started, handle));
            }
            self.inner.keep_session(&key, p);
            *slot = None;
        }
        // An attempt that started while this request waited has failed: its error is
        // this request's too, rather than one more wait of the same length.
        let failed = authority
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((attempt, e)) = failed
            && attempt > seen
        {
            return Err(e);
        }
        let attempt = authority.attempts.fetch_add(1, Ordering::AcqRel) + 1;
        let connecting = self.connect(&host, port, &key, &authority, req, extended);
        let result = match self.inner.connect_timeout {
            Some(t) => tokio::time::timeout(t, connecting)
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::ConnectTimeout {
                        authority: key.clone(),
                        after: t,
                    })
                }),
            None => connecting.await,
        };
        match result {
            Ok((pooled, started)) => {
                let handle = pooled.handle.clone();
                *slot = Some(pooled);
                Ok((started, handle))
            }
            Err(e) => {
                *authority.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((attempt, e.clone()));
                Err(e)
            }
        }
    }

    /// Makes a connection to `host:port` and starts `req` on it.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        key: &str,
        authority: &Authority,
        req: http::Request<()>,
        extended: bool,
    ) -> Result<(Pooled, Started), ClientError> {
        let mut addrs = self.resolve(host, port).await?;
        let mut params = ClientParams::new(&[quic_h3::ALPN]);
        params.tls = self.inner.tls.clone();
        params.settings = self.inner.settings.clone();
        params.server_name = host.parse::<IpAddr>().is_err().then(|| host.to_owned());
        params.session = self.inner.session(key);
        let last = *authority
            .last_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let early = params.settings.enable_early_data && params.session.is_some();
        if early && let Some(last) = last.filter(|a| addrs.contains(a)) {
            // 0-RTT: to the address the session came from, the request in the first
            // flight.
            addrs = vec![last];
        }
        let (pooled, started) = if addrs.len() == 1 && !extended {
            let (driver, send) = ClientH3Driver::new(self.inner.h3.clone());
            // The driver is not running yet and its queue has room: this returns at
            // once, and the request leaves with the handshake.
            let (body, response) = send.send_request(req).await?;
            let handle = quic_io::connect(addrs[0], params, driver).await?;
            (Pooled { send, handle }, Started::Request(body, response))
        } else {
            // An extended CONNECT waits for the server's SETTINGS, which only a
            // running connection receives.
            let pooled = if addrs.len() == 1 {
                let (driver, send) = ClientH3Driver::new(self.inner.h3.clone());
                let handle = quic_io::connect(addrs[0], params, driver).await?;
                Pooled { send, handle }
            } else {
                self.race(addrs, params).await?
            };
            let started = Started::on(&pooled.send, req, extended).await?;
            (pooled, started)
        };
        *authority
            .last_addr
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(pooled.handle.peer_addr());
        Ok((pooled, started))
    }

    /// Connects to the first of `addrs` to complete a handshake, starting a new
    /// attempt every [`ATTEMPT_DELAY`] (or as soon as one fails); the losers are
    /// stopped.
    async fn race(
        &self,
        addrs: Vec<SocketAddr>,
        params: ClientParams,
    ) -> Result<Pooled, ClientError> {
        let mut attempts = JoinSet::new();
        let mut pending = addrs.into_iter();
        let mut first_error: Option<ClientError> = None;
        let start = |attempts: &mut JoinSet<_>, addr: SocketAddr| {
            let (driver, send) = ClientH3Driver::new(self.inner.h3.clone());
            let params = params.clone();
            attempts.spawn(async move {
                quic_io::connect(addr, params, driver)
                    .await
                    .map(|handle| Pooled { send, handle })
            });
        };
        if let Some(addr) = pending.next() {
            start(&mut attempts, addr);
        }
        loop {
            let more = pending.len() > 0;
            tokio::select! {
                joined = attempts.join_next() => match joined {
                    Some(Ok(Ok(pooled))) => {
                        // The others are dropped with the set: their attempts stop.
                        attempts.abort_all();
                        while let Some(other) = attempts.join_next().await {
                            if let Ok(Ok(late)) = other {
                                late.handle.close(0, b"another address won").await;
                            }
                        }
                        return Ok(pooled);
                    }
                    Some(Ok(Err(e))) => {
                        tracing::debug!(error = %e, "connection attempt failed");
                        first_error.get_or_insert(e.into());
                        match pending.next() {
                            Some(addr) => start(&mut attempts, addr),
                            None if attempts.is_empty() => break,
                            None => {}
                        }
                    }
                    Some(Err(e)) => {
                        first_error.get_or_insert(ClientError::Stream(StreamError::Cancelled));
                        tracing::warn!(error = %e, "connection attempt task failed");
                        if pending.len() == 0 && attempts.is_empty() {
                            break;
                        }
                    }
                    None => {
                        match pending.next() {
                            Some(addr) => start(&mut attempts, addr),
                            None => break,
                        }
                    }
                },
                () = tokio::time::sleep(ATTEMPT_DELAY), if more => {
                    if let Some(addr) = pending.next() {
                        start(&mut attempts, addr);
                    }
                }
            }
        }
        Err(first_error.unwrap_or_else(|| ClientError::InvalidUri("no address".into())))
    }

    /// Every address of `host`, IPv6 and IPv4 alternating (starting with the family
    /// of the first), as RFC 8305 §4 orders them.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ClientError> {
        let addrs: Vec<SocketAddr> = match self.inner.resolve.get(&host.to_ascii_lowercase()) {
            Some(given) => given
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect(),
            None => match host.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| ClientError::Resolve {
                        host: host.to_owned(),
                        source: Arc::new(e),
                    })?
                    .collect(),
            },
        };
        if addrs.is_empty() {
            return Err(ClientError::Resolve {
                host: host.to_owned(),
                source: Arc::new(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no address",
                )),
            });
        }
        Ok(interleave(addrs))
    }

    async fn forget(&self, uri: &Uri) {
        if let Ok((host, port)) = target(uri) {
            let key = format!("{host}:{port}");
            let authority = self.inner.authority(&key);
            if let Some(p) = authority.conn.lock().await.take() {
                self.inner.keep_session(&key, &p);
            }
        }
    }
}

/// `e`, or what closed the connection when that explains it better: a TLS alert (a
/// client certificate the server refused, say) or a refusal.
async fn closed_error(handle: &ConnectionHandle, e: StreamError) -> ClientError {
    if matches!(e, StreamError::Cancelled | StreamError::ConnectionClosed) {
        // The streams end as the connection closes; its reason follows at once.
        let closed = tokio::time::timeout(Duration::from_millis(200), handle.closed()).await;
        if let Some(err) = closed
            .ok()
            .and_then(|c| c.handshake_error(handle.peer_addr()))
        {
            return err.into();
        }
    }
    e.into()
}

/// `addrs` with the families alternating, the first address's family first, each
/// family in its resolved order.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs[0].is_ipv6();
    let (mut first, mut second): (Vec<_>, Vec<_>) =
        addrs.into_iter().partition(|a| a.is_ipv6() == first_v6);
    first.dedup();
    second.dedup();
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut a, mut b) = (first.into_iter(), second.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// `location` resolved against `base` (RFC 3986 §5.2, for the forms servers send:
/// absolute, scheme-relative, absolute path, relative path).
fn join(base: &Uri, location: &str) -> Result<Uri, ClientError> {
    let bad = || ClientError::Redirect(format!("unusable Location {location:?}"));
    if location.contains("://") {
        return location.parse().map_err(|_| bad());
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let joined = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    joined.parse().map_err(|_| bad())
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
