use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as HttpBody;
use quic_h3::{H3Code, H3Settings, IncomingRequest, RecvBody, ServerH3Driver, StreamError};
use quic_io::{AcceptError, ListenError, Listener, QuicSettings, ServerParams, TlsConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

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
}

/// Adjusts a listener's parameters before it binds.
type Configure = Box<dyn FnOnce(&mut ServerParams) + Send>;

/// Builds a [`Server`]: TLS identity, settings, address.
#[derive(Default)]
pub struct ServerBuilder {
    tls: Option<TlsConfig>,
    settings: QuicSettings,
    h3: H3Settings,
    configure: Vec<Configure>,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("settings", &self.settings)
            .field("h3", &self.h3)
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

    /// Adjusts the listener's parameters (limits, Retry, metrics) before binding;
    /// several calls apply in order.
    pub fn configure(mut self, f: impl FnOnce(&mut ServerParams) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Binds `addr` and starts listening. Must be called within a tokio runtime.
    pub fn bind(self, addr: SocketAddr) -> Result<Server, ServeError> {
        let (params, h3) = self.params()?;
        let listener = quic_io::listen_on(addr, params)?;
        Ok(Server { listener, h3 })
    }

    /// Listens on a UDP socket bound elsewhere (handed over by a service manager, or
    /// bound with options of the caller's). Must be called within a tokio runtime.
    pub fn bind_socket(self, socket: std::net::UdpSocket) -> Result<Server, ServeError> {
        let (params, h3) = self.params()?;
        let listener = quic_io::listen(socket, params)?;
        Ok(Server { listener, h3 })
    }

    /// The listener's parameters, configured, and the HTTP/3 settings.
    fn params(self) -> Result<(ServerParams, H3Settings), ServeError> {
        let tls = self.tls.ok_or(ServeError::NoTls)?;
        let mut params = ServerParams::new(tls, &[quic_h3::ALPN]);
        params.settings = self.settings;
        for f in self.configure {
            f(&mut params);
        }
        Ok((params, self.h3))
    }
}

/// An HTTP/3 server: every request goes to one handler function.
///
/// ```no_run
/// use quay::h3::{Body, Server};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let identity = quay::io::TlsConfig::self_signed(&["localhost"])?;
/// let server = Server::builder().tls(identity.config).bind("127.0.0.1:4433".parse()?)?;
/// server
///     .serve(|_req: http::Request<quay::h3::RecvBody>| async move {
///         Ok::<_, std::convert::Infallible>(http::Response::new(Body::from("hello")))
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: Listener,
    h3: H3Settings,
}

impl Server {
    /// A builder with default settings.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// A handle that reads the listener's tables (connections, routes, sources) while
    /// the server runs.
    pub fn stats_handle(&self) -> quic_io::StatsHandle {
        self.listener.stats_handle()
    }

    /// Serves every request with `handler` until the listener stops; an error if it
    /// failed.
    pub async fn serve<H: Handler>(self, handler: H) -> Result<(), ServeError> {
        self.serve_with_shutdown(handler, CancellationToken::new(), Duration::ZERO)
            .await
    }

    /// Serves until `signal` completes (a Ctrl-C future, a oneshot receiver, ...),
    /// then drains as [`serve_with_shutdown`](Self::serve_with_shutdown) does.
    pub async fn serve_with_graceful_shutdown<H: Handler>(
        self,
        handler: H,
        signal: impl Future<Output = ()> + Send + 'static,
        deadline: Duration,
    ) -> Result<(), ServeError> {
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let watch = AbortOnDrop(tokio::spawn(async move {
            signal.await;
            stop.cancel();
        }));
        let result = self.serve_with_shutdown(handler, shutdown, deadline).await;
        drop(watch);
        result
    }

    /// Serves until `shutdown` is cancelled, then drains gracefully: stops accepting,
    /// sends GOAWAY on every connection, lets requests in flight finish for up to
    /// `deadline`, and closes what is left.
    ///
    /// The accept loop runs as a task of the runtime, whichever thread polls this
    /// future (often `main`, outside the runtime's workers), so that accepting and
    /// reaping connections never wakes a thread of its own. Dropping this future stops
    /// the server as before: the task is aborted with it.
    ///
    /// Returns an error if the listener failed (its socket, or its router task).
    pub async fn serve_with_shutdown<H: Handler>(
        self,
        handler: H,
        shutdown: CancellationToken,
        deadline: Duration,
    ) -> Result<(), ServeError> {
        let Server { mut listener, h3 } = self;
        let accept_loop = async move {
            let mut connections = JoinSet::new();
            let mut failure = None;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    incoming = listener.accept() => {
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
                        let (driver, requests) = ServerH3Driver::new(h3.clone());
                        let handle = incoming.start(driver);
                        let handler = handler.clone();
                        let stop = shutdown.clone();
                        connections.spawn(async move {
                            serve_connection(requests, handler, stop).await;
                            handle.closed().await;
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
            listener
                .shutdown(
                    H3Code::NO_ERROR.0,
                    b"server shutting down",
                    Duration::from_secs(1),
                )
                .await;
            match failure {
                Some(e) => Err(ServeError::Accept(e)),
                None => Ok(()),
            }
        };
        let mut task = AbortOnDrop(tokio::spawn(accept_loop));
        match (&mut task.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Aborted: only when this future is dropped, so never seen here.
            Err(_) => Ok(()),
        }
    }
}

/// What [`Server::serve`] accepts: any `Fn(http::Request<RecvBody>) -> Future` of a
/// `Result<http::Response<B>, E>`, cloneable and sendable, whose body `B` yields
/// `Bytes` and whose errors can be displayed (they are logged; the client gets a 500
/// for a handler error, a reset stream for a body error). Implemented for every such
/// closure or function; not meant to be implemented by hand.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The response body.
    type Body: HttpBody<Data = Bytes, Error: std::fmt::Display + Send> + Send + 'static;
    /// The handler's error.
    type Error: std::fmt::Display + Send + 'static;
    /// The future of one request's response.
    type Future: Future<Output = Result<http::Response<Self::Body>, Self::Error>> + Send + 'static;
    /// Handles one request.
    fn call(&self, req: http::Request<RecvBody>) -> Self::Future;
}

impl<F, Fut, B, E> Handler for F
where
    F: Fn(http::Request<RecvBody>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<http::Response<B>, E>> + Send + 'static,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Display + Send,
    E: std::fmt::Display + Send + 'static,
{
    type Body = B;
    type Error = E;
    type Future = Fut;
    fn call(&self, req: http::Request<RecvBody>) -> Fut {
        self(req)
    }
}

/// Aborts the task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn serve_connection<H: Handler>(
    mut requests: quic_h3::RequestStream,
    handler: H,
    shutdown: CancellationToken,
) {
    let control = requests.control();
    let mut in_flight = JoinSet::new();
    let mut draining = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                control.goaway().await;
            }
            req = requests.next() => {
                let Some(req) = req else { break };
                // Boxed where it is built: the task then moves a pointer, not the
                // whole future (handler state included) through every layer of the
                // spawn.
                in_flight.spawn(Box::pin(respond(req, handler.clone())));
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.join_next().await.is_some() {}
}

/// Runs the handler for one request and streams its response.
async fn respond<H: Handler>(req: IncomingRequest, handler: H) {
    let method = req.request.method().clone();
    let path = req.request.uri().path().to_owned();
    let started = std::time::Instant::now();
    let response = match handler.call(req.request).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(%method, %path, error = %e, "handler failed");
            let mut resp = http::Response::new(());
            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            if let Ok(body) = req.responder.send_response(resp).await {
                let _ = body.finish().await;
            }
            return;
        }
    };
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let result = send_body(req.responder, http::Response::from_parts(parts, ()), body).await;
    match result {
        Ok(bytes) => tracing::debug!(
            %method, %path, status = status.as_u16(), bytes,
            ms = started.elapsed().as_secs_f64() * 1000.0, "request"
        ),
        Err(e) => {
            tracing::debug!(%method, %path, status = status.as_u16(), error = %e, "request failed")
        }
    }
}

async fn send_body<B>(
    responder: quic_h3::Responder,
    head: http::Response<()>,
    body: B,
) -> Result<u64, StreamError>
where
    B: HttpBody<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let mut out = responder.send_response(head).await?;
    let mut body = std::pin::pin!(body);
    let mut bytes = 0u64;
    loop {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            None => {
                out.finish().await?;
                return Ok(bytes);
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    bytes += data.len() as u64;
                    out.send_data(data).await?;
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        out.send_trailers(trailers).await?;
                        return Ok(bytes);
                    }
                }
            },
            Some(Err(e)) => {
                // Dropping `out` resets the stream: the client sees the body failed.
                tracing::warn!(error = %e, "response body failed");
                return Err(StreamError::Cancelled);
            }
        }
    }
}
