//! The network shim: a UDP relay between an interop client and server that imposes
//! what the runner's simulator would (delay, a rate-limited drop-tail queue, loss with
//! a bounded burst, drops by index, corruption, blackhole periods, NAT rebinding) and
//! records facts from the packets' plain headers.
//!
//! The client sends to the shim's address; the shim sends on to the server from one
//! upstream socket per client address (a NAT mapping), and relays the server's answers
//! back. Rebinding replaces a client's upstream socket with a new port (or a new
//! 127.0.0.x address), as a NAT that forgot the mapping would.

use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// One direction's impairments.
#[derive(Debug, Clone, Default)]
pub(crate) struct Link {
    /// One-way delay.
    pub delay: Duration,
    /// Bottleneck rate in bits per second; `None`: unlimited.
    pub rate: Option<u64>,
    /// Bytes the bottleneck queue holds before it drops (drop-tail).
    pub queue_bytes: usize,
    /// Probability of losing a datagram.
    pub loss: f64,
    /// The most datagrams lost in a row (0: no bound).
    pub max_burst: u32,
    /// Probability of flipping a byte in a datagram (past the first byte).
    pub corrupt: f64,
    /// Datagram indices (0-based, this direction) always dropped.
    pub drop_indices: BTreeSet<u64>,
}

/// How the client's address changes while the case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rebind {
    /// A new source port on the same address.
    Port,
    /// A new source address (another 127.0.0.x), and so a new port.
    Addr,
}

/// What the shim does.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The server's address.
    pub server: SocketAddr,
    /// Client to server.
    pub to_server: Link,
    /// Server to client.
    pub to_client: Link,
    /// Rebind the client: first after `first`, then every `every`.
    pub rebind: Option<(Rebind, Duration, Duration)>,
    /// Drop everything both ways: off for `.0`, then on for `.1`, off for `.0`, ...
    pub blackhole: Option<(Duration, Duration)>,
    /// Seeds the random decisions.
    pub seed: u64,
}

/// What one direction carried, from the plain headers.
#[derive(Debug, Clone, Default)]
pub(crate) struct DirStats {
    pub datagrams: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub corrupted: u64,
    pub initial: u64,
    pub zero_rtt: u64,
    pub zero_rtt_bytes: u64,
    pub handshake: u64,
    pub retry: u64,
    /// Client Initials that carried a token.
    pub initial_with_token: u64,
    pub versions: BTreeSet<u32>,
    /// Source connection IDs of Initial packets (hex).
    pub initial_scids: BTreeSet<String>,
    /// Handshake-packet bytes per source connection ID (hex), in the order first seen.
    pub handshake_bytes: Vec<(String, u64)>,
}

/// Everything the shim saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Facts {
    pub to_server: DirStats,
    pub to_client: DirStats,
    /// Bytes the client sent before its first Handshake packet, and those the server
    /// sent in that time (amplification, RFC 9000 §8.1).
    pub client_bytes_before_handshake: u64,
    pub server_bytes_before_handshake: u64,
    pub client_handshake_seen: bool,
    /// Rebindings performed.
    pub rebinds: u32,
}

/// A running shim; stops when dropped.
pub(crate) struct Shim {
    pub addr: SocketAddr,
    state: Arc<State>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

struct State {
    config: Config,
    listen: Arc<UdpSocket>,
    started: Instant,
    stop: AtomicBool,
    inner: Mutex<Inner>,
    wake: Condvar,
}

struct Inner {
    facts: Facts,
    /// Client address → its current upstream socket.
    nat: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Upstream sockets whose receiving thread is to be started.
    new_upstreams: Vec<(SocketAddr, Arc<UdpSocket>)>,
    /// Upstream local addresses still mapped (older ones were rebound away).
    live: BTreeSet<SocketAddr>,
    queue: BinaryHeap<Pending>,
    seq: u64,
    rng: Rng,
    up: DirState,
    down: DirState,
    next_rebind: Option<Instant>,
    next_addr: u8,
}

#[derive(Default)]
struct DirState {
    index: u64,
    burst: u32,
    link_free: Option<Instant>,
}

struct Pending {
    at: Instant,
    seq: u64,
    via: Arc<UdpSocket>,
    to: SocketAddr,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Earliest first in a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

const POLL: Duration = Duration::from_millis(50);

impl Shim {
    /// Starts relaying; clients send to [`Shim::addr`].
    pub(crate) fn start(config: Config) -> std::io::Result<Self> {
        let ip = match config.server.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        let listen = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        listen.set_read_timeout(Some(POLL))?;
        let addr = listen.local_addr()?;
        let started = Instant::now();
        let next_rebind = config.rebind.map(|(_, first, _)| started + first);
        let state = Arc::new(State {
            inner: Mutex::new(Inner {
                facts: Facts::default(),
                nat: HashMap::new(),
                new_upstreams: Vec::new(),
                live: BTreeSet::new(),
                queue: BinaryHeap::new(),
                seq: 0,
                rng: Rng(config.seed | 1),
                up: DirState::default(),
                down: DirState::default(),
                next_rebind,
                next_addr: 2,
            }),
            config,
            listen: Arc::new(listen),
            started,
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
        });
        let mut threads = Vec::new();
        let s = Arc::clone(&state);
        threads.push(std::thread::spawn(move || s.from_clients()));
        let s = Arc::clone(&state);
        threads.push(std::thread::spawn(move || s.sender()));
        Ok(Self {
            addr,
            state,
            threads,
        })
    }

    /// What the shim saw so far.
    pub(crate) fn facts(&self) -> Facts {
        self.state.lock().facts.clone()
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.state.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn blackholed(&self, now: Instant) -> bool {
        let Some((off, on)) = self.config.blackhole else {
            return false;
        };
        let period = off + on;
        if period.is_zero() {
            return false;
        }
        let t = now.duration_since(self.started).as_nanos() % period.as_nanos();
        t >= off.as_nanos()
    }

    /// Receives from clients; starts upstream receivers as clients appear.
    fn from_clients(self: Arc<Self>) {
        let mut buf = vec![0u8; 65536];
        let mut upstream_threads = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let received = self.listen.recv_from(&mut buf);
            let now = Instant::now();
            let mut inner = self.lock();
            self.maybe_rebind(&mut inner, now);
            if let Ok((n, from)) = received {
                let up = match inner.nat.get(&from) {
                    Some(u) => Arc::clone(u),
                    None => match self.new_upstream(&mut inner, from, Rebind::Port) {
                        Some(u) => u,
                        None => continue,
                    },
                };
                self.forward(&mut inner, true, &buf[..n], now, up, self.config.server);
            }
            for (client, sock) in std::mem::take(&mut inner.new_upstreams) {
                let s = Arc::clone(&self);
                upstream_threads.push(std::thread::spawn(move || s.from_server(client, sock)));
            }
        }
        for t in upstream_threads {
            let _ = t.join();
        }
    }

    /// A new upstream socket for `client`: a new port, or with [`Rebind::Addr`] a new
    /// loopback address.
    fn new_upstream(
        &self,
        inner: &mut Inner,
        client: SocketAddr,
        kind: Rebind,
    ) -> Option<Arc<UdpSocket>> {
        let ip = match (self.config.server.ip(), kind) {
            (IpAddr::V4(_), Rebind::Addr) => {
                inner.next_addr = inner.next_addr.wrapping_add(1).max(2);
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, inner.next_addr))
            }
            (IpAddr::V4(_), Rebind::Port) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            (IpAddr::V6(_), _) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        let sock = UdpSocket::bind(SocketAddr::new(ip, 0)).ok()?;
        sock.set_read_timeout(Some(POLL)).ok()?;
        let local = sock.local_addr().ok()?;
        let sock = Arc::new(sock);
        inner.nat.insert(client, Arc::clone(&sock));
        inner.live.insert(local);
        inner.new_upstreams.push((client, Arc::clone(&sock)));
        Some(sock)
    }

    fn maybe_rebind(&self, inner: &mut Inner, now: Instant) {
        let (Some((kind, _, every)), Some(at)) = (self.config.rebind, inner.next_rebind) else {
            return;
        };
        if now < at {
            return;
        }
        inner.next_rebind = Some(now + every);
        let clients: Vec<SocketAddr> = inner.nat.keys().copied().collect();
        for c in clients {
            if let Some(old) = inner.nat.get(&c).and_then(|s| s.local_addr().ok()) {
                inner.live.remove(&old);
            }
            if self.new_upstream(inner, c, kind).is_some() {
                inner.facts.rebinds += 1;
            }
        }
    }

    /// Receives the server's datagrams for `client` on one upstream socket.
    fn from_server(self: Arc<Self>, client: SocketAddr, sock: Arc<UdpSocket>) {
        let local = sock.local_addr().ok();
        let mut buf = vec![0u8; 65536];
        while !self.stop.load(Ordering::Acquire) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if from != self.config.server {
                continue;
            }
            let now = Instant::now();
            let mut inner = self.lock();
            if !local.is_some_and(|l| inner.live.contains(&l)) {
                // Rebound away: the mapping is gone, like a NAT's.
                inner.facts.to_client.dropped += 1;
                continue;
            }
            let listen = Arc::clone(&self.listen);
            self.forward(&mut inner, false, &buf[..n], now, listen, client);
        }
    }

    /// Records, impairs and schedules one datagram.
    fn forward(
        &self,
        inner: &mut Inner,
        up: bool,
        data: &[u8],
        now: Instant,
        via: Arc<UdpSocket>,
        to: SocketAddr,
    ) {
        let before_handshake = !inner.facts.client_handshake_seen;
        let validating = record(&mut inner.facts, up, data);
        let link = if up {
            &self.config.to_server
        } else {
            &self.config.to_client
        };
        let Inner {
            rng,
            up: up_state,
            down,
            facts,
            queue,
            seq,
            ..
        } = inner;
        let dir = if up { up_state } else { down };
        let stats = if up {
            &mut facts.to_server
        } else {
            &mut facts.to_client
        };
        let index = dir.index;
        dir.index += 1;
        let mut drop = link.drop_indices.contains(&index) || self.blackholed(now);
        if !drop
            && link.loss > 0.0
            && rng.chance(link.loss)
            && (link.max_burst == 0 || dir.burst < link.max_burst)
        {
            drop = true;
            dir.burst += 1;
        }
        if !drop {
            dir.burst = 0;
        }
        // The bottleneck: serialization at `rate`, a drop-tail queue in front of it.
        let mut depart = now;
        if !drop && let Some(rate) = link.rate {
            let free = dir.link_free.filter(|t| *t > now).unwrap_or(now);
            let backlog = (free - now).as_secs_f64() * rate as f64 / 8.0;
            if backlog + data.len() as f64 > link.queue_bytes.max(1500) as f64 {
                drop = true;
            } else {
                depart = free + Duration::from_secs_f64(data.len() as f64 * 8.0 / rate as f64);
                dir.link_free = Some(depart);
            }
        }
        if drop {
            stats.dropped += 1;
            return;
        }
        if up && before_handshake && !validating {
            // What the server receives before the client's first Handshake packet
            // sets its amplification budget.
            facts.client_bytes_before_handshake += data.len() as u64;
        }
        let mut data = data.to_vec();
        if link.corrupt > 0.0 && data.len() > 1 && rng.chance(link.corrupt) {
            let i = 1 + (rng.next() as usize % (data.len() - 1));
            data[i] ^= 1 << (rng.next() % 8);
            stats.corrupted += 1;
        }
        *seq += 1;
        queue.push(Pending {
            at: depart + link.delay,
            seq: *seq,
            via,
            to,
            data,
        });
        self.wake.notify_one();
    }

    /// Sends every scheduled datagram at its time.
    fn sender(self: Arc<Self>) {
        let mut inner = self.lock();
        loop {
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let now = Instant::now();
            match inner.queue.peek() {
                Some(p) if p.at <= now => {
                    let p = inner.queue.pop().expect("peeked");
                    drop(inner);
                    let _ = p.via.send_to(&p.data, p.to);
                    inner = self.lock();
                }
                Some(p) => {
                    let wait = p.at - now;
                    inner = self
                        .wake
                        .wait_timeout(inner, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                None => {
                    inner = self
                        .wake
                        .wait_timeout(inner, POLL)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// Reads the plain-header facts of one datagram (every coalesced long-header packet);
/// returns whether it is a client datagram with a Handshake packet.
fn record(facts: &mut Facts, up: bool, data: &[u8]) -> bool {
    let before_handshake = !facts.client_handshake_seen;
    let stats = if up {
        &mut facts.to_server
    } else {
        &mut facts.to_client
    };
    stats.datagrams += 1;
    stats.bytes += data.len() as u64;
    let mut client_handshake = false;
    let mut rest = data;
    while let Some(p) = parse_long(rest) {
        stats.versions.insert(p.version);
        match p.kind {
            0 => {
                stats.initial += 1;
                stats.initial_scids.insert(hex(p.scid));
                if p.token {
                    stats.initial_with_token += 1;
                }
            }
            1 => {
                stats.zero_rtt += 1;
                stats.zero_rtt_bytes += p.len as u64;
            }
            2 => {
                stats.handshake += 1;
                let scid = hex(p.scid);
                match stats.handshake_bytes.iter_mut().find(|(s, _)| *s == scid) {
                    Some((_, b)) => *b += p.len as u64,
                    None => stats.handshake_bytes.push((scid, p.len as u64)),
                }
                if up {
                    client_handshake = true;
                }
            }
            _ => stats.retry += 1,
        }
        match p.next {
            Some(n) => rest = &rest[n..],
            None => break,
        }
    }
    if before_handshake {
        if up && client_handshake {
            facts.client_handshake_seen = true;
        } else if !up {
            facts.server_bytes_before_handshake += data.len() as u64;
        }
    }
    client_handshake
}

struct Long<'a> {
    kind: u8,
    version: u32,
    scid: &'a [u8],
    token: bool,
    /// Packet length from the Length field (payload with packet number).
    len: usize,
    /// Offset of the next coalesced packet, if any.
    next: Option<usize>,
}

/// Parses a long-header packet at the start of `b` (RFC 9000 §17.2).
fn parse_long(b: &[u8]) -> Option<Long<'_>> {
    let first = *b.first()?;
    if first & 0x80 == 0 {
        return None;
    }
    let version = u32::from_be_bytes(b.get(1..5)?.try_into().ok()?);
    if version == 0 {
        return None; // Version Negotiation
    }
    // QUIC v2 (RFC 9369) permutes the type bits.
    let raw = (first >> 4) & 0x3;
    let kind = if version == 0x6b33_43cf {
        match raw {
            1 => 0,
            2 => 1,
            3 => 2,
            _ => 3,
        }
    } else {
        raw
    };
    let mut off = 5;
    let dcid_len = *b.get(off)? as usize;
    off += 1 + dcid_len;
    let scid_len = *b.get(off)? as usize;
    let scid = b.get(off + 1..off + 1 + scid_len)?;
    off += 1 + scid_len;
    let mut token = false;
    if kind == 3 {
        return Some(Long {
            kind,
            version,
            scid,
            token: false,
            len: b.len() - off,
            next: None,
        });
    }
    if kind == 0 {
        let (tlen, n) = varint(b.get(off..)?)?;
        off += n + tlen as usize;
        token = tlen > 0;
    }
    let (len, n) = varint(b.get(off..)?)?;
    off += n;
    let end = off.checked_add(len as usize)?;
    Some(Long {
        kind,
        version,
        scid,
        token,
        len: len as usize,
        next: (end < b.len()).then_some(end),
    })
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for x in &bytes[1..] {
        v = (v << 8) | u64::from(*x);
    }
    Some((v, len))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// xorshift64*: small, seeded, good enough for loss decisions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client Initial (long header, version 1) with a token, coalesced with a
    /// Handshake packet.
    fn coalesced() -> Vec<u8> {
        let mut d = vec![0xc0, 0, 0, 0, 1, 4, 1, 2, 3, 4, 2, 9, 9, 3, 7, 7, 7];
        d.extend_from_slice(&[5, 0, 1, 2, 3, 4]); // Length 5 + payload
        d.extend_from_slice(&[0xe0, 0, 0, 0, 1, 0, 1, 8, 3, 1, 2, 3]);
        d
    }

    #[test]
    fn coalesced_long_headers_are_all_read() {
        let mut f = Facts::default();
        record(&mut f, true, &coalesced());
        assert_eq!(f.to_server.initial, 1);
        assert_eq!(f.to_server.initial_with_token, 1);
        assert_eq!(f.to_server.handshake, 1);
        assert_eq!(
            f.to_server.versions.iter().copied().collect::<Vec<_>>(),
            [1]
        );
        assert!(f.to_server.initial_scids.contains("0909"));
        assert!(f.client_handshake_seen);
        // Short headers and garbage are counted, not parsed.
        record(&mut f, false, &[0x40, 1, 2, 3]);
        record(&mut f, false, &[0xc0, 0]);
        assert_eq!(f.to_client.datagrams, 2);
    }

    #[test]
    fn the_relay_forwards_both_ways_and_drops_by_index() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut to_server = Link::default();
        to_server.drop_indices.insert(1);
        let shim = Shim::start(Config {
            server: server.local_addr().unwrap(),
            to_server,
            to_client: Link {
                delay: Duration::from_millis(20),
                ..Link::default()
            },
            rebind: None,
            blackhole: None,
            seed: 1,
        })
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        for i in 0..3u8 {
            client.send_to(&[i; 10], shim.addr).unwrap();
        }
        let mut buf = [0u8; 100];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0; 10]);
        let (n, _) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[2; 10], "datagram 1 was dropped");
        let sent = Instant::now();
        server.send_to(b"back", from).unwrap();
        let (n, via) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"back");
        assert_eq!(via, shim.addr);
        assert!(sent.elapsed() >= Duration::from_millis(20));
        let f = shim.facts();
        assert_eq!(f.to_server.datagrams, 3);
        assert_eq!(f.to_server.dropped, 1);
        assert_eq!(f.to_client.datagrams, 1);
    }

    #[test]
    fn rebinding_changes_the_source_port_and_answers_still_arrive() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let shim = Shim::start(Config {
            server: server.local_addr().unwrap(),
            to_server: Link::default(),
            to_client: Link::default(),
            rebind: Some((
                Rebind::Port,
                Duration::from_millis(200),
                Duration::from_secs(60),
            )),
            blackhole: None,
            seed: 1,
        })
        .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 100];
        client.send_to(b"one", shim.addr).unwrap();
        let (_, first) = server.recv_from(&mut buf).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        client.send_to(b"two", shim.addr).unwrap();
        let (n, second) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"two");
        assert_ne!(first.port(), second.port());
        // The old mapping is gone; the new one carries answers.
        server.send_to(b"stale", first).unwrap();
        server.send_to(b"fresh", second).unwrap();
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"fresh");
        assert_eq!(shim.facts().rebinds, 1);
    }
}
