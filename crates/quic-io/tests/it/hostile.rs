use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use quic_app::echo::EchoClient;
use quic_io::{DropReason, RejectReason, ResetKey};

use super::util::{client_params, echo_listener, raw_socket, real_initial};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_with_an_unsupported_version_gets_version_negotiation() {
    let server = echo_listener(|_| {});
    let sock = raw_socket();
    let dcid = [0xd1; 8];
    let scid = [0x5c; 5];
    let mut pkt = vec![0xc0];
    pkt.extend_from_slice(&0x1a2a_3a4au32.to_be_bytes());
    pkt.push(dcid.len() as u8);
    pkt.extend_from_slice(&dcid);
    pkt.push(scid.len() as u8);
    pkt.extend_from_slice(&scid);
    pkt.resize(1200, 0);
    sock.send_to(&pkt, server.addr).unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = sock.recv_from(&mut buf).unwrap();
    let vn = &buf[..len];
    // RFC 9000 §17.2.1: long header, version 0, DCID = our SCID, SCID = our DCID.
    assert_eq!(vn[0] & 0x80, 0x80);
    assert_eq!(&vn[1..5], &[0, 0, 0, 0]);
    assert_eq!(vn[5] as usize, scid.len());
    assert_eq!(&vn[6..6 + scid.len()], &scid);
    let at = 6 + scid.len();
    assert_eq!(vn[at] as usize, dcid.len());
    assert_eq!(&vn[at + 1..at + 1 + dcid.len()], &dcid);
    let versions: Vec<u32> = vn[at + 1 + dcid.len()..]
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
        .collect();
    assert!(versions.contains(&1), "{versions:x?}");

    // The same packet below 1200 bytes gets no answer (RFC 9000 §14.1).
    sock.send_to(&pkt[..600], server.addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    assert!(sock.recv_from(&mut buf).is_err());
    // Read after the quiet period: the router counts a packet once its send returned.
    let m = server.metrics.snapshot();
    assert_eq!(m.version_negotiations_sent, 1);
    assert_eq!(m.dropped(DropReason::VersionNegotiationSuppressed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_header_packet_for_an_unknown_cid_gets_a_stateless_reset() {
    let key = [0x42; 32];
    let server = echo_listener(|p| p.reset_key = ResetKey::from_bytes(key));
    let sock = raw_socket();
    let dcid = [0xab; quic_io::DEFAULT_CID_LEN];
    let mut pkt = vec![0x41];
    pkt.extend_from_slice(&dcid);
    pkt.resize(100, 0x33);
    sock.send_to(&pkt, server.addr).unwrap();
    let mut buf = [0u8; 1500];
    let (len, _) = sock.recv_from(&mut buf).unwrap();
    assert!(len < pkt.len() && len >= 21, "reset of {len} bytes");
    assert_eq!(buf[0] & 0xc0, 0x40, "looks like a short header");
    let token = ResetKey::from_bytes(key).token(&dcid);
    assert_eq!(&buf[len - 16..len], &token);

    // Too short to be answered with a smaller packet: no reset.
    sock.send_to(&pkt[..21], server.addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    assert!(sock.recv_from(&mut buf).is_err());
    let m = server.metrics.snapshot();
    assert_eq!(m.stateless_resets_sent, 1);
    assert_eq!(m.dropped(DropReason::ResetSuppressed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_mangled_packets_are_survived_and_counted() {
    let server = echo_listener(|_| {});
    let sock = raw_socket();
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    let mut buf = vec![0u8; 1500];
    for i in 0..10_000 {
        let len = rng.random_range(1..=1400);
        rng.fill(&mut buf[..len]);
        if i % 4 == 0 {
            // A quarter look like long headers, to reach deeper into the parser.
            buf[0] |= 0xc0;
        }
        sock.send_to(&buf[..len], server.addr).unwrap();
        if i % 500 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let initial = real_initial();
    for i in 0..1_000 {
        let mut pkt = initial.clone();
        if i % 2 == 0 {
            pkt.truncate(rng.random_range(1..initial.len()));
        } else {
            for _ in 0..rng.random_range(1..8) {
                let at = rng.random_range(0..pkt.len());
                pkt[at] ^= 1 << rng.random_range(0..8);
            }
        }
        sock.send_to(&pkt, server.addr).unwrap();
    }
    // A real client still gets through and echoes.
    let (app, report) = EchoClient::new(2, 20_000);
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), app)
        .await
        .unwrap();
    assert!(report.await.unwrap().is_ok());
    conn.closed().await;

    let m = server.metrics.snapshot();
    let dropped: u64 = m.datagrams_dropped.iter().map(|(_, n)| n).sum();
    let rejected: u64 = m.initials_rejected.iter().map(|(_, n)| n).sum();
    // Everything but the real client was turned away, and counted as such. (The
    // kernel may drop some datagrams of the burst before the router reads them.)
    assert!(
        dropped + rejected + m.stateless_resets_sent + m.version_negotiations_sent > 5_000,
        "{m:?}"
    );
    assert!(m.dropped(DropReason::Malformed) > 0, "{m:?}");
    assert!(m.rejected(RejectReason::TooShort) > 0, "{m:?}");
    assert!(m.rejected(RejectReason::InvalidInitial) > 0, "{m:?}");
    assert_eq!(m.initials_accepted, 1, "{m:?}");
}
