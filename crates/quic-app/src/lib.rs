//! The extension point of quay: any protocol over QUIC plugs in here.
//!
//! `quic-app` sits between [`quiche`]'s QUIC state machine and the protocols that run on
//! it. A protocol implements [`ApplicationOverQuic`]; the I/O layer (`quic-io`, or the
//! in-memory harness of this crate) owns the `quiche::Connection` and calls the trait's
//! callbacks in a fixed order on every turn of its loop. The protocol never sees a
//! socket, a timer or an event loop.
//!
//! The crate also holds the plain types such protocols and their users share:
//! [`HandshakeInfo`], [`CloseReason`], [`ConnectionStats`] and [`AppError`], and a
//! reference protocol, [`echo`], that the examples and tests use.
//!
//! # Example
//!
//! A protocol that answers every bidirectional stream with the word `pong`:
//!
//! ```
//! use quic_app::{AppError, ApplicationOverQuic, QuicConnection};
//!
//! struct Pong;
//!
//! impl ApplicationOverQuic for Pong {
//!     fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
//!         let mut buf = [0u8; 1024];
//!         for id in conn.readable() {
//!             while let Ok((_, fin)) = conn.stream_recv(id, &mut buf) {
//!                 if fin {
//!                     conn.stream_send(id, b"pong", true)?;
//!                 }
//!             }
//!         }
//!         Ok(())
//!     }
//!
//!     fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
//!         Ok(())
//!     }
//!     // The other methods keep their defaults: a purely reactive protocol has
//!     // nothing to set up and nothing to wait for besides the peer.
//! }
//! # let _ = Pong;
//! ```
//!
//! # Feature flags
//!
//! - `echo` (default): the reference echo protocol, [`echo`].
//! - `testing`: [`testing::Pair`], a deterministic in-memory harness that connects a
//!   client app and a server app through two real `quiche::Connection`s, without
//!   sockets, with seeded datagram loss and reordering.
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

mod app;
pub mod queue;
pub use app::{ApplicationOverQuic, MAX_HANDOFF_PASSES, QuicConnection};

mod error;
pub use error::{AppError, CloseReason, transport_code};

mod driver;
pub use driver::AppDriver;

mod info;
pub use info::{ConnectionInfo, HandshakeInfo};

mod stats;
pub use stats::ConnectionStats;

#[cfg(feature = "echo")]
pub mod echo;

#[cfg(feature = "testing")]
pub mod testing;
