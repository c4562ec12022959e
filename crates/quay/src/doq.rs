//! DNS over QUIC (RFC 9250), from the `quic-doq` crate, on `quay::io` endpoints
//! (feature `doq`).
//!
//! ```no_run
//! use std::sync::Arc;
//! use quay::doq::{Resolver, ServerLimits, Upstream, Zone};
//!
//! # async fn run(tls: quay::io::TlsConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let zone = Zone::from_file("example.test.zone".as_ref(), None)?;
//! let resolver = Resolver::new(Some(zone), Some(Upstream::new("127.0.0.1:53".parse()?)));
//! let listener = quay::io::listen_on("[::]:853".parse()?, quay::doq::server_params(tls))?;
//! quay::doq::serve(listener, Arc::new(resolver), ServerLimits::default()).await?;
//! # Ok(()) }
//! # let _ = run;
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

pub use quic_doq::*;

use crate::io::{
    AcceptError, ClientParams, ConnectError, ConnectionHandle, Listener, ServerParams, TlsConfig,
};

/// Listener parameters for DoQ: ALPN `doq`, the library's defaults otherwise
/// (limits on, Retry under load).
pub fn server_params(tls: TlsConfig) -> ServerParams {
    ServerParams::new(tls, &[ALPN])
}

/// Serves DoQ on `listener` until it stops: each connection gets a [`DoqServer`]
/// answering with `resolver`.
pub async fn serve(
    mut listener: Listener,
    resolver: Arc<Resolver>,
    limits: ServerLimits,
) -> Result<(), AcceptError> {
    loop {
        match listener.accept().await {
            Ok(incoming) => {
                incoming.start(DoqServer::new(Arc::clone(&resolver), limits.clone()));
            }
            Err(AcceptError::Stopped) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// Connects to the DoQ server at `addr` (`params` with ALPN `doq`, which this sets);
/// queries go through the returned handle.
pub async fn connect(
    addr: SocketAddr,
    mut params: ClientParams,
) -> Result<(ConnectionHandle, QueryHandle), ConnectError> {
    params.alpn = vec![ALPN.to_vec()];
    let (app, handle) = DoqClient::new();
    let conn = crate::io::connect(addr, params, app).await?;
    Ok((conn, handle))
}
