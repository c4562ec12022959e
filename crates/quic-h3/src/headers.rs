//! Conversions between `http` types and HTTP/3 field lists (RFC 9114 §4.3).

use bytes::{Bytes, BytesMut};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use quiche::h3::{HeaderRef, NameValue};
use smallvec::SmallVec;

/// Fields that are connection-specific in HTTP/1.1 and must not appear in HTTP/3
/// (RFC 9114 §4.2).
const CONNECTION_SPECIFIC: [&str; 5] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
];

/// A field list borrowed from a message head: on the stack up to 12 fields, which
/// most heads fit.
pub(crate) type Fields<'a> = SmallVec<[HeaderRef<'a>; 12]>;

/// The field list of a request head, borrowed from it.
pub(crate) fn request_fields(parts: &http::request::Parts) -> Fields<'_> {
    let mut out = Fields::with_capacity(4 + parts.headers.len());
    out.push(HeaderRef::new(b":method", parts.method.as_str().as_bytes()));
    let scheme = parts.uri.scheme_str().unwrap_or("https");
    if parts.method != Method::CONNECT || extended_protocol(parts).is_some() {
        out.push(HeaderRef::new(b":scheme", scheme.as_bytes()));
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        out.push(HeaderRef::new(b":path", path.as_bytes()));
    }
    if let Some(authority) = parts.uri.authority() {
        out.push(HeaderRef::new(b":authority", authority.as_str().as_bytes()));
    }
    if let Some(protocol) = extended_protocol(parts) {
        out.push(HeaderRef::new(b":protocol", protocol.as_bytes()));
    }
    push_fields(&mut out, &parts.headers);
    out
}

/// The `:protocol` of an extended CONNECT request (RFC 9220), carried in the
/// request's extensions.
fn extended_protocol(parts: &http::request::Parts) -> Option<&str> {
    parts.extensions.get::<Protocol>().map(|p| p.0.as_str())
}

/// The `:protocol` pseudo-header of an extended CONNECT request (RFC 9220 §3),
/// stored in `http::Request::extensions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol(pub String);

/// Fills `out` with the field list of a response head, borrowed from it; with
/// `length` (its digits written into `digits`), a `content-length` field after the
/// head's own. (Filled in place: the list is too large to be returned without a copy.)
pub(crate) fn response_fields<'a>(
    parts: &'a http::response::Parts,
    length: Option<u64>,
    digits: &'a mut itoa::Buffer,
    out: &mut Fields<'a>,
) {
    out.reserve(2 + parts.headers.len());
    out.push(HeaderRef::new(b":status", parts.status.as_str().as_bytes()));
    push_fields(out, &parts.headers);
    if let Some(n) = length {
        out.push(HeaderRef::new(
            b"content-length",
            digits.format(n).as_bytes(),
        ));
    }
}

/// Whether a final response with this status may carry content, and so a
/// `content-length` that counts it: not a 204 or 304 (RFC 9110 §8.6, §15.3.5,
/// §15.4.5), nor an informational one.
pub(crate) fn may_carry_length(status: StatusCode) -> bool {
    !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// The field list of a trailer section, borrowed from it.
pub(crate) fn trailer_fields(trailers: &HeaderMap) -> Fields<'_> {
    let mut out = Fields::with_capacity(trailers.len());
    push_fields(&mut out, trailers);
    out
}

fn push_fields<'a>(out: &mut Fields<'a>, headers: &'a HeaderMap) {
    for (name, value) in headers {
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            continue;
        }
        // `http` keeps names lowercase, as HTTP/3 requires (RFC 9114 §4.2).
        out.push(HeaderRef::new(name.as_str().as_bytes(), value.as_bytes()));
    }
}

/// The size of a field section as RFC 9114 §4.2.2 counts it: name and value lengths
/// plus 32 per field.
pub(crate) fn section_size(fields: &[impl NameValue]) -> u64 {
    fields
        .iter()
        .map(|f| (f.name().len() + f.value().len() + 32) as u64)
        .sum()
}

/// SETTINGS_MAX_FIELD_SECTION_SIZE (RFC 9114 §7.2.4.1).
const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x6;

/// The peer's field section limit, once its SETTINGS arrived.
pub(crate) fn peer_field_section_limit(h3: &quiche::h3::Connection) -> Option<u64> {
    h3.peer_settings_raw()?
        .iter()
        .find(|(k, _)| *k == SETTINGS_MAX_FIELD_SECTION_SIZE)
        .map(|(_, v)| *v)
}

/// Builds a request head from a received field list.
pub(crate) fn parse_request(list: &[impl NameValue]) -> Result<http::request::Parts, &'static str> {
    parse_request_with(list, &mut LastAuthority::default())
}

/// The authority the last request of a connection named (in `:authority` or Host),
/// parsed: a connection's requests nearly always name the same one, which is then
/// neither parsed nor copied again (a clone shares its bytes).
#[derive(Debug, Default)]
pub(crate) struct LastAuthority(Option<Authority>);

impl LastAuthority {
    fn parse(&mut self, raw: &[u8]) -> Result<Authority, http::uri::InvalidUri> {
        if let Some(last) = &self.0
            && last.as_str().as_bytes() == raw
        {
            return Ok(last.clone());
        }
        let parsed = Authority::try_from(raw)?;
        self.0 = Some(parsed.clone());
        Ok(parsed)
    }
}

/// [`parse_request`], with the authority of the connection's last request.
pub(crate) fn parse_request_with(
    list: &[impl NameValue],
    last: &mut LastAuthority,
) -> Result<http::request::Parts, &'static str> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut protocol = None;
    // The path's bytes go into the buffer of the field values, if there is one.
    let (headers, rest) = split_fields_keeping(list, b":path", |name, value| {
        let slot = match name {
            b":method" => &mut method,
            b":scheme" => &mut scheme,
            b":authority" => &mut authority,
            b":path" => &mut path,
            b":protocol" => &mut protocol,
            _ => return Err("unknown pseudo-header in request"),
        };
        if slot.replace(value).is_some() {
            return Err("duplicate pseudo-header");
        }
        Ok(())
    })?;
    let method =
        Method::from_bytes(method.ok_or("missing :method")?).map_err(|_| "invalid :method")?;
    if protocol.is_some() && method != Method::CONNECT {
        // RFC 9220 §4: :protocol only on an extended CONNECT.
        return Err(":protocol in a request that is not CONNECT");
    }
    if authority.is_some_and(<[u8]>::is_empty) {
        return Err("empty :authority");
    }
    // RFC 9114 §4.2: TE may only say "trailers". (Many heads carry no regular field:
    // then there is nothing to look up.)
    let regular = !headers.is_empty();
    if regular
        && headers
            .get_all(http::header::TE)
            .iter()
            .any(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        return Err("te other than trailers");
    }
    // RFC 9114 §4.3.1: Host, when present with :authority, must carry the same value.
    let host = if regular {
        let mut hosts = headers.get_all(http::header::HOST).iter();
        let host = hosts.next();
        if hosts.next().is_some() {
            return Err("more than one host");
        }
        host
    } else {
        None
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("empty host");
        }
        if authority.is_some_and(|a| a != host.as_bytes()) {
            return Err("host disagrees with :authority");
        }
    }
    // The URI's parts and the request's are filled in place: the `http` builders move
    // their whole state through every step.
    let invalid_target = |_| "invalid request target";
    let mut uri = http::uri::Parts::default();
    if method == Method::CONNECT && protocol.is_none() {
        // RFC 9114 §4.4: a CONNECT request carries only :method and :authority.
        if scheme.is_some() || path.is_some() {
            return Err(":scheme or :path in a CONNECT request");
        }
        let authority = authority.ok_or("missing :authority in CONNECT")?;
        uri.authority = Some(last.parse(authority).map_err(invalid_target)?);
    } else {
        // RFC 9114 §4.3.1: :method, :scheme and :path are required.
        let scheme = scheme.ok_or("missing :scheme")?;
        let path = path.filter(|p| !p.is_empty()).ok_or("missing :path")?;
        let authority = authority.or(host.map(HeaderValue::as_bytes));
        if authority.is_none() && (scheme == b"https" || scheme == b"http") {
            // RFC 9114 §4.3.1: http and https require an authority, in :authority or
            // Host.
            return Err("missing :authority and host");
        }
        uri.scheme = Some(match scheme {
            b"https" => Scheme::HTTPS,
            b"http" => Scheme::HTTP,
            other => Scheme::try_from(other).map_err(invalid_target)?,
        });
        let path_and_query = match rest {
            Some(mut rest) => {
                rest.extend_from_slice(path);
                PathAndQuery::from_maybe_shared(rest.freeze())
            }
            None => PathAndQuery::try_from(path),
        };
        uri.path_and_query = Some(path_and_query.map_err(invalid_target)?);
        if let Some(a) = authority {
            uri.authority = Some(last.parse(a).map_err(invalid_target)?);
        }
    }
    let uri = Uri::from_parts(uri).map_err(|_| "invalid request target")?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = method;
    // The defaults replaced own nothing (`Uri::default` and `HeaderMap::new` do not
    // allocate): forgotten rather than dropped.
    std::mem::forget(std::mem::replace(&mut parts.uri, uri));
    std::mem::forget(std::mem::replace(&mut parts.headers, headers));
    parts.version = http::Version::HTTP_3;
    if let Some(p) = protocol {
        let p = std::str::from_utf8(p).map_err(|_| "invalid :protocol")?;
        parts.extensions.insert(Protocol(p.to_owned()));
    }
    Ok(parts)
}

/// The `content-length` of a message head (RFC 9110 §8.6): `Ok(None)` without one,
/// `Err` when it is not a number or its values disagree.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    if headers.is_empty() {
        return Ok(None);
    }
    let mut length = None;
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        // A list ("5, 5") is allowed if every member is the same number.
        for member in value.as_bytes().split(|&b| b == b',') {
            let member = member.trim_ascii();
            if member.is_empty() || !member.iter().all(u8::is_ascii_digit) {
                return Err("invalid content-length");
            }
            let n = std::str::from_utf8(member)
                .ok()
                .and_then(|m| m.parse::<u64>().ok())
                .ok_or("invalid content-length")?;
            if length.replace(n).is_some_and(|l| l != n) {
                return Err("content-length values disagree");
            }
        }
    }
    Ok(length)
}

/// Builds a response head from a received field list.
pub(crate) fn parse_response(
    list: &[impl NameValue],
) -> Result<http::response::Parts, &'static str> {
    let mut status = None;
    let headers = split_fields(list, |name, value| {
        if name != b":status" {
            return Err("unknown pseudo-header in response");
        }
        if status.replace(value).is_some() {
            return Err("duplicate :status");
        }
        Ok(())
    })?;
    let status =
        StatusCode::from_bytes(status.ok_or("missing :status")?).map_err(|_| "invalid :status")?;
    let (mut parts, ()) = http::Response::builder()
        .status(status)
        .version(http::Version::HTTP_3)
        .body(())
        .map_err(|_| "invalid response head")?
        .into_parts();
    parts.headers = headers;
    Ok(parts)
}

/// Builds a trailer section; pseudo-headers are not allowed in it.
pub(crate) fn parse_trailers(list: &[impl NameValue]) -> Result<HeaderMap, &'static str> {
    split_fields(list, |_, _| Err("pseudo-header in trailers"))
}

/// Splits pseudo-headers (handed to `pseudo`) from regular fields, enforcing that
/// pseudo-headers come first (RFC 9114 §4.3) and names are valid lowercase tokens.
fn split_fields<'a, F: NameValue>(
    list: &'a [F],
    pseudo: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), &'static str>,
) -> Result<HeaderMap, &'static str> {
    split_fields_keeping(list, b"", pseudo).map(|(headers, _)| headers)
}

/// [`split_fields`], keeping room for the value of the pseudo-header named `keep`
/// (none if it is empty or absent): two values or more, that one counted, share one
/// buffer (one allocation and its shared count) rather than one allocation each, and
/// the rest of that buffer, with the room kept, comes back beside the fields.
fn split_fields_keeping<'a, F: NameValue>(
    list: &'a [F],
    keep: &[u8],
    mut pseudo: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), &'static str>,
) -> Result<(HeaderMap, Option<BytesMut>), &'static str> {
    let (mut regular, mut value_bytes, mut kept) = (0, 0, 0);
    for f in list {
        if f.name().first() != Some(&b':') {
            regular += 1;
            value_bytes += f.value().len();
        } else if kept == 0 && !keep.is_empty() && f.name() == keep {
            kept = f.value().len();
        }
    }
    // Sized for the regular fields only: a head with none allocates no map.
    let mut headers = HeaderMap::with_capacity(regular);
    let mut values =
        (regular + usize::from(kept > 0) > 1).then(|| BytesMut::with_capacity(value_bytes + kept));
    let mut regular_seen = false;
    for field in list {
        let (name, value) = (field.name(), field.value());
        if name.first() == Some(&b':') {
            if regular_seen {
                return Err("pseudo-header after regular fields");
            }
            pseudo(name, value)?;
            continue;
        }
        regular_seen = true;
        if name.iter().any(u8::is_ascii_uppercase) {
            return Err("uppercase field name");
        }
        let name = HeaderName::from_bytes(name).map_err(|_| "invalid field name")?;
        if CONNECTION_SPECIFIC.contains(&name.as_str()) {
            return Err("connection-specific field");
        }
        let value = match values.as_mut() {
            Some(values) => {
                values.extend_from_slice(value);
                values.split_to(value.len()).freeze()
            }
            None => Bytes::copy_from_slice(value),
        };
        let value = HeaderValue::from_maybe_shared(value).map_err(|_| "invalid field value")?;
        headers.append(name, value);
    }
    Ok((headers, values))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heads_field_values_share_one_buffer() {
        let list = [
            h(":method", "GET"),
            h(":scheme", "https"),
            h(":authority", "example.org"),
            h(":path", "/"),
            h("accept", "text/html"),
            h("user-agent", "test/1.0"),
            h("accept-language", "en"),
            h("x-empty", ""),
            h("cookie", "a=1"),
        ];
        let parts = parse_request(&list).unwrap();
        let values: Vec<&[u8]> = [
            "accept",
            "user-agent",
            "accept-language",
            "x-empty",
            "cookie",
        ]
        .iter()
        .map(|n| parts.headers[*n].as_bytes())
        .collect();
        assert_eq!(values, [&b"text/html"[..], b"test/1.0", b"en", b"", b"a=1"]);
        // Each value follows the one before it in the same buffer.
        for pair in values.windows(2) {
            assert_eq!(
                pair[0].as_ptr_range().end,
                pair[1].as_ptr(),
                "{:?} and {:?} are neighbours",
                pair[0],
                pair[1]
            );
        }
    }

    #[test]
    fn a_requests_path_shares_the_buffer_of_its_field_values() {
        let list = [
            h(":method", "POST"),
            h(":scheme", "https"),
            h(":authority", "example.org"),
            h(":path", "/bytes/4096?x=1"),
            h("content-length", "512"),
        ];
        let parts = parse_request(&list).unwrap();
        let value = parts.headers["content-length"].as_bytes();
        let path = parts.uri.path_and_query().unwrap().as_str();
        assert_eq!((value, path), (&b"512"[..], "/bytes/4096?x=1"));
        assert_eq!(
            value.as_ptr_range().end,
            path.as_ptr(),
            "the path follows the value"
        );
        // Without a regular field, the path is copied on its own; an invalid one is
        // refused either way.
        let parts = parse_request(&list[..4]).unwrap();
        assert_eq!(parts.uri.path_and_query().unwrap(), "/bytes/4096?x=1");
        for list in [&list[..], &list[..4]] {
            let mut list = list.to_vec();
            list[3] = h(":path", "/a b");
            assert_eq!(parse_request(&list).unwrap_err(), "invalid request target");
        }
    }

    fn h(n: &str, v: &str) -> quiche::h3::Header {
        quiche::h3::Header::new(n.as_bytes(), v.as_bytes())
    }

    #[test]
    fn a_request_round_trips() {
        let req = http::Request::builder()
            .method("POST")
            .uri("https://example.org:4433/a/b?c=d")
            .header("x-one", "1")
            .header("connection", "close")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let fields = request_fields(&parts);
        assert!(fields.iter().all(|f| f.name() != b"connection"));
        let back = parse_request(&fields).unwrap();
        assert_eq!(back.method, Method::POST);
        assert_eq!(back.uri, "https://example.org:4433/a/b?c=d");
        assert_eq!(back.headers["x-one"], "1");
    }

    #[test]
    fn a_connection_reuses_its_last_authority_only_when_the_bytes_are_the_same() {
        let get = |authority: &str| {
            [
                h(":method", "GET"),
                h(":scheme", "https"),
                h(":authority", authority),
                h(":path", "/"),
            ]
        };
        let mut last = LastAuthority::default();
        let one = parse_request_with(&get("a.example:4433"), &mut last).unwrap();
        let two = parse_request_with(&get("a.example:4433"), &mut last).unwrap();
        let (one, two) = (one.uri.authority().unwrap(), two.uri.authority().unwrap());
        assert_eq!(two, "a.example:4433");
        // The second shares the first's bytes: it was not parsed and copied again.
        assert_eq!(one.as_str().as_ptr(), two.as_str().as_ptr());

        let other = parse_request_with(&get("A.example:4433"), &mut last).unwrap();
        assert_eq!(other.uri.authority().unwrap().as_str(), "A.example:4433");
        let host_only = [
            h(":method", "GET"),
            h(":scheme", "https"),
            h(":path", "/"),
            h("host", "b.example"),
        ];
        let host = parse_request_with(&host_only, &mut last).unwrap();
        assert_eq!(host.uri.authority().unwrap().as_str(), "b.example");
        assert!(parse_request_with(&get("bad authority"), &mut last).is_err());
        let again = parse_request_with(&get("b.example"), &mut last).unwrap();
        assert_eq!(again.uri, "https://b.example/");
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert!(parse_request(&[h(":method", "GET"), h(":path", "/")]).is_err());
        assert!(
            parse_request(&[
                h(":method", "GET"),
                h(":scheme", "https"),
                h("x", "1"),
                h(":path", "/")
            ])
            .is_err()
        );
        assert!(
            parse_request(&[
                h(":method", "GET"),
                h(":method", "GET"),
                h(":scheme", "https"),
                h(":path", "/")
            ])
            .is_err()
        );
        assert!(
            parse_request(&[
                h(":method", "GET"),
                h(":scheme", "https"),
                h(":path", "/"),
                h("Upper", "1")
            ])
            .is_err()
        );
        assert!(parse_trailers(&[h(":status", "200")]).is_err());
        assert!(parse_response(&[h(":status", "2000")]).is_err());
    }
}
