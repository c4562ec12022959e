//! The HTTP Datagram varint codec must never read outside its input, and what it
//! writes must read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_h3::__private::{get_varint, put_varint};

fuzz_target!(|data: &[u8]| {
    if let Some((v, len)) = get_varint(data) {
        assert!(len <= data.len());
        let mut out = Vec::new();
        put_varint(&mut out, v);
        // The shortest encoding reads back to the same value.
        assert_eq!(get_varint(&out), Some((v, out.len())));
        assert!(out.len() <= len);
    }
});
