use std::time::Duration;

use bytes::Bytes;
use quic_app::testing::{Pair, PairConfig};
use quic_h3::{ClientH3Driver, H3Settings, RequestStream, SendRequest, ServerH3Driver};
use sha2::{Digest, Sha256};

pub(super) const LIMIT: Duration = Duration::from_secs(60);

pub(super) type H3Pair = Pair<ClientH3Driver, ServerH3Driver>;

/// A client and a server driver connected in memory; windows small enough that 10 MiB
/// bodies cross them many times.
pub(super) fn pair(server: H3Settings) -> (H3Pair, SendRequest, RequestStream) {
    let (client, send) = ClientH3Driver::new(H3Settings::default());
    let (server, requests) = ServerH3Driver::new(server);
    let config = PairConfig::new(quic_h3::ALPN).configure(|c| {
        c.set_initial_max_data(1024 * 1024);
        c.set_initial_max_stream_data_bidi_local(256 * 1024);
        c.set_initial_max_stream_data_bidi_remote(256 * 1024);
        c.set_max_connection_window(2 * 1024 * 1024);
        c.set_max_stream_window(1024 * 1024);
    });
    (Pair::new(config, client, server).unwrap(), send, requests)
}

/// `len` bytes where byte i is `i % 251`.
pub(super) fn pattern(len: usize) -> Bytes {
    (0..len)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

pub(super) fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Reads `body` to its end: the bytes read, or the error with the bytes read before it.
pub(super) async fn read_to_end(
    body: &mut quic_h3::RecvBody,
) -> Result<usize, (quic_h3::StreamError, usize)> {
    let mut got = 0;
    loop {
        match body.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => return Ok(got),
            Err(e) => return Err((e, got)),
        }
    }
}
