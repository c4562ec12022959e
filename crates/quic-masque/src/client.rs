//! The client side of CONNECT-UDP: the request, and the tunnel once the proxy
//! accepted it.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use quic_h3::{ConnectStream, DatagramTunnel, StreamError, TunnelError};
use tokio::net::UdpSocket;

use crate::template::UriTemplate;
use crate::{CONNECT_UDP, MAX_UDP_PAYLOAD, UDP_PAYLOAD_CONTEXT};

/// Why a tunnel did not open.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The proxy refused: its status and `proxy-status` header.
    #[error("the proxy refused with {status}{}", proxy_status.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Refused {
        /// The response status.
        status: http::StatusCode,
        /// The `proxy-status` header, if any.
        proxy_status: Option<String>,
    },
    /// The stream failed before the response.
    #[error(transparent)]
    Stream(#[from] StreamError),
}

/// The extended CONNECT request for a tunnel to `host:port` through the proxy at
/// `proxy` (its scheme and authority are used), by `template`; with `token`, the
/// `proxy-authorization: Bearer` header.
pub fn request(
    proxy: &http::Uri,
    template: &UriTemplate,
    host: &str,
    port: u16,
    token: Option<&str>,
) -> Result<http::Request<()>, http::Error> {
    let authority = proxy.authority().map_or("", http::uri::Authority::as_str);
    let scheme = proxy.scheme_str().unwrap_or("https");
    let uri = format!("{scheme}://{authority}{}", template.expand(host, port));
    let mut req = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(uri)
        .header("capsule-protocol", "?1")
        .extension(quic_h3::Protocol(CONNECT_UDP.into()));
    if let Some(token) = token {
        req = req.header(http::header::PROXY_AUTHORIZATION, format!("Bearer {token}"));
    }
    req.body(())
}

/// An open CONNECT-UDP tunnel: UDP payloads to and from the target.
#[derive(Debug)]
pub struct UdpTunnel {
    tunnel: DatagramTunnel,
    /// Where outgoing datagrams are built.
    out: BytesMut,
}

/// What a [`relay`](UdpTunnel::relay) carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStats {
    /// Datagrams from the local socket into the tunnel.
    pub sent: u64,
    /// Datagrams from the tunnel to the local peer.
    pub received: u64,
    /// Datagrams dropped: too large for the tunnel, unknown contexts, or before any
    /// local peer.
    pub dropped: u64,
}

impl UdpTunnel {
    /// Waits for the proxy's answer on an opened stream; a tunnel on 2xx.
    pub async fn open(stream: ConnectStream) -> Result<Self, OpenError> {
        let ConnectStream {
            send,
            response,
            datagrams,
            ..
        } = stream;
        let resp = response.await?;
        if !resp.status().is_success() {
            return Err(OpenError::Refused {
                status: resp.status(),
                proxy_status: resp
                    .headers()
                    .get("proxy-status")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            });
        }
        Ok(Self {
            tunnel: DatagramTunnel::new(datagrams, resp.into_body(), send),
            out: BytesMut::new(),
        })
    }

    /// The largest UDP payload [`send`](Self::send) takes.
    pub fn max_payload(&self) -> usize {
        self.tunnel
            .max_datagram_size()
            .saturating_sub(1)
            .min(MAX_UDP_PAYLOAD)
    }

    /// Sends a UDP payload to the target.
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), TunnelError> {
        let datagram = crate::udp_datagram(&mut self.out, payload);
        self.tunnel.send(datagram).await
    }

    /// The next UDP payload from the target; `None` once the proxy ended the tunnel.
    /// Datagrams of other contexts are skipped.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TunnelError> {
        loop {
            let Some(mut d) = self.tunnel.recv().await? else {
                return Ok(None);
            };
            if let Some((UDP_PAYLOAD_CONTEXT, len)) = quic_h3::capsule::read_varint(&d) {
                return Ok(Some(d.split_off(len)));
            }
        }
    }

    /// Ends the tunnel.
    pub async fn close(self) -> Result<(), TunnelError> {
        self.tunnel.close().await
    }

    /// Relays between `socket` and the tunnel until the tunnel ends: what the socket
    /// receives goes to the target, and what the target sends goes to the address the
    /// socket last heard from. Any UDP program can then use the tunnel by sending to
    /// the socket's address.
    pub async fn relay(mut self, socket: UdpSocket) -> Result<RelayStats, TunnelError> {
        let mut stats = RelayStats::default();
        let mut peer: Option<SocketAddr> = None;
        let mut scratch = vec![0u8; MAX_UDP_PAYLOAD].into_boxed_slice();
        loop {
            tokio::select! {
                r = self.tunnel.recv() => {
                    let Some(d) = r? else {
                        return Ok(stats);
                    };
                    match (quic_h3::capsule::read_varint(&d), peer) {
                        (Some((UDP_PAYLOAD_CONTEXT, len)), Some(to)) => {
                            // A local peer that went away: the datagram is lost.
                            if socket.send_to(&d[len..], to).await.is_ok() {
                                stats.received += 1;
                            } else {
                                stats.dropped += 1;
                            }
                        }
                        _ => stats.dropped += 1,
                    }
                }
                r = socket.recv_from(&mut scratch) => {
                    let Ok((n, from)) = r else {
                        // An ICMP error for an earlier send: the local peer is gone.
                        stats.dropped += 1;
                        continue;
                    };
                    peer = Some(from);
                    if 1 + n > self.tunnel.max_datagram_size() {
                        stats.dropped += 1;
                        continue;
                    }
                    let datagram = crate::udp_datagram(&mut self.out, &scratch[..n]);
                    self.tunnel.send(datagram).await?;
                    stats.sent += 1;
                }
            }
        }
    }
}
