//! The HTTP/3 driver family of quay.
//!
//! [`H3Driver`] implements [`quic_app::ApplicationOverQuic`] on top of `quiche::h3`
//! and turns HTTP/3 events into `http`-typed, per-request handles with streaming,
//! backpressured bodies. It does no I/O: `quic-io` runs it over UDP, and the
//! `quic-app` harness runs it in memory. Its two variants:
//!
//! - [`ServerH3Driver`]: every request arrives on the [`RequestStream`] (or at a
//!   [`Dispatch`] of the application's, inside the connection's task) as an
//!   [`IncomingRequest`]: an `http::Request<RecvBody>` and a [`Responder`] that sends
//!   1xx responses, the final head, then body chunks and trailers through a
//!   [`SendBody`];
//! - [`ClientH3Driver`]: a cloneable [`SendRequest`] starts requests; each gives a
//!   [`SendBody`] and a [`ResponseFuture`] of `http::Response<RecvBody>` (and of the
//!   1xx responses before it). Requests wait for the peer's stream limit and go out
//!   as soon as it allows.
//!
//! Extended CONNECT requests (RFC 9220, a [`Protocol`] extension) get a
//! [`DatagramFlow`] on both sides: the stream's HTTP Datagrams (RFC 9297), enough to
//! build CONNECT-UDP or WebTransport-style protocols on. They need
//! [`H3Settings::enable_extended_connect`] on the server and QUIC DATAGRAM frames
//! enabled on both sides.
//!
//! # Example
//!
//! A request and its response, in memory:
//!
//! ```
//! use bytes::Bytes;
//! use quic_app::testing::{Pair, PairConfig};
//! use quic_h3::{ClientH3Driver, H3Settings, ServerH3Driver};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let (client, send) = ClientH3Driver::new(H3Settings::default());
//! let (server, mut requests) = ServerH3Driver::new(H3Settings::default());
//! let mut pair = Pair::new(PairConfig::new(quic_h3::ALPN), client, server)?;
//!
//! let server_task = tokio::spawn(async move {
//!     let req = requests.next().await.unwrap();
//!     assert_eq!(req.request.uri().path(), "/hello");
//!     let mut body = req.responder.send_response(http::Response::new(())).await?;
//!     body.send_data(Bytes::from_static(b"hi")).await?;
//!     body.finish().await
//! });
//! let body = pair
//!     .run_with(std::time::Duration::from_secs(10), async {
//!         let req = http::Request::get("https://localhost/hello").body(Bytes::new())?;
//!         let mut resp = send.send(req).await?;
//!         Ok::<_, Box<dyn std::error::Error>>(resp.body_mut().collect(1024).await?)
//!     })
//!     .await??;
//! assert_eq!(body, "hi");
//! server_task.await??;
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod body;
pub use body::{RecvBody, SendBody};

pub mod capsule;
pub use capsule::{DatagramTunnel, TunnelError};

mod client;
pub use client::{ClientH3Driver, ClientHooks, ConnectStream, ResponseFuture, SendRequest};

mod datagram;
pub use datagram::{DatagramError, DatagramFlow, DatagramSender};

mod driver;
pub use driver::{Core, H3Driver, Hooks};

mod error;
pub use error::{H3Code, StreamError};

mod headers;
pub use headers::Protocol;

/// The connection a request arrived on; every request's extensions hold one.
pub use quic_app::ConnectionInfo;

mod response;
pub use response::SendResponse;

mod server;
pub use server::{
    Dispatch, EarlyData, IncomingRequest, RequestStream, Responder, ServerControl, ServerH3Driver,
    ServerHooks,
};

mod settings;
pub use settings::H3Settings;

/// The ALPN token of HTTP/3 (RFC 9114 §3.1).
pub const ALPN: &[u8] = b"h3";

#[doc(hidden)]
pub mod __private {
    //! Internals exposed for the project's own tests and fuzz targets; not a stable API.

    /// A field list as HTTP/3 carries it.
    fn fields(list: &[(&[u8], &[u8])]) -> Vec<quiche::h3::Header> {
        list.iter()
            .map(|(n, v)| quiche::h3::Header::new(n, v))
            .collect()
    }

    /// A request head from a received field list, as the server parses it.
    pub fn parse_request(list: &[(&[u8], &[u8])]) -> Result<http::request::Parts, &'static str> {
        crate::headers::parse_request(&fields(list))
    }

    /// A response head from a received field list, as the client parses it.
    pub fn parse_response(list: &[(&[u8], &[u8])]) -> Result<http::response::Parts, &'static str> {
        crate::headers::parse_response(&fields(list))
    }

    /// A trailer section from a received field list.
    pub fn parse_trailers(list: &[(&[u8], &[u8])]) -> Result<http::HeaderMap, &'static str> {
        crate::headers::parse_trailers(&fields(list))
    }

    /// The `content-length` of a head, as the drivers read it.
    pub fn content_length(headers: &http::HeaderMap) -> Result<Option<u64>, &'static str> {
        crate::headers::content_length(headers)
    }

    /// The field list sent for a request head: what `parse_request` must read back.
    pub fn request_fields(parts: &http::request::Parts) -> Vec<(Vec<u8>, Vec<u8>)> {
        use quiche::h3::NameValue;
        crate::headers::request_fields(parts)
            .iter()
            .map(|f| (f.name().to_vec(), f.value().to_vec()))
            .collect()
    }

    /// Appends `v` as a QUIC variable-length integer (RFC 9000 §16).
    pub fn put_varint(out: &mut Vec<u8>, v: u64) {
        crate::datagram::put_varint(out, v);
    }

    /// Reads a variable-length integer: its value and length.
    pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
        crate::datagram::get_varint(buf)
    }
}
