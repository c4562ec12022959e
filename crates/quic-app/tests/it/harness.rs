use std::time::Duration;

use quic_app::echo::{ALPN, EchoClient, EchoServer};
use quic_app::testing::{Pair, PairConfig};
use quic_app::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};

const LIMIT: Duration = Duration::from_secs(60);

/// Sends one message, and closes the connection with a fixed application code once the
/// echo is back.
struct Closer {
    code: u64,
}

impl ApplicationOverQuic for Closer {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        conn.stream_send(0, b"ping", true)?;
        Ok(())
    }
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let mut buf = [0u8; 16];
        while let Ok((_, fin)) = conn.stream_recv(0, &mut buf) {
            if fin {
                return Err(AppError::close(self.code, "bye"));
            }
        }
        Ok(())
    }
    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
}

#[tokio::test]
async fn handshake_completes_and_negotiates_alpn() {
    let (client, _report) = EchoClient::new(1, 10);
    let mut pair = Pair::new(PairConfig::new(ALPN), client, EchoServer::new()).unwrap();
    pair.run_until_established(LIMIT).await.unwrap();
    assert_eq!(pair.client().conn().application_proto(), ALPN);
    assert_eq!(pair.server().conn().application_proto(), ALPN);
    assert_eq!(pair.server().conn().server_name(), Some("localhost"));
    assert!(pair.client().close_reason().is_none());
}

#[tokio::test]
async fn streams_are_echoed_byte_for_byte() {
    let (client, report) = EchoClient::new(3, 300_000);
    let mut pair = Pair::new(PairConfig::new(ALPN), client, EchoServer::new()).unwrap();
    pair.run_until_closed(LIMIT).await.unwrap();
    let report = report.await.unwrap();
    assert_eq!(report.streams.len(), 3);
    for s in &report.streams {
        assert_eq!(s.sent, 300_000);
        assert_eq!(s.received, 300_000);
        assert_eq!(s.sent_sha256, s.received_sha256);
        assert_eq!(s.first_mismatch, None);
    }
    // The client closes with application code 0 once every echo is back.
    assert_eq!(
        pair.server().close_reason().and_then(CloseReason::app_code),
        Some(0)
    );
}

#[tokio::test]
async fn the_close_code_an_app_sends_is_the_one_the_peer_sees() {
    let mut pair = Pair::new(
        PairConfig::new(ALPN),
        Closer { code: 0x1234 },
        EchoServer::new(),
    )
    .unwrap();
    pair.run_until_closed(LIMIT).await.unwrap();
    assert_eq!(
        pair.server().close_reason(),
        Some(&CloseReason::Peer {
            app: true,
            code: 0x1234,
            reason: b"bye".to_vec()
        })
    );
    assert_eq!(
        pair.client().close_reason(),
        Some(&CloseReason::Local {
            app: true,
            code: 0x1234,
            reason: b"bye".to_vec()
        })
    );
}

#[tokio::test]
async fn ten_percent_seeded_loss_still_delivers_identical_bytes() {
    let (client, report) = EchoClient::new(4, 256 * 1024);
    let config = PairConfig::new(ALPN).loss(0.10).reorder(0.05).seed(42);
    let mut pair = Pair::new(config, client, EchoServer::new()).unwrap();
    // Only the client: under loss its CONNECTION_CLOSE may never reach the server,
    // which then waits for its idle timeout (RFC 9000 §10.2: a close is not resent).
    pair.run_until(LIMIT, |p| p.client().close_reason().is_some())
        .await
        .unwrap();
    let report = report.await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 4 * 256 * 1024);
    let stats = pair.link_stats();
    assert!(
        stats.dropped > 0,
        "the loss model dropped nothing: {stats:?}"
    );
    assert!(
        stats.reordered > 0,
        "the reorder model reordered nothing: {stats:?}"
    );
    assert!(pair.client().conn().stats().lost > 0);
}
