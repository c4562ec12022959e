//! Extended CONNECT with HTTP Datagrams, informational responses, and the
//! first-request limit.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use quic_app::CloseReason;
use quic_app::testing::{Pair, PairConfig};
use quic_h3::{
    ClientH3Driver, DatagramError, H3Code, H3Settings, Protocol, ServerH3Driver, StreamError,
};

use super::util::{H3Pair, LIMIT, pair};

/// A pair whose connection carries QUIC DATAGRAM frames.
fn datagram_pair(server: H3Settings) -> (H3Pair, quic_h3::SendRequest, quic_h3::RequestStream) {
    let (client, send) = ClientH3Driver::new(H3Settings::default());
    let (server, requests) = ServerH3Driver::new(server);
    let config = PairConfig::new(quic_h3::ALPN).configure(|c| c.enable_dgram(true, 256, 256));
    (Pair::new(config, client, server).unwrap(), send, requests)
}

fn connect_udp() -> http::Request<()> {
    http::Request::builder()
        .method(Method::CONNECT)
        .uri("https://localhost/.well-known/masque/udp/192.0.2.6/443/")
        .extension(Protocol("connect-udp".into()))
        .body(())
        .unwrap()
}

#[tokio::test]
async fn an_extended_connect_stream_carries_datagrams_both_ways() {
    let mut settings = H3Settings::default();
    settings.enable_extended_connect = true;
    let (mut pair, send, mut requests) = datagram_pair(settings);
    let server = tokio::spawn(async move {
        // A plain request first: it has no flow.
        let plain = requests.next().await.unwrap();
        assert!(plain.datagrams.is_none());
        let out = plain
            .responder
            .send_response(http::Response::new(()))
            .await?;
        out.finish().await?;

        let req = requests.next().await.unwrap();
        assert_eq!(req.request.method(), Method::CONNECT);
        assert_eq!(
            req.request.extensions().get::<Protocol>(),
            Some(&Protocol("connect-udp".into()))
        );
        assert_eq!(
            req.request.uri().path(),
            "/.well-known/masque/udp/192.0.2.6/443/"
        );
        let mut flow = req.datagrams.expect("extended CONNECT has a datagram flow");
        let _out = req.responder.send_response(http::Response::new(())).await?;
        // Echo every datagram back with a prefix, until the client sent "end".
        loop {
            let d = flow.recv().await.expect("flow open");
            if &d[..] == b"end" {
                return Ok::<_, StreamError>(());
            }
            let mut back = b"echo:".to_vec();
            back.extend_from_slice(&d);
            flow.send(back.into()).await.unwrap();
        }
    });
    let received = pair
        .run_with(LIMIT, async {
            let plain = http::Request::get("https://localhost/")
                .body(Bytes::new())
                .unwrap();
            assert_eq!(send.send(plain).await.unwrap().status(), StatusCode::OK);

            let c = send.send_connect(connect_udp()).await.unwrap();
            let resp = c.response.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let mut flow = c.datagrams;
            let max = flow.max_datagram_size().expect("datagrams negotiated");
            assert!(max > 1000, "{max}");
            let too_big = Bytes::from(vec![0u8; max + 1]);
            assert_eq!(
                flow.send(too_big).await,
                Err(DatagramError::TooLarge { size: max + 1, max })
            );
            // A full-size datagram fits.
            flow.send(Bytes::from(vec![7u8; max - 5])).await.unwrap();
            for i in 0..20u32 {
                flow.send(Bytes::from(format!("datagram {i}")))
                    .await
                    .unwrap();
            }
            let mut got = BTreeSet::new();
            while got.len() < 21 {
                let d = flow.recv().await.expect("flow open");
                got.insert(d);
            }
            flow.send(Bytes::from_static(b"end")).await.unwrap();
            got
        })
        .await
        .unwrap();
    let mut expected: BTreeSet<Bytes> = (0..20u32)
        .map(|i| Bytes::from(format!("echo:datagram {i}")))
        .collect();
    let mut big = b"echo:".to_vec();
    let max = received.iter().map(Bytes::len).max().unwrap();
    big.resize(max, 7);
    expected.insert(big.into());
    assert_eq!(received, expected);
    pair.run_with(LIMIT, server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn extended_connect_to_a_server_that_did_not_enable_it_is_unsupported() {
    let (mut pair, send, _requests) = datagram_pair(H3Settings::default());
    let err = pair
        .run_with(LIMIT, send.send_connect(connect_udp()))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err, StreamError::Unsupported("extended CONNECT"));
    // A CONNECT without a protocol is not an extended CONNECT.
    let plain_connect = http::Request::builder()
        .method(Method::CONNECT)
        .uri("localhost:443")
        .body(())
        .unwrap();
    let err = send.send_connect(plain_connect).await.unwrap_err();
    assert!(matches!(err, StreamError::Malformed(_)), "{err:?}");
}

#[tokio::test]
async fn without_quic_datagrams_the_flow_reports_unsupported() {
    let mut settings = H3Settings::default();
    settings.enable_extended_connect = true;
    let (mut pair, send, mut requests) = pair(settings);
    let server = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let flow = req.datagrams.expect("a flow, even if datagrams are off");
        assert_eq!(flow.max_datagram_size(), None);
        let _out = req.responder.send_response(http::Response::new(())).await;
        flow
    });
    pair.run_with(LIMIT, async {
        let c = send.send_connect(connect_udp()).await.unwrap();
        c.response.await.unwrap();
        assert_eq!(
            c.datagrams.send(Bytes::from_static(b"x")).await,
            Err(DatagramError::Unsupported)
        );
    })
    .await
    .unwrap();
    drop(server.await.unwrap());
}

#[tokio::test]
async fn informational_responses_reach_the_client_before_the_final_one() {
    let (mut pair, send, mut requests) = pair(H3Settings::default());
    let server = tokio::spawn(async move {
        let mut req = requests.next().await.unwrap();
        let hints = http::Response::builder()
            .status(StatusCode::EARLY_HINTS)
            .header("link", "</style.css>; rel=preload")
            .body(())
            .unwrap();
        req.responder.send_informational(hints).await?;
        let mut out = req.responder.send_response(http::Response::new(())).await?;
        out.send_data(Bytes::from_static(b"page")).await?;
        out.finish().await
    });
    pair.run_with(LIMIT, async {
        let req = http::Request::get("https://localhost/").body(()).unwrap();
        let (body, mut response) = send.send_request(req).await.unwrap();
        body.finish().await.unwrap();
        let hints = response.informational().await.expect("103 arrives");
        assert_eq!(hints.status(), StatusCode::EARLY_HINTS);
        assert_eq!(hints.headers()["link"], "</style.css>; rel=preload");
        assert!(response.informational().await.is_none());
        let mut resp = response.await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.body_mut().collect(100).await.unwrap(), "page");
    })
    .await
    .unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_by_the_server() {
    let mut settings = H3Settings::default();
    settings.first_request_timeout = Some(Duration::from_millis(300));
    let (mut pair, _send, _requests) = pair(settings);
    let started = std::time::Instant::now();
    pair.run_until_closed(LIMIT).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    match pair.client().close_reason() {
        Some(CloseReason::Peer {
            app: true, code, ..
        }) => assert_eq!(H3Code(*code), H3Code::NO_ERROR),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_connection_whose_first_request_came_in_time_stays_open() {
    let mut settings = H3Settings::default();
    settings.first_request_timeout = Some(Duration::from_millis(200));
    let (mut pair, send, mut requests) = pair(settings);
    let server = tokio::spawn(async move {
        while let Some(req) = requests.next().await {
            let out = req.responder.send_response(http::Response::new(())).await?;
            out.finish().await?;
        }
        Ok::<_, StreamError>(())
    });
    pair.run_with(LIMIT, async {
        let req = || {
            http::Request::get("https://localhost/")
                .body(Bytes::new())
                .unwrap()
        };
        send.send(req()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Well past the limit: the connection is still there.
        assert_eq!(send.send(req()).await.unwrap().status(), StatusCode::OK);
    })
    .await
    .unwrap();
    assert!(pair.client().close_reason().is_none());
    drop(server);
}

/// A server that echoes every HTTP Datagram of one extended CONNECT stream through a
/// `DatagramTunnel` until the client ends the stream; returns how the tunnel ended
/// and whether it sent capsules.
fn tunnel_echo(
    mut requests: quic_h3::RequestStream,
) -> tokio::task::JoinHandle<(Result<(), quic_h3::TunnelError>, bool)> {
    tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let flow = req.datagrams.expect("extended CONNECT");
        let recv = req.request.into_body();
        let send = req
            .responder
            .send_response(http::Response::new(()))
            .await
            .unwrap();
        let mut tunnel = quic_h3::DatagramTunnel::new(flow, recv, send);
        let capsules = tunnel.uses_capsules();
        loop {
            match tunnel.recv().await {
                Ok(Some(d)) => {
                    let mut back = b"echo:".to_vec();
                    back.extend_from_slice(&d);
                    tunnel.send(back.into()).await.unwrap();
                }
                Ok(None) => return (tunnel.close().await, capsules),
                Err(e) => return (Err(e), capsules),
            }
        }
    })
}

fn extended_settings() -> H3Settings {
    let mut settings = H3Settings::default();
    settings.enable_extended_connect = true;
    settings
}

/// Both ends' tunnels, with and without QUIC datagrams: every datagram comes back
/// (in capsules, reliably and in order), and the stream ends cleanly.
#[tokio::test]
async fn a_datagram_tunnel_works_with_quic_datagrams_and_with_capsules() {
    for quic_datagrams in [true, false] {
        let (mut pair, send, requests) = if quic_datagrams {
            datagram_pair(extended_settings())
        } else {
            pair(extended_settings())
        };
        let server = tunnel_echo(requests);
        let got = pair
            .run_with(LIMIT, async {
                let c = send.send_connect(connect_udp()).await.unwrap();
                let resp = c.response.await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let mut tunnel =
                    quic_h3::DatagramTunnel::new(c.datagrams, resp.into_body(), c.send);
                assert_eq!(tunnel.uses_capsules(), !quic_datagrams);
                let mut got = Vec::new();
                for i in 0..50u32 {
                    tunnel.send(Bytes::from(format!("d{i}"))).await.unwrap();
                    got.push(tunnel.recv().await.unwrap().unwrap());
                }
                // A payload larger than any QUIC datagram, in capsules only.
                if !quic_datagrams {
                    tunnel.send(Bytes::from(vec![9u8; 30_000])).await.unwrap();
                    got.push(tunnel.recv().await.unwrap().unwrap());
                }
                tunnel.close().await.unwrap();
                got
            })
            .await
            .unwrap();
        let mut want: Vec<Bytes> = (0..50u32)
            .map(|i| Bytes::from(format!("echo:d{i}")))
            .collect();
        if !quic_datagrams {
            let mut big = b"echo:".to_vec();
            big.extend_from_slice(&[9u8; 30_000]);
            want.push(big.into());
        }
        // One at a time, so even unreliable datagrams on a lossless link come back.
        assert_eq!(got, want, "quic datagrams: {quic_datagrams}");
        let (ended, capsules) = pair.run_with(LIMIT, server).await.unwrap().unwrap();
        ended.unwrap();
        assert_eq!(capsules, !quic_datagrams);
    }
}

/// Capsules of unknown types are skipped; a stream that ends inside a capsule is a
/// malformed message: the server aborts it with H3_MESSAGE_ERROR.
#[tokio::test]
async fn unknown_capsules_are_skipped_and_a_truncated_one_aborts_the_stream() {
    let (mut pair, send, requests) = pair(extended_settings());
    let server = tunnel_echo(requests);
    let (echoed, err) = pair
        .run_with(LIMIT, async {
            let mut c = send.send_connect(connect_udp()).await.unwrap();
            let mut resp = c.response.await.unwrap();
            let mut wire = Vec::new();
            quic_h3::capsule::encode(0x2b00_0001, &[1u8; 5000], &mut wire);
            quic_h3::capsule::encode(quic_h3::capsule::DATAGRAM_CAPSULE, b"hello", &mut wire);
            quic_h3::capsule::encode(0x3f, b"", &mut wire);
            c.send.send_data(wire.into()).await.unwrap();
            // The echo, in a DATAGRAM capsule of its own.
            let mut decoder = quic_h3::capsule::CapsuleDecoder::datagrams();
            let echoed = loop {
                let chunk = resp.body_mut().chunk().await.unwrap().unwrap();
                decoder.push(&chunk);
                if let Some(capsule) = decoder.next_capsule().unwrap() {
                    break capsule.value;
                }
            };
            // Half a capsule, then the end of the stream.
            let mut wire = Vec::new();
            quic_h3::capsule::encode(quic_h3::capsule::DATAGRAM_CAPSULE, b"cut short", &mut wire);
            wire.truncate(6);
            c.send.send_data(wire.into()).await.unwrap();
            c.send.finish().await.unwrap();
            let err = loop {
                match resp.body_mut().chunk().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("the stream ended cleanly"),
                    Err(e) => break e,
                }
            };
            (echoed, err)
        })
        .await
        .unwrap();
    assert_eq!(&echoed[..], b"echo:hello");
    assert_eq!(err, StreamError::Reset(H3Code::MESSAGE_ERROR));
    let (ended, capsules) = pair.run_with(LIMIT, server).await.unwrap().unwrap();
    assert!(capsules);
    assert!(
        matches!(
            ended,
            Err(quic_h3::TunnelError::Malformed(
                quic_h3::capsule::CapsuleError::Truncated
            ))
        ),
        "{ended:?}"
    );
}
