//! HTTP/3: the driver family of `quic-h3` and the paved path on top of it,
//! [`Server`] and [`Client`].

mod body;
pub use body::Body;

mod client;
pub use client::{Client, ClientBuilder, ClientError, RedirectPolicy, ResponseExt};

mod dispatch;
mod in_flight;
mod server;
pub use server::{BoxError, Handler, ServeError, Server, ServerBuilder, TlsReloader};

mod connect;
pub use connect::{ConnectUpgrade, OnConnect, UpgradeError};

#[cfg(feature = "tower")]
mod alt_svc;
#[cfg(feature = "tower")]
pub use alt_svc::{AltSvcFuture, AltSvcLayer, AltSvcService, alt_svc_value};

// The drivers and their handles; the driver core and its hooks stay internal.
pub use quic_h3::{
    ALPN, ClientH3Driver, ConnectStream, ConnectionInfo, DatagramError, DatagramFlow,
    DatagramSender, DatagramTunnel, EarlyData, H3Code, H3Settings, IncomingRequest, Protocol,
    RecvBody, RequestStream, Responder, ResponseFuture, SendBody, SendRequest, ServerControl,
    ServerH3Driver, StreamError, TunnelError, capsule,
};
