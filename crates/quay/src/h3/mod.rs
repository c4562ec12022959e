//! HTTP/3: the driver family of `quic-h3` and the paved path on top of it,
//! [`Server`] and [`Client`].

mod body;
pub use body::Body;

mod client;
pub use client::{Client, ClientBuilder, ClientError};

mod server;
pub use server::{ServeError, Server, ServerBuilder};

pub use quic_h3::*;
