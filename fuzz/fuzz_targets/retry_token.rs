//! Retry token validation must never panic and must accept no forged token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_io::__private::RetryTokenCheck;

fuzz_target!(|data: &[u8]| {
    let check = RetryTokenCheck::new();
    // Random bytes are never a valid token for any address.
    assert!(!check.accepts(data));
    // A real token survives; any single flipped bit in it does not.
    let token = check.mint();
    assert!(check.accepts(&token));
    if let Some(&b) = data.first() {
        let mut bad = token.clone();
        let at = usize::from(b) % bad.len();
        bad[at] ^= 1 << (b % 8);
        assert!(!check.accepts(&bad));
    }
});
