//! UDP proxying over HTTP/3: CONNECT-UDP (RFC 9298), the protocol of MASQUE proxies.
//!
//! A client asks a proxy, with an extended CONNECT request whose path names a target
//! host and port by a URI template, for a tunnel; the proxy opens a UDP socket to the
//! target and relays UDP payloads both ways as HTTP Datagrams (context ID 0), in QUIC
//! DATAGRAM frames or, where those were not negotiated, in DATAGRAM capsules on the
//! stream ([`quic_h3::DatagramTunnel`]). The tunnel lives as long as the stream.
//!
//! - Proxy: [`Proxy::open`] decides on a request (method and protocol, template,
//!   authorisation, tunnel limit, target policy after resolution) and opens the
//!   tunnel's socket; [`Accepted::run`] relays until the stream ends or the tunnel
//!   idles out. The `quay` crate's `masque` feature serves it from `quay::h3::Server`.
//! - Client: [`client::request`] builds the request, [`UdpTunnel::open`] waits for the
//!   answer, then [`UdpTunnel::send`]/[`recv`](UdpTunnel::recv) carry payloads, or
//!   [`UdpTunnel::relay`] serves them to any program through a local UDP socket.
//!
//! The proxy is closed by default: targets in loopback, private, link-local,
//! multicast and broadcast ranges are refused ([`DENIED_BY_DEFAULT`]) unless a
//! configuration allows them ([`TargetPolicy::allow`]), names are resolved before the
//! policy is applied (a name that resolves inside is refused too), and tunnels have a
//! limit ([`ProxyConfig::max_tunnels`]) and an idle timeout.
#![warn(missing_docs)]
#![doc(test(attr(deny(warnings))))]

pub mod client;
pub use client::{OpenError, RelayStats, UdpTunnel};

mod policy;
pub use policy::{DENIED_BY_DEFAULT, TargetPolicy};

mod proxy;
pub use proxy::{Accepted, Proxy, ProxyConfig, Refusal, TunnelInfo, TunnelStats};

mod template;
pub use template::{DEFAULT_TEMPLATE, Target, TemplateError, UriTemplate};

pub use ipnet::IpNet;

/// The `:protocol` of CONNECT-UDP requests.
pub const CONNECT_UDP: &str = "connect-udp";

/// The context ID of UDP payloads (RFC 9298 §4).
pub const UDP_PAYLOAD_CONTEXT: u64 = 0;

/// The largest UDP payload a tunnel carries (RFC 9298 §5: 65,527 bytes).
pub const MAX_UDP_PAYLOAD: usize = 65_527;

/// The bytes one allocation holds for the HTTP Datagrams a tunnel end builds.
const DATAGRAM_BUFFER: usize = 64 * 1024;

/// `payload` as an HTTP Datagram of context ID 0 (a single 0 byte, then the UDP
/// payload), split off the front of `buf`: one allocation serves many datagrams.
pub(crate) fn udp_datagram(buf: &mut bytes::BytesMut, payload: &[u8]) -> bytes::Bytes {
    if buf.capacity() < 1 + payload.len() {
        buf.reserve(DATAGRAM_BUFFER.max(1 + payload.len()));
    }
    // Context ID 0 is the one-byte varint 0x00.
    buf.extend_from_slice(&[0]);
    buf.extend_from_slice(payload);
    buf.split().freeze()
}
