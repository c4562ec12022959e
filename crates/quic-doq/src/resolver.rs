//! Where answers come from: a zone, then an upstream server.

use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Header, Message, MessageType, OpCode, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::MAX_MESSAGE;
use crate::zone::{Lookup, Zone};

/// A DNS server to forward to, over UDP (and TCP for answers too large for UDP).
#[derive(Debug, Clone)]
pub struct Upstream {
    addr: SocketAddr,
    timeout: Duration,
}

impl Upstream {
    /// The server at `addr`; each forwarded query may take up to 2 s.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: Duration::from_secs(2),
        }
    }

    /// How long a forwarded query may take before the answer is SERVFAIL.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `query` (with a fresh random ID) and returns the answer with the
    /// original ID put back.
    async fn forward(&self, query: &Message) -> std::io::Result<Message> {
        let original = query.id();
        let mut q = query.clone();
        let id = random_u16();
        q.set_id(id);
        let wire = q.to_vec().map_err(std::io::Error::other)?;
        let answer = tokio::time::timeout(self.timeout, async {
            let answer = self.over_udp(&wire, id).await?;
            if answer.truncated() {
                self.over_tcp(&wire, id).await
            } else {
                Ok(answer)
            }
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timeout"))??;
        let mut answer = answer;
        answer.set_id(original);
        Ok(answer)
    }

    async fn over_udp(&self, wire: &[u8], id: u16) -> std::io::Result<Message> {
        let local: SocketAddr = if self.addr.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = tokio::net::UdpSocket::bind(local).await?;
        socket.connect(self.addr).await?;
        socket.send(wire).await?;
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let n = socket.recv(&mut buf).await?;
            // Only the answer to this query counts: another is a spoofing attempt or
            // a late answer to an earlier one.
            if let Ok(m) = Message::from_vec(&buf[..n])
                && m.id() == id
                && m.message_type() == MessageType::Response
            {
                return Ok(m);
            }
        }
    }

    async fn over_tcp(&self, wire: &[u8], id: u16) -> std::io::Result<Message> {
        let mut stream = tokio::net::TcpStream::connect(self.addr).await?;
        let mut framed = Vec::with_capacity(2 + wire.len());
        framed.extend_from_slice(&(wire.len() as u16).to_be_bytes());
        framed.extend_from_slice(wire);
        stream.write_all(&framed).await?;
        let len = stream.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        let m = Message::from_vec(&buf).map_err(std::io::Error::other)?;
        if m.id() != id {
            return Err(std::io::Error::other("upstream answered another query"));
        }
        Ok(m)
    }
}

/// A random 16-bit value, from the standard library's randomly keyed hasher.
fn random_u16() -> u16 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish() as u16
}

/// Answers queries: authoritatively from a [`Zone`], and by forwarding to an
/// [`Upstream`] what is outside it. With neither able to answer, REFUSED.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    zone: Option<Zone>,
    upstream: Option<Upstream>,
}

impl Resolver {
    /// A resolver of `zone`, forwarding the rest to `upstream`.
    pub fn new(zone: Option<Zone>, upstream: Option<Upstream>) -> Self {
        Self { zone, upstream }
    }

    /// The response to `query`, whose ID it keeps: records, NODATA or NXDOMAIN from
    /// the zone; an upstream's answer (SERVFAIL if it fails); FORMERR for anything
    /// but one question; NOTIMP for opcodes other than QUERY.
    pub async fn answer(&self, query: &Message) -> Message {
        let mut resp = Message::new();
        resp.set_header(Header::response_from_request(query.header()));
        resp.set_message_type(MessageType::Response);
        resp.set_recursion_available(self.upstream.is_some());
        if query.op_code() != OpCode::Query {
            resp.set_response_code(ResponseCode::NotImp);
            return resp;
        }
        let [q] = query.queries() else {
            resp.set_response_code(ResponseCode::FormErr);
            return resp;
        };
        resp.add_query(q.clone());
        let lookup = self
            .zone
            .as_ref()
            .map_or(Lookup::NotInZone, |z| z.lookup(q.name(), q.query_type()));
        match lookup {
            Lookup::Records(records) => {
                resp.set_authoritative(true);
                resp.add_answers(records);
            }
            Lookup::NoData(soa) => {
                resp.set_authoritative(true);
                resp.add_name_servers(soa);
            }
            Lookup::NxDomain(soa) => {
                resp.set_authoritative(true);
                resp.set_response_code(ResponseCode::NXDomain);
                resp.add_name_servers(soa);
            }
            Lookup::NotInZone => match &self.upstream {
                Some(up) => match up.forward(query).await {
                    Ok(answer) => return answer,
                    Err(e) => {
                        tracing::debug!(error = %e, upstream = %up.addr, "forwarding failed");
                        resp.set_response_code(ResponseCode::ServFail);
                    }
                },
                None => {
                    resp.set_response_code(ResponseCode::Refused);
                }
            },
        }
        resp
    }
}
