//! Integration tests of quic-app, all through the in-memory harness.
#![cfg(feature = "testing")]

mod it;
