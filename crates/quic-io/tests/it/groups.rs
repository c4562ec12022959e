//! TLS key-exchange groups: the default is the post-quantum hybrid; either side can
//! narrow the list, and the group taken is reported.

use quic_app::echo::EchoClient;
use quic_io::{ConnectError, KeyExchange, QuicSettings};

use super::util::{client_params, echo_listener};

/// The group a client offering `client` negotiates with a server accepting `server`.
async fn negotiate(
    server: Vec<KeyExchange>,
    client: Vec<KeyExchange>,
) -> Result<(Option<&'static str>, Option<&'static str>), ConnectError> {
    let listener = echo_listener(|p| p.settings.key_exchange = server);
    let mut params = client_params(&listener.cert_pem);
    params.settings.key_exchange = client;
    let (app, report) = EchoClient::new(1, 1000);
    let conn = quic_io::connect(listener.addr, params, app).await?;
    let info = conn.established().await.unwrap();
    assert!(report.await.unwrap().is_ok());
    conn.close(0, b"").await;
    Ok((info.key_exchange, info.cipher))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hybrid_is_the_default_and_each_side_can_narrow_the_groups() {
    let all = KeyExchange::DEFAULT.to_vec();
    let (group, cipher) = negotiate(all.clone(), all.clone()).await.unwrap();
    assert_eq!(group, Some("X25519MLKEM768"));
    assert!(cipher.is_some_and(|c| c.starts_with("TLS_")), "{cipher:?}");
    for (server, client, want) in [
        (all.clone(), vec![KeyExchange::X25519], "X25519"),
        (vec![KeyExchange::P256], all.clone(), "P-256"),
        // The client's first share is refused: a HelloRetryRequest, then P-384.
        (
            vec![KeyExchange::P384],
            vec![KeyExchange::X25519MlKem768, KeyExchange::P384],
            "P-384",
        ),
    ] {
        let (group, _) = negotiate(server.clone(), client.clone()).await.unwrap();
        assert_eq!(group, Some(want), "{server:?} / {client:?}");
    }
    // Nothing in common: the handshake fails (handshake_failure).
    let err = negotiate(vec![KeyExchange::X25519MlKem768], vec![KeyExchange::P256])
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Tls { .. }), "{err}");
}

#[test]
fn groups_are_named_and_checked() {
    for g in KeyExchange::DEFAULT {
        assert_eq!(g.name().parse::<KeyExchange>().unwrap(), g);
    }
    assert_eq!(
        "x25519mlkem768".parse::<KeyExchange>().unwrap(),
        KeyExchange::X25519MlKem768
    );
    assert_eq!("p256".parse::<KeyExchange>().unwrap(), KeyExchange::P256);
    let err = "x448".parse::<KeyExchange>().unwrap_err();
    assert!(err.to_string().contains("unknown group"), "{err}");
    let mut s = QuicSettings::default();
    s.key_exchange.clear();
    assert!(
        s.validate()
            .unwrap_err()
            .to_string()
            .contains("key_exchange")
    );
    s.key_exchange = vec![KeyExchange::X25519, KeyExchange::X25519];
    assert!(s.validate().unwrap_err().to_string().contains("twice"));
}

/// A client whose ALPN the server does not speak is told so by the server's TLS
/// alert (no_application_protocol), not left to time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_the_server_refuses_fails_with_its_alert() {
    let listener = echo_listener(|_| {});
    let mut params = client_params(&listener.cert_pem);
    params.alpn = vec![b"not-echo".to_vec()];
    let (app, _report) = EchoClient::new(1, 1000);
    let err = quic_io::connect(listener.addr, params, app)
        .await
        .unwrap_err();
    match err {
        ConnectError::Tls { alert, by_peer, .. } => {
            assert!(by_peer, "{alert}");
            assert!(
                alert == "no_application_protocol" || alert == "alert 120",
                "{alert}"
            );
        }
        other => panic!("{other}"),
    }
}
