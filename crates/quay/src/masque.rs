//! MASQUE: UDP proxying over HTTP/3 (CONNECT-UDP, RFC 9298), from the `quic-masque`
//! crate, on the paved path (feature `masque`).
//!
//! A proxy is a [`Proxy`] served by [`h3::Server`](crate::h3::Server) through
//! [`ProxyHandler`] (or [`handle`], from a handler of one's own); a client opens a
//! [`UdpTunnel`] with [`connect_udp`]. The server must enable extended CONNECT
//! ([`H3Settings::enable_extended_connect`](crate::h3::H3Settings)) and should enable
//! QUIC datagrams ([`QuicSettings::enable_datagrams`](crate::io::QuicSettings));
//! without them, datagrams travel in capsules on the stream.
//!
//! ```no_run
//! use quay::h3::{H3Settings, Server};
//! use quay::masque::{Proxy, ProxyConfig, ProxyHandler};
//!
//! # async fn run(tls: quay::io::TlsConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let mut h3 = H3Settings::default();
//! h3.enable_extended_connect = true;
//! let mut settings = quay::io::QuicSettings::default();
//! settings.enable_datagrams = true;
//! let server = Server::builder()
//!     .tls(tls)
//!     .h3_settings(h3)
//!     .settings(settings)
//!     .bind("[::]:443".parse()?)?;
//! server.serve(ProxyHandler::new(Proxy::new(ProxyConfig::default()))).await?;
//! # Ok(()) }
//! # let _ = run;
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use quic_masque::*;

use crate::h3::{Body, Client, ClientError, ConnectUpgrade, RecvBody};

/// Answers one request as `proxy` decides: a refusal with its status and
/// `proxy-status`, or 200 and the tunnel relayed in a task of its own until it ends.
pub async fn handle(proxy: &Arc<Proxy>, req: http::Request<RecvBody>) -> http::Response<Body> {
    let accepted = match proxy.open(&req).await {
        Ok(a) => a,
        Err(refusal) => {
            tracing::debug!(status = %refusal.status, error = refusal.error, detail = %refusal.detail, "CONNECT-UDP refused");
            let (parts, ()) = refusal.response(&proxy.config().name).into_parts();
            return http::Response::from_parts(parts, Body::from(format!("{}\n", refusal.detail)));
        }
    };
    let Some(on) = req
        .extensions()
        .get::<ConnectUpgrade>()
        .and_then(ConnectUpgrade::take)
    else {
        // Only a request that did not come through `h3::Server` lacks it.
        let mut resp = http::Response::new(Body::from("no tunnel for this request\n"));
        *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        return resp;
    };
    let (parts, ()) = accepted.response().into_parts();
    let recv = req.into_body();
    tokio::spawn(async move {
        if let Ok(tunnel) = on.tunnel(recv).await {
            accepted.run(tunnel).await;
        }
    });
    http::Response::from_parts(parts, Body::empty())
}

/// A [`Proxy`] as an [`h3::Server`](crate::h3::Server) handler: every request is a
/// CONNECT-UDP request or refused.
#[derive(Debug, Clone)]
pub struct ProxyHandler {
    proxy: Arc<Proxy>,
}

impl ProxyHandler {
    /// Serves `proxy`.
    pub fn new(proxy: Arc<Proxy>) -> Self {
        Self { proxy }
    }

    /// The proxy (for its tunnels and counters).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }
}

impl crate::h3::Handler for ProxyHandler {
    type Body = Body;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: http::Request<RecvBody>) -> Self::Future {
        let proxy = Arc::clone(&self.proxy);
        Box::pin(async move { Ok(handle(&proxy, req).await) })
    }
}

/// Why [`connect_udp`] did not open a tunnel.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectUdpError {
    /// The request could not be made or sent.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The proxy refused, or the stream failed.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The proxy URL or target does not make a request.
    #[error("invalid CONNECT-UDP request: {0}")]
    Request(String),
}

/// Opens a tunnel to `host:port` through the proxy at `proxy` (an `https://` URL; its
/// path is ignored: the default template names the target), with an optional
/// bearer token. For another template, build the request with
/// [`client::request`] and send it with [`Client::send_connect`].
pub async fn connect_udp(
    client: &Client,
    proxy: &http::Uri,
    host: &str,
    port: u16,
    token: Option<&str>,
) -> Result<UdpTunnel, ConnectUdpError> {
    let req = client::request(proxy, &UriTemplate::default(), host, port, token)
        .map_err(|e| ConnectUdpError::Request(e.to_string()))?;
    let stream = client.send_connect(req).await?;
    Ok(UdpTunnel::open(stream).await?)
}
