use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as HttpBody;
use quic_h3::{H3Code, H3Settings, RecvBody, ServerH3Driver};
use quic_io::{
    AcceptError, IncomingConnection, ListenError, Listener, QuicSettings, ServerParams, Sharding,
    TlsConfig,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::dispatch::ServeService;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The server was built without a TLS identity.
    #[error("no TLS identity: call ServerBuilder::tls")]
    NoTls,
    /// Binding or setting up the listener failed.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// The listener failed while serving (its socket, or its router task); the
    /// connections it carried were stopped.
    #[error(transparent)]
    Accept(#[from] AcceptError),
    /// [`ServerBuilder::bind_all`] was given no address.
    #[error("no address to listen on")]
    NoAddress,
    /// [`ServerBuilder::bind_socket`] was asked for shards: a sharded listener binds
    /// its sockets itself.
    #[error("a sharded server binds its own sockets: use bind or bind_all")]
    ShardedSocket,
}

/// Adjusts a listener's parameters before it binds.
type Configure = Box<dyn FnOnce(&mut ServerParams) + Send>;

/// Builds a [`Server`]: TLS identity, settings, address.
pub struct ServerBuilder {
    tls: Option<TlsConfig>,
    settings: QuicSettings,
    h3: H3Settings,
    sharding: Sharding,
    configure: Vec<Configure>,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self {
            tls: None,
            settings: QuicSettings::default(),
            h3: H3Settings::default(),
            sharding: Sharding::new(1),
            configure: Vec::new(),
        }
    }
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("settings", &self.settings)
            .field("h3", &self.h3)
            .field("sharding", &self.sharding)
            .field("configure", &self.configure.len())
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// The server's certificate chain and key.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// QUIC transport settings.
    pub fn settings(mut self, settings: QuicSettings) -> Self {
        self.settings = settings;
        self
    }

    /// HTTP/3 settings and limits.
    pub fn h3_settings(mut self, h3: H3Settings) -> Self {
        self.h3 = h3;
        self
    }

    /// Listens on each address with `shards` sockets, each read by a router task of its
    /// own, to spread a busy server's receive work over cores (Linux; 1..=32, default
    /// 1). See [`quic_io::listen_sharded`]: connection IDs carry the shard number, and
    /// the kernel steers datagrams to it.
    pub fn shards(mut self, shards: usize) -> Self {
        self.sharding = Sharding::new(shards);
        self
    }

    /// Sharding in full: shards and kernel steering.
    pub fn sharding(mut self, sharding: Sharding) -> Self {
        self.sharding = sharding;
        self
    }

    /// Adjusts the listener's parameters (limits, Retry, metrics) before binding;
    /// several calls apply in order.
    pub fn configure(mut self, f: impl FnOnce(&mut ServerParams) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Binds `addr` and starts listening. Must be called within a tokio runtime.
    ///
    /// An IPv6 wildcard (`[::]:PORT`) is a dual-stack socket: it also takes IPv4
    /// clients, where the system allows it.
    pub fn bind(self, addr: SocketAddr) -> Result<Server, ServeError> {
        self.bind_all([addr])
    }

    /// Binds every address of `addrs` and serves them all as one server (one
    /// router task per socket): `127.0.0.1:443` and `[::1]:443`, say. Must be called
    /// within a tokio runtime. Fails, binding nothing, if any address fails.
    pub fn bind_all(
        self,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Server, ServeError> {
        let sharding = self.sharding;
        let (params, h3) = self.params()?;
        let listeners = addrs
            .into_iter()
            .map(|addr| quic_io::listen_sharded(addr, sharding, params.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        if listeners.is_empty() {
            return Err(ServeError::NoAddress);
        }
        Ok(Server::new(listeners, h3))
    }

    /// Listens on a UDP socket bound elsewhere (handed over by a service manager, or
    /// bound with options of the caller's). Must be called within a tokio runtime.
    /// Fails with [`ServeError::ShardedSocket`] when [`shards`](Self::shards) asked for
    /// more than one.
    pub fn bind_socket(self, socket: std::net::UdpSocket) -> Result<Server, ServeError> {
        if self.sharding.shards > 1 {
            return Err(ServeError::ShardedSocket);
        }
        let (params, h3) = self.params()?;
        let listener = quic_io::listen(socket, params)?;
        Ok(Server::new(vec![listener], h3))
    }

    /// The listener's parameters, configured, and the HTTP/3 settings.
    fn params(self) -> Result<(ServerParams, H3Settings), ServeError> {
        let tls = self.tls.ok_or(ServeError::NoTls)?;
        let mut params = ServerParams::new(tls, &[quic_h3::ALPN]);
        params.settings = self.settings;
        #[cfg(feature = "metrics")]
        {
            params.metrics = std::sync::Arc::new(crate::metrics::TransportMetrics);
        }
        for f in self.configure {
            f(&mut params);
        }
        if params.settings.max_streams_bidi > self.h3.max_pending_requests as u64 {
            tracing::warn!(
                max_streams_bidi = params.settings.max_streams_bidi,
                max_pending_requests = self.h3.max_pending_requests,
                "a client may open more request streams than a connection runs handlers: \
                 requests past max_pending_requests are refused (H3_REQUEST_REJECTED) \
                 rather than held back by the stream limit"
            );
        }
        Ok((params, self.h3))
    }
}

/// An HTTP/3 server: every request goes to one handler function, or to a tower
/// `Service` such as an axum `Router`.
///
/// ```no_run
/// use quay::h3::{Body, Server};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let identity = quay::io::TlsConfig::self_signed(&["localhost"])?;
/// let server = Server::builder().tls(identity.config).bind("127.0.0.1:4433".parse()?)?;
/// server
///     .serve(|_req: http::Request<quay::h3::RecvBody>| async move {
///         Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("hello")))
///     })
///     .await?;
/// # Ok(()) }
/// ```
///
/// Every request carries the [`ConnectionInfo`](crate::h3::ConnectionInfo) of its
/// connection in its extensions, and is handled inside a `request` tracing span (a
/// child of its connection's `quic_conn` span) that records the method, path, status
/// and duration.
pub struct Server {
    listeners: Vec<Listener>,
    h3: H3Settings,
    shutdown: Option<Shutdown>,
}

/// When a server stops accepting and drains, and how long the drain may take.
struct Shutdown {
    token: CancellationToken,
    /// Cancels `token` when it completes.
    signal: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    deadline: Duration,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addrs", &self.local_addrs())
            .field("h3", &self.h3)
            .field("graceful_shutdown", &self.shutdown.is_some())
            .finish()
    }
}

impl Server {
    fn new(listeners: Vec<Listener>, h3: H3Settings) -> Self {
        Self {
            listeners,
            h3,
            shutdown: None,
        }
    }

    /// A builder with default settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The bound address (the first one, when the server listens on several).
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners[0].local_addr()
    }

    /// Every bound address, in the order they were bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// A handle that reads the listener's tables (connections, routes, sources) while
    /// the server runs (the first listener's, when there are several).
    pub fn stats_handle(&self) -> quic_io::StatsHandle {
        self.listeners[0].stats_handle()
    }

    /// A handle that replaces the server's TLS identity while it runs (on every
    /// socket): new connections get the new certificate; established ones keep theirs.
    pub fn tls_reloader(&self) -> TlsReloader {
        TlsReloader {
            inner: self.listeners.iter().map(Listener::tls_reloader).collect(),
        }
    }

    /// Drains gracefully once `signal` completes (a Ctrl-C future, a oneshot
    /// receiver, ...), like axum's `with_graceful_shutdown`: stops accepting, sends
    /// GOAWAY on every connection, lets requests in flight finish for up to
    /// `deadline`, and closes what is left. Applies to [`serve`](Self::serve) and
    /// [`serve_service`](Self::serve_service).
    pub fn with_graceful_shutdown(
        mut self,
        signal: impl Future<Output = ()> + Send + 'static,
        deadline: Duration,
    ) -> Self {
        self.shutdown = Some(Shutdown {
            token: CancellationToken::new(),
            signal: Some(Box::pin(signal)),
            deadline,
        });
        self
    }

    /// Drains gracefully, as [`with_graceful_shutdown`](Self::with_graceful_shutdown)
    /// does, once `token` is cancelled.
    pub fn with_shutdown_token(mut self, token: CancellationToken, deadline: Duration) -> Self {
        self.shutdown = Some(Shutdown {
            token,
            signal: None,
            deadline,
        });
        self
    }

    /// Serves every request with `handler` until the listener stops (or the shutdown
    /// set with [`with_graceful_shutdown`](Self::with_graceful_shutdown) drains it);
    /// an error if it failed.
    ///
    /// A request's handler takes its first step in its connection's task, as the
    /// request's head arrives: one that answers without waiting (its body, if any,
    /// came with the head) needs no task of its own, and its answer leaves with the
    /// acknowledgement of the request. A handler that waits goes on in a task of its
    /// own. So work that holds the thread for long belongs after an await, or in
    /// `tokio::task::spawn_blocking`: before it, it holds up the connection's other
    /// requests, and a blocking wait there for something of the same connection (its
    /// own body read with `futures::executor::block_on`, say) never ends. A handler
    /// that panics fails its own request only (its stream is reset with
    /// H3_REQUEST_CANCELLED).
    ///
    /// A response without a `content-length` gets one when its size is known: a body
    /// complete at its first frame its length, a longer one the exact size its
    /// `size_hint` states, which it must then keep to (more or fewer bytes reset the
    /// stream); not after HEAD or CONNECT, nor with 204 or 304
    /// ([`Responder::send_body_response`](quic_h3::Responder::send_body_response)).
    pub async fn serve<H: Handler>(self, handler: H) -> Result<(), ServeError> {
        self.run(HandlerService(handler)).await
    }

    /// Serves every request with a tower `Service`: an axum `Router` as it is, or any
    /// `Service<http::Request<RecvBody>>` that is `Clone + Send` and answers with an
    /// `http::Response` whose body yields data convertible to `Bytes`.
    ///
    /// Each request goes to a clone of the service, which is polled for readiness
    /// first, in the connection's task as [`serve`](Self::serve) describes. An error
    /// from the service is logged and answered with 500; an error from a response
    /// body resets the stream.
    ///
    /// ```no_run
    /// use axum::{Extension, Router, routing::get};
    /// use quay::h3::{ConnectionInfo, Server};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let app = Router::new().route(
    ///     "/whoami",
    ///     get(|Extension(conn): Extension<ConnectionInfo>| async move {
    ///         format!("{} over HTTP/3\n", conn.peer_addr())
    ///     }),
    /// );
    /// let identity = quay::io::TlsConfig::from_pem_files("cert.pem", "key.pem")?;
    /// Server::builder()
    ///     .tls(identity)
    ///     .bind("[::]:443".parse()?)?
    ///     .serve_service(app)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tower")]
    pub async fn serve_service<S, B>(self, service: S) -> Result<(), ServeError>
    where
        S: tower_service::Service<http::Request<RecvBody>, Response = http::Response<B>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: HttpBody + Send + 'static,
        B::Data: Into<Bytes>,
        B::Error: Into<BoxError>,
    {
        self.run(service).await
    }

    /// Serves until `signal` completes, then drains; the same as
    /// `self.with_graceful_shutdown(signal, deadline).serve(handler)`.
    pub async fn serve_with_graceful_shutdown<H: Handler>(
        self,
        handler: H,
        signal: impl Future<Output = ()> + Send + 'static,
        deadline: Duration,
    ) -> Result<(), ServeError> {
        self.with_graceful_shutdown(signal, deadline)
            .serve(handler)
            .await
    }

    /// Serves until `shutdown` is cancelled, then drains gracefully; the same as
    /// `self.with_shutdown_token(shutdown, deadline).serve(handler)`.
    pub async fn serve_with_shutdown<H: Handler>(
        self,
        handler: H,
        shutdown: CancellationToken,
        deadline: Duration,
    ) -> Result<(), ServeError> {
        self.with_shutdown_token(shutdown, deadline)
            .serve(handler)
            .await
    }

    /// The accept loop, run as a task of the runtime whichever thread polls this
    /// future (often `main`, outside the runtime's workers), so that accepting and
    /// reaping connections never wakes a thread of its own. Dropping the future stops
    /// the server: the task is aborted with it.
    async fn run<S: ServeService>(self, service: S) -> Result<(), ServeError> {
        let Server {
            mut listeners,
            h3,
            shutdown,
        } = self;
        let (shutdown, signal, deadline) = match shutdown {
            Some(s) => (s.token, s.signal, s.deadline),
            None => (CancellationToken::new(), None, Duration::ZERO),
        };
        let watch = signal.map(|signal| {
            let stop = shutdown.clone();
            AbortOnDrop(tokio::spawn(async move {
                signal.await;
                stop.cancel();
            }))
        });
        let spares = super::dispatch::ServiceSpares::<S>::new();
        let accept_loop = async move {
            let mut connections = JoinSet::new();
            let mut failure = None;
            let mut next = 0;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    incoming = std::future::poll_fn(|cx| accept_any(&mut listeners, &mut next, cx)) => {
                        let incoming = match incoming {
                            Ok(incoming) => incoming,
                            Err(AcceptError::Stopped) => break,
                            Err(e) => {
                                tracing::error!(error = %e, "listener failed");
                                failure = Some(e);
                                // Its connections are gone: no drain to wait for.
                                shutdown.cancel();
                                break;
                            }
                        };
                        let tasks = super::in_flight::InFlight::new();
                        let dispatcher = super::dispatch::dispatcher(
                            service.clone(),
                            tasks.spawner(),
                            h3.max_pending_requests.max(1),
                            spares.clone(),
                        );
                        let (driver, control) = ServerH3Driver::with_dispatch(h3.clone(), dispatcher);
                        let handle = incoming.start(driver);
                        let stop = shutdown.clone();
                        connections.spawn(async move {
                            let opened = crate::observe::ConnectionOpened::new();
                            let closed = tokio::select! {
                                closed = handle.closed() => closed,
                                () = stop.cancelled() => {
                                    control.goaway().await;
                                    handle.closed().await
                                }
                            };
                            tasks.wait().await;
                            opened.closed(&closed);
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            // Drain: every connection got GOAWAY from its task (the token is cancelled).
            let drained = tokio::time::timeout(deadline, async {
                while connections.join_next().await.is_some() {}
            })
            .await
            .is_ok();
            if !drained {
                tracing::warn!(
                    open = connections.len(),
                    "requests still in flight at the shutdown deadline"
                );
            }
            let closes = listeners.into_iter().map(|listener| {
                listener.shutdown(
                    H3Code::NO_ERROR.0,
                    b"server shutting down",
                    Duration::from_secs(1),
                )
            });
            for close in closes {
                close.await;
            }
            match failure {
                Some(e) => Err(ServeError::Accept(e)),
                None => Ok(()),
            }
        };
        let mut task = AbortOnDrop(tokio::spawn(accept_loop));
        let result = match (&mut task.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Aborted: only when this future is dropped, so never seen here.
            Err(_) => Ok(()),
        };
        drop(watch);
        result
    }
}

/// The next connection from any of `listeners`, starting the search at `next` so no
/// socket starves the others; the first failure of any of them.
fn accept_any(
    listeners: &mut [Listener],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<Result<IncomingConnection, AcceptError>> {
    let n = listeners.len();
    for i in 0..n {
        let at = (*next + i) % n;
        if let Poll::Ready(result) = listeners[at].poll_accept(cx) {
            *next = (at + 1) % n;
            return Poll::Ready(result);
        }
    }
    Poll::Pending
}

/// Replaces a running server's TLS identity; see [`Server::tls_reloader`].
#[derive(Debug, Clone)]
pub struct TlsReloader {
    inner: Vec<quic_io::TlsReloader>,
}

impl TlsReloader {
    /// Serves `tls` to every new connection from now on. The identity is checked
    /// (certificate and key must match, the context must build) before anything
    /// changes: on an error the server keeps its current identity.
    pub fn reload(&self, tls: &TlsConfig) -> Result<(), quic_io::ReloadError> {
        let configs = self
            .inner
            .iter()
            .map(|r| r.prepare(tls))
            .collect::<Result<Vec<_>, _>>()?;
        for (reloader, config) in self.inner.iter().zip(configs) {
            reloader.install(config)?;
        }
        Ok(())
    }
}

/// A boxed error, as tower and axum use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What [`Server::serve`] accepts: any `Fn(http::Request<RecvBody>) -> Future` of a
/// `Result<http::Response<B>, E>`, cloneable and sendable, whose body `B` yields data
/// convertible to `Bytes` and whose errors convert into a [`BoxError`] (they are
/// logged; the client gets a 500 for a handler error, a reset stream for a body
/// error). Implemented for every such closure or function; not meant to be
/// implemented by hand.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body.
    type Body: HttpBody<Data: Into<Bytes>, Error: Into<BoxError>> + Send + 'static;
    /// The handler's error.
    type Error: Into<BoxError> + Send + 'static;
    /// The future of one request's response.
    type Future: Future<Output = Result<http::Response<Self::Body>, Self::Error>> + Send + 'static;
    /// Handles one request.
    fn call(&self, req: http::Request<RecvBody>) -> Self::Future;
}

impl<F, Fut, B, E> Handler for F
where
    F: Fn(http::Request<RecvBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, E>> + Send + 'static,
    B: HttpBody + Send + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
    E: Into<BoxError> + Send + 'static,
{
    type Body = B;
    type Error = E;
    type Future = Fut;
    fn call(&self, req: http::Request<RecvBody>) -> Fut {
        self(req)
    }
}

/// A [`Handler`] as a tower `Service`: the one path every request takes.
#[derive(Clone)]
struct HandlerService<H>(H);

impl<H: Handler> tower_service::Service<http::Request<RecvBody>> for HandlerService<H> {
    type Response = http::Response<H::Body>;
    type Error = H::Error;
    type Future = H::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<RecvBody>) -> Self::Future {
        self.0.call(req)
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
