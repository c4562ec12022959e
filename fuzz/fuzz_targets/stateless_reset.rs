//! A stateless reset is always shorter than what triggered it, at least 21 bytes, and
//! ends with its token (RFC 9000 §10.3).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quic_io::__private::write_reset;

fuzz_target!(|data: &[u8]| {
    if data.len() < 20 {
        return;
    }
    let token: [u8; 16] = data[..16].try_into().unwrap();
    let received = usize::from(u16::from_be_bytes([data[16], data[17]]));
    let room = usize::from(u16::from_be_bytes([data[18], data[19]])) % 2048;
    let mut out = vec![0u8; room];
    if let Some(len) = write_reset(&token, received, &mut out) {
        assert!((21..received).contains(&len) && len <= room);
        assert_eq!(out[0] & 0xc0, 0x40);
        assert_eq!(&out[len - 16..len], &token);
    } else {
        assert!(received <= 21 || room < 21);
    }
});
