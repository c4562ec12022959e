//! quay: async QUIC and HTTP/3 for Rust, on Cloudflare's `quiche` state machine and
//! `tokio`.
//!
//! quay is layered; this crate re-exports the layers most users need:
//!
//! - [`app`] (`quic-app`): the [`ApplicationOverQuic`](app::ApplicationOverQuic)
//!   trait any protocol over QUIC implements, and (feature `testing`) an in-memory
//!   harness to test such protocols without sockets;
//! - [`io`] (`quic-io`): UDP sockets with batching offloads, one router task per
//!   socket and one worker task per connection; [`io::listen_on`] and [`io::connect`];
//! - [`h3`] (`quic-h3`): the HTTP/3 driver family, and the paved path on top of it:
//!   [`h3::Server`] (one handler function for every request, graceful shutdown) and
//!   [`h3::Client`] (verifies certificates, one reused connection per authority);
//! - [`quiche`]: the QUIC state machine, for the types applications touch.
//!
//! # Example
//!
//! Any protocol over QUIC: here the reference echo protocol, server and client.
//!
//! ```
//! use quay::app::echo::{ALPN, EchoClient, EchoServer};
//! use quay::io::{ClientParams, ClientTlsConfig, ServerParams, TlsConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let identity = TlsConfig::self_signed(&["localhost"])?;
//! let mut listener =
//!     quay::io::listen_on("127.0.0.1:0".parse()?, ServerParams::new(identity.config, &[ALPN]))?;
//! let addr = listener.local_addr();
//! tokio::spawn(async move {
//!     while let Ok(incoming) = listener.accept().await {
//!         incoming.start(EchoServer::new());
//!     }
//! });
//!
//! let mut params = ClientParams::new(&[ALPN]);
//! params.tls = ClientTlsConfig::new().add_root_pem(identity.cert_pem.as_bytes())?;
//! params.server_name = Some("localhost".into());
//! let (app, report) = EchoClient::new(1, 64 * 1024);
//! quay::io::connect(addr, params, app).await?;
//! assert!(report.await?.is_ok());
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! - `tower` (default): [`h3::Server::serve_service`] for any tower `Service`, an
//!   axum `Router` as it is, and [`h3::AltSvcLayer`] for the TCP side of a
//!   deployment;
//! - `metrics` (default): HTTP and transport metrics through the `metrics` crate's
//!   facade; the names are listed in [`metrics`];
//! - `self-signed` (default): `TlsConfig::self_signed` (rcgen);
//! - `qlog` (default): qlog traces per connection (`QuicSettings::qlog_dir`);
//! - `echo` (default): the reference echo protocol, `quay::app::echo`;
//! - `json`: `ResponseExt::json` on the client's responses (serde);
//! - `masque`: CONNECT-UDP proxying (RFC 9298), [`masque`]: a proxy handler for
//!   [`h3::Server`] and UDP tunnels through [`h3::Client`];
//! - `doq`: DNS over QUIC (RFC 9250), [`doq`]: a server and a client on [`io`];
//! - `testing`: enables `quay::app::testing`, the in-memory harness.
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

/// The README's code example, compiled and run as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// docs/scaling.md's code, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/scaling.md")]
struct ScalingDoctests;

/// docs/masque.md's code, compiled as a doc test.
#[cfg(all(doctest, feature = "masque"))]
#[doc = include_str!("../../../docs/masque.md")]
struct MasqueDoctests;

/// docs/doq.md's code, compiled as a doc test.
#[cfg(all(doctest, feature = "doq"))]
#[doc = include_str!("../../../docs/doq.md")]
struct DoqDoctests;

/// The crate's own README, compiled as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;

pub use quic_app as app;
pub mod h3;
pub use quic_io as io;
#[cfg(feature = "doq")]
pub mod doq;
#[cfg(feature = "masque")]
pub mod masque;
#[cfg(feature = "metrics")]
pub mod metrics;
mod observe;
pub use quiche;
