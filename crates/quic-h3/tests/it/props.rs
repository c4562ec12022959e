//! Properties of the HTTP/3 parsers and codecs, on stable in every test run; the fuzz
//! targets in `fuzz/` check the same with coverage guidance.

use proptest::prelude::*;
use quic_h3::__private::{
    content_length, get_varint, parse_request, parse_response, parse_trailers, put_varint,
    request_fields,
};

/// Field lists of arbitrary bytes, pseudo-header names likely.
fn field_lists() -> impl Strategy<Value = Vec<(Vec<u8>, Vec<u8>)>> {
    let name = prop_oneof![
        Just(b":method".to_vec()),
        Just(b":scheme".to_vec()),
        Just(b":authority".to_vec()),
        Just(b":path".to_vec()),
        Just(b":protocol".to_vec()),
        Just(b":status".to_vec()),
        Just(b"content-length".to_vec()),
        Just(b"host".to_vec()),
        Just(b"te".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    let value = prop_oneof![
        Just(b"GET".to_vec()),
        Just(b"CONNECT".to_vec()),
        Just(b"https".to_vec()),
        Just(b"/".to_vec()),
        Just(b"200".to_vec()),
        Just(b"5".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..24),
    ];
    proptest::collection::vec((name, value), 0..10)
}

fn as_refs(list: &[(Vec<u8>, Vec<u8>)]) -> Vec<(&[u8], &[u8])> {
    list.iter()
        .map(|(n, v)| (n.as_slice(), v.as_slice()))
        .collect()
}

proptest! {
    #[test]
    fn field_parsers_never_panic(list in field_lists()) {
        let refs = as_refs(&list);
        if let Ok(parts) = parse_request(&refs) {
            // What was accepted is self-consistent.
            let _ = content_length(&parts.headers);
            prop_assert!(parts.uri.path().starts_with('/') || parts.method == http::Method::CONNECT);
        }
        if let Ok(parts) = parse_response(&refs) {
            let _ = content_length(&parts.headers);
        }
        if let Ok(t) = parse_trailers(&refs) {
            prop_assert!(t.keys().all(|k| !k.as_str().starts_with(':')));
        }
    }

    #[test]
    fn a_valid_request_head_reads_back_as_sent(
        method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("DELETE")],
        authority in "[a-z]{1,10}(:[0-9]{1,4})?",
        path in "/[a-z0-9/]{0,20}(\\?[a-z=&]{0,10})?",
        headers in proptest::collection::vec(("x-[a-z]{1,8}", "[ -~]{0,16}"), 0..6),
    ) {
        let mut b = http::Request::builder()
            .method(method)
            .uri(format!("https://{authority}{path}"));
        for (n, v) in &headers {
            b = b.header(n.as_str(), v.trim());
        }
        let (parts, ()) = b.body(()).unwrap().into_parts();
        let fields = request_fields(&parts);
        let back = parse_request(&as_refs(&fields)).unwrap();
        prop_assert_eq!(&back.method, &parts.method);
        prop_assert_eq!(&back.uri, &parts.uri);
        prop_assert_eq!(&back.headers, &parts.headers);
    }

    #[test]
    fn content_length_is_one_number_or_refused(values in proptest::collection::vec(0u64..1000, 1..4)) {
        let mut h = http::HeaderMap::new();
        for v in &values {
            h.append(http::header::CONTENT_LENGTH, (*v).into());
        }
        let all_same = values.iter().all(|v| *v == values[0]);
        match content_length(&h) {
            Ok(Some(n)) => prop_assert!(all_same && n == values[0]),
            Ok(None) => prop_assert!(false, "a content-length was there"),
            Err(_) => prop_assert!(!all_same),
        }
    }

    #[test]
    fn varints_round_trip(v in 0u64..(1 << 62)) {
        let mut out = Vec::new();
        put_varint(&mut out, v);
        prop_assert_eq!(get_varint(&out), Some((v, out.len())));
        // Any prefix is refused, never misread.
        prop_assert_eq!(get_varint(&out[..out.len() - 1]), None);
    }

    #[test]
    fn varint_reads_stay_inside_the_input(buf in proptest::collection::vec(any::<u8>(), 0..12)) {
        if let Some((v, len)) = get_varint(&buf) {
            prop_assert!(len <= buf.len() && [1, 2, 4, 8].contains(&len));
            prop_assert!(v < 1 << 62);
        }
    }
}
