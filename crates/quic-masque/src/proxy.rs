//! The proxy side of CONNECT-UDP: decide on a request, then relay its tunnel.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use quic_h3::DatagramTunnel;
use tokio::net::UdpSocket;

use crate::policy::TargetPolicy;
use crate::template::{Target, UriTemplate};
use crate::{CONNECT_UDP, MAX_UDP_PAYLOAD, UDP_PAYLOAD_CONTEXT};

/// How long a name may take to resolve before the request is refused (504).
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a proxy allows and how long tunnels live. Every limit is on by default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The path template requests must match. Default
    /// [`DEFAULT_TEMPLATE`](crate::DEFAULT_TEMPLATE).
    pub template: UriTemplate,
    /// The targets tunnels may reach. Default: no loopback, private, link-local,
    /// multicast or broadcast address ([`DENIED_BY_DEFAULT`](crate::DENIED_BY_DEFAULT)).
    pub targets: TargetPolicy,
    /// When set, requests must carry `proxy-authorization: Bearer <token>`; others are
    /// refused with 407.
    pub bearer_token: Option<String>,
    /// Refuse (403) requests on connections that presented no client certificate
    /// (the server must ask for one: mutual TLS).
    pub require_client_certificate: bool,
    /// A tunnel that carries nothing either way for this long is closed. Default 2
    /// minutes (RFC 9298 §3.1 asks for at least that).
    pub idle_timeout: Duration,
    /// Tunnels open at once; beyond, requests are refused with 503. Default 10,000.
    pub max_tunnels: usize,
    /// The name this proxy gives itself in `proxy-status` headers. Default `quay`.
    pub name: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            template: UriTemplate::default(),
            targets: TargetPolicy::default(),
            bearer_token: None,
            require_client_certificate: false,
            idle_timeout: Duration::from_secs(120),
            max_tunnels: 10_000,
            name: "quay".into(),
        }
    }
}

/// A request the proxy refused: the status and the `proxy-status` error (RFC 9209)
/// of its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The response status.
    pub status: StatusCode,
    /// The RFC 9209 error type (`destination_ip_prohibited`, `dns_error`, ...).
    pub error: &'static str,
    /// What went wrong, for the proxy's log and the `details` parameter.
    pub detail: String,
}

impl Refusal {
    fn new(status: StatusCode, error: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            error,
            detail: detail.into(),
        }
    }

    /// The response head to send, with its `proxy-status` header (and
    /// `proxy-authenticate` on a 407).
    pub fn response(&self, proxy_name: &str) -> http::Response<()> {
        let mut resp = http::Response::new(());
        *resp.status_mut() = self.status;
        let detail: String = self
            .detail
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .filter(|c| *c != '"' && *c != '\\')
            .collect();
        let value = format!("{proxy_name}; error={}; details=\"{detail}\"", self.error);
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert("proxy-status", v);
        }
        if self.status == StatusCode::PROXY_AUTHENTICATION_REQUIRED {
            resp.headers_mut().insert(
                http::header::PROXY_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
    }
}

/// What went through a tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelStats {
    /// UDP payloads sent to the target, and their bytes.
    pub packets_to_target: u64,
    /// Bytes of those.
    pub bytes_to_target: u64,
    /// UDP payloads received from the target.
    pub packets_from_target: u64,
    /// Bytes of those.
    pub bytes_from_target: u64,
    /// Payloads dropped: unknown context IDs, too large, or refused by the socket.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct Counters {
    packets_to_target: AtomicU64,
    bytes_to_target: AtomicU64,
    packets_from_target: AtomicU64,
    bytes_from_target: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> TunnelStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TunnelStats {
            packets_to_target: l(&self.packets_to_target),
            bytes_to_target: l(&self.bytes_to_target),
            packets_from_target: l(&self.packets_from_target),
            bytes_from_target: l(&self.bytes_from_target),
            dropped: l(&self.dropped),
        }
    }
}

fn bump(c: &AtomicU64, by: u64) {
    c.fetch_add(by, Ordering::Relaxed);
}

/// One open tunnel, as [`Proxy::tunnels`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TunnelInfo {
    /// The tunnel's number, unique for the proxy's life.
    pub id: u64,
    /// The target as the client named it.
    pub target: String,
    /// The address it resolved to.
    pub addr: SocketAddr,
    /// How long it has been open.
    pub age: Duration,
    /// What went through it so far.
    pub stats: TunnelStats,
}

#[derive(Debug)]
struct Record {
    target: String,
    addr: SocketAddr,
    opened: Instant,
    counters: Counters,
}

/// A CONNECT-UDP proxy: decides on each request ([`open`](Self::open)) and relays each
/// accepted tunnel ([`Accepted::run`]). Shared by every connection of a server.
#[derive(Debug)]
pub struct Proxy {
    config: ProxyConfig,
    tunnels: Mutex<HashMap<u64, Arc<Record>>>,
    next_id: AtomicU64,
    /// Counts of closed tunnels.
    closed: Counters,
}

impl Proxy {
    /// A proxy with `config`.
    pub fn new(config: ProxyConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            tunnels: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            closed: Counters::default(),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The tunnels open now.
    pub fn tunnels(&self) -> Vec<TunnelInfo> {
        let tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<TunnelInfo> = tunnels
            .iter()
            .map(|(id, r)| TunnelInfo {
                id: *id,
                target: r.target.clone(),
                addr: r.addr,
                age: r.opened.elapsed(),
                stats: r.counters.snapshot(),
            })
            .collect();
        out.sort_by_key(|t| t.id);
        out
    }

    /// What went through every tunnel, open and closed.
    pub fn totals(&self) -> TunnelStats {
        let mut t = self.closed.snapshot();
        for r in self
            .tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let s = r.counters.snapshot();
            t.packets_to_target += s.packets_to_target;
            t.bytes_to_target += s.bytes_to_target;
            t.packets_from_target += s.packets_from_target;
            t.bytes_from_target += s.bytes_from_target;
            t.dropped += s.dropped;
        }
        t
    }

    /// Decides on a request: checks it is a CONNECT-UDP request for the template,
    /// authorised, for a target the policy allows (resolving a name first), and
    /// opens the tunnel's UDP socket. On success, answer with
    /// [`Accepted::response`] and then [`run`](Accepted::run) the tunnel; otherwise
    /// with [`Refusal::response`].
    pub async fn open<B>(self: &Arc<Self>, req: &http::Request<B>) -> Result<Accepted, Refusal> {
        let c = &self.config;
        let protocol = req.extensions().get::<quic_h3::Protocol>();
        if req.method() != http::Method::CONNECT
            || protocol.is_none_or(|p| !p.0.eq_ignore_ascii_case(CONNECT_UDP))
        {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "http_request_error",
                "not an extended CONNECT with :protocol connect-udp",
            ));
        }
        if let Some(token) = &c.bearer_token {
            let given = req
                .headers()
                .get(http::header::PROXY_AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
                return Err(Refusal::new(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    "http_request_denied",
                    "missing or wrong bearer token",
                ));
            }
        }
        if c.require_client_certificate {
            let has_cert = req
                .extensions()
                .get::<quic_app::ConnectionInfo>()
                .is_some_and(|i| !i.peer_certificates().is_empty());
            if !has_cert {
                return Err(Refusal::new(
                    StatusCode::FORBIDDEN,
                    "http_request_denied",
                    "a client certificate is required",
                ));
            }
        }
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let Some(target) = c.template.match_target(path) else {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                "http_request_error",
                "the path does not name a target by this proxy's template",
            ));
        };
        if self.tunnels.lock().unwrap_or_else(|e| e.into_inner()).len() >= c.max_tunnels {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "connection_limit_reached",
                "too many tunnels",
            ));
        }
        let addr = self.resolve(&target).await?;
        let socket = bind_to(addr).await.map_err(|e| {
            Refusal::new(
                StatusCode::BAD_GATEWAY,
                "destination_unavailable",
                format!("cannot open a UDP socket to {addr}: {e}"),
            )
        })?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let record = Arc::new(Record {
            target: target.to_string(),
            addr,
            opened: Instant::now(),
            counters: Counters::default(),
        });
        self.tunnels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::clone(&record));
        tracing::debug!(id, target = %target, %addr, "tunnel opened");
        Ok(Accepted {
            proxy: Arc::clone(self),
            id,
            record,
            socket,
            target,
        })
    }

    /// The target's address, the first the policy allows.
    async fn resolve(&self, target: &Target) -> Result<SocketAddr, Refusal> {
        let addrs: Vec<SocketAddr> = match target.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, target.port)],
            Err(_) => {
                let lookup = tokio::net::lookup_host((target.host.as_str(), target.port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => addrs.collect(),
                    Ok(Err(e)) => {
                        return Err(Refusal::new(
                            StatusCode::BAD_GATEWAY,
                            "dns_error",
                            format!("{} does not resolve: {e}", target.host),
                        ));
                    }
                    Err(_) => {
                        return Err(Refusal::new(
                            StatusCode::GATEWAY_TIMEOUT,
                            "dns_timeout",
                            format!("{} did not resolve in time", target.host),
                        ));
                    }
                }
            }
        };
        addrs
            .iter()
            .copied()
            .find(|a| self.config.targets.permits(a.ip()))
            .ok_or_else(|| {
                Refusal::new(
                    StatusCode::FORBIDDEN,
                    "destination_ip_prohibited",
                    format!("{target} is not a target this proxy reaches"),
                )
            })
    }
}

/// Compares without an early exit, so that the time taken does not tell how much of
/// a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A UDP socket connected to `addr` (so that only its datagrams are read).
async fn bind_to(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = if addr.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    Ok(socket)
}

/// An accepted CONNECT-UDP request: its socket is open, its response not yet sent.
///
/// # Drop behavior
///
/// Dropped without [`run`](Self::run), the tunnel is forgotten and its socket closed.
#[derive(Debug)]
pub struct Accepted {
    proxy: Arc<Proxy>,
    id: u64,
    record: Arc<Record>,
    socket: UdpSocket,
    target: Target,
}

impl Accepted {
    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The address the target resolved to.
    pub fn addr(&self) -> SocketAddr {
        self.record.addr
    }

    /// The response head to send: 200 with `capsule-protocol: ?1`.
    pub fn response(&self) -> http::Response<()> {
        let mut resp = http::Response::new(());
        resp.headers_mut()
            .insert("capsule-protocol", http::HeaderValue::from_static("?1"));
        resp
    }

    /// Relays between the tunnel and the target until the client ends the stream,
    /// the stream fails, or nothing moves for the idle timeout; then closes both.
    /// Returns what went through.
    pub async fn run(self, mut tunnel: DatagramTunnel) -> TunnelStats {
        let counters = &self.record.counters;
        let idle = self.proxy.config.idle_timeout;
        let mut deadline = tokio::time::Instant::now() + idle;
        let mut buf = BytesMut::new();
        let mut scratch = vec![0u8; MAX_UDP_PAYLOAD].into_boxed_slice();
        let why = loop {
            tokio::select! {
                r = tunnel.recv() => match r {
                    Ok(Some(d)) => {
                        deadline = tokio::time::Instant::now() + idle;
                        match strip_context(&d) {
                            Some(payload) => match self.socket.send(payload).await {
                                Ok(_) => {
                                    bump(&counters.packets_to_target, 1);
                                    bump(&counters.bytes_to_target, payload.len() as u64);
                                }
                                // ICMP errors from earlier sends, a full buffer: the
                                // datagram is lost, as UDP may lose it.
                                Err(_) => bump(&counters.dropped, 1),
                            },
                            None => bump(&counters.dropped, 1),
                        }
                    }
                    Ok(None) => break "the client ended the stream",
                    Err(e) => {
                        tracing::debug!(id = self.id, error = %e, "tunnel failed");
                        break "the stream failed";
                    }
                },
                r = recv_with_context(&self.socket, &mut scratch, &mut buf) => match r {
                    Ok(datagram) => {
                        deadline = tokio::time::Instant::now() + idle;
                        let n = datagram.len() as u64 - 1;
                        if datagram.len() > tunnel.max_datagram_size() {
                            bump(&counters.dropped, 1);
                            continue;
                        }
                        match tunnel.send(datagram).await {
                            Ok(()) => {
                                bump(&counters.packets_from_target, 1);
                                bump(&counters.bytes_from_target, n);
                            }
                            Err(e) => {
                                tracing::debug!(id = self.id, error = %e, "tunnel failed");
                                break "the stream failed";
                            }
                        }
                    }
                    // ICMP port unreachable and the like: the target may come back.
                    Err(_) => bump(&counters.dropped, 1),
                },
                () = tokio::time::sleep_until(deadline) => break "idle timeout",
            }
        };
        let _ = tunnel.close().await;
        let stats = counters.snapshot();
        tracing::debug!(id = self.id, target = %self.target, why, ?stats, "tunnel closed");
        stats
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        let mut tunnels = self.proxy.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = tunnels.remove(&self.id) {
            let s = r.counters.snapshot();
            let c = &self.proxy.closed;
            bump(&c.packets_to_target, s.packets_to_target);
            bump(&c.bytes_to_target, s.bytes_to_target);
            bump(&c.packets_from_target, s.packets_from_target);
            bump(&c.bytes_from_target, s.bytes_from_target);
            bump(&c.dropped, s.dropped);
        }
    }
}

/// The UDP payload of an HTTP Datagram with context ID 0; `None` for other contexts
/// (none is registered) or a malformed one.
fn strip_context(datagram: &[u8]) -> Option<&[u8]> {
    match quic_h3::capsule::read_varint(datagram)? {
        (UDP_PAYLOAD_CONTEXT, len) => Some(&datagram[len..]),
        _ => None,
    }
}

/// Receives one datagram from the socket and makes it an HTTP Datagram payload
/// (context ID 0), built in `buf`.
async fn recv_with_context(
    socket: &UdpSocket,
    scratch: &mut [u8],
    buf: &mut BytesMut,
) -> std::io::Result<Bytes> {
    let n = socket.recv(scratch).await?;
    Ok(crate::udp_datagram(buf, &scratch[..n]))
}
