//! The router's allocation-free header parser must never panic, and what it returns
//! must lie inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_io::__private::{Routing, parse_routing_header};

fuzz_target!(|data: &[u8]| {
    for cid_len in [1usize, 8, 16, 20] {
        match parse_routing_header(data, cid_len) {
            Some(Routing::Short { dcid }) => assert_eq!(dcid.len(), cid_len),
            Some(Routing::Long { dcid, scid, .. }) => {
                assert!(1 + 4 + 1 + dcid.len() + 1 + scid.len() <= data.len());
            }
            None => {}
        }
    }
});
