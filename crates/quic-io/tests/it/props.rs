//! Properties of the router's parsers and answers, on stable in every test run; the
//! fuzz targets in `fuzz/` check the same with coverage guidance.

use proptest::prelude::*;
use quic_io::__private::{
    RetryTokenCheck, RouterHarness, Routing, parse_routing_header, write_reset,
};

use super::util::{real_initial, server_params};

proptest! {
    #[test]
    fn the_routing_header_parser_stays_inside_its_input(
        data in proptest::collection::vec(any::<u8>(), 0..64),
        cid_len in 1usize..=20,
    ) {
        match parse_routing_header(&data, cid_len) {
            Some(Routing::Short { dcid }) => prop_assert_eq!(dcid.len(), cid_len),
            Some(Routing::Long { version, dcid, scid, .. }) => {
                // RFC 8999 allows 255-byte IDs; the versions quiche speaks, 20.
                if quiche::version_is_supported(version) {
                    prop_assert!(dcid.len() <= 20 && scid.len() <= 20);
                }
                prop_assert!(1 + 4 + 1 + dcid.len() + 1 + scid.len() <= data.len());
            }
            None => {}
        }
    }

    #[test]
    fn a_stateless_reset_is_shorter_than_its_trigger_and_ends_with_the_token(
        token in any::<[u8; 16]>(),
        received in 0usize..3000,
        room in 0usize..1500,
    ) {
        let mut out = vec![0u8; room];
        match write_reset(&token, received, &mut out) {
            Some(len) => {
                // RFC 9000 §10.3: at least 21 bytes, smaller than the trigger, a short
                // header's first bits, the token last.
                prop_assert!((21..received).contains(&len) && len <= room);
                prop_assert_eq!(out[0] & 0xc0, 0x40);
                prop_assert_eq!(&out[len - 16..len], &token[..]);
            }
            None => prop_assert!(received <= 21 || room < 21),
        }
    }

    #[test]
    fn no_forged_retry_token_is_accepted(data in proptest::collection::vec(any::<u8>(), 0..64)) {
        prop_assert!(!RetryTokenCheck::new().accepts(&data));
    }
}

proptest! {
    // Each case builds a listener's router: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_router_survives_any_datagrams(
        datagrams in proptest::collection::vec(
            (proptest::collection::vec(any::<u8>(), 0..1400), any::<u8>(), any::<u16>()),
            1..8,
        ),
        flips in proptest::collection::vec((any::<u16>(), 0u8..8), 0..6),
    ) {
        let (params, _, _) = server_params();
        let mut router = RouterHarness::new(params).unwrap();
        for (bytes, host, port) in &datagrams {
            let from = std::net::SocketAddr::from(([127, 0, 3, *host], *port));
            router.route(bytes, from);
        }
        // A real Initial with a few bits flipped: deeper into the accept path.
        let mut initial = real_initial();
        for (at, bit) in &flips {
            let at = usize::from(*at) % initial.len();
            initial[at] ^= 1 << bit;
        }
        router.route(&initial, "127.0.3.1:4433".parse().unwrap());
        prop_assert!(router.connections() <= 1);
    }
}
