//! A socket's registration with the runtime's reactor for the readiness it is waited
//! for, and no other (see the parent module's docs).
#![allow(unsafe_code)]

use std::io;
use std::net::UdpSocket;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Registers `socket` for `interest` alone; must be called inside a tokio runtime.
pub(super) fn register(socket: UdpSocket, interest: Interest) -> io::Result<AsyncFd<UdpSocket>> {
    // SAFETY: a `UdpSocket` owns its descriptor and closes it only when dropped, and
    // its `as_raw_fd` always returns that descriptor; the `AsyncFd` owns the socket,
    // so the descriptor stays open, and the same, for as long as it is registered.
    unsafe { AsyncFd::register_with_interest(socket, interest) }.map_err(io::Error::from)
}
