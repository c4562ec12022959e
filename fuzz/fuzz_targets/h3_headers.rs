//! HTTP/3 field parsing (requests, responses, trailers, content-length) must never
//! panic, and what it accepts must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_h3::__private::{content_length, parse_request, parse_response, parse_trailers};

fuzz_target!(|data: &[u8]| {
    // Fields separated by 0xff; name and value by the first 0xfe.
    let list: Vec<(&[u8], &[u8])> = data
        .split(|&b| b == 0xff)
        .map(|f| match f.iter().position(|&b| b == 0xfe) {
            Some(at) => (&f[..at], &f[at + 1..]),
            None => (f, &[][..]),
        })
        .collect();
    if let Ok(parts) = parse_request(&list) {
        let _ = content_length(&parts.headers);
        assert!(parts.uri.path().starts_with('/') || parts.method == http::Method::CONNECT);
    }
    if let Ok(parts) = parse_response(&list) {
        let _ = content_length(&parts.headers);
    }
    if let Ok(trailers) = parse_trailers(&list) {
        assert!(trailers.keys().all(|k| !k.as_str().starts_with(':')));
    }
});
