//! Loopback tests of quic-io: real sockets on 127.0.0.1.

mod it;
