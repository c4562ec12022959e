//! The least a tokio server on quiche 0.30 does to answer the benchmark routes: one
//! task on a current-thread runtime, one socket, quiche's connections in a vector,
//! each request answered from the poll that finishes it. No HTTP types, no
//! per-request state beyond a route and a count, no channels, no tasks, no limits,
//! no Retry, no connection-ID rotation, no metrics. Its I/O is batched as quay's is
//! (quinn-udp: `recvmmsg` with GRO in, one GSO send per run of a connection's
//! packets out), so that quiche sees the same datagrams from the same client.
//!
//! It is a measuring instrument, not a server to deploy: it shows how many
//! instructions a server spends outside quiche's calls when it does nothing but drive
//! them, so that quay's share outside them can be read against that floor.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::time::Instant;

use quay_bench_peers::{Args, FILL, Route, route_of_fields};
use quiche::h3::{self, HeaderRef};
use quiche::{ConnectionId, RecvInfo};
use quinn_udp::{BATCH_SIZE, RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// The largest datagram quiche is given or asked for.
const MAX_DATAGRAM: usize = 1500;

/// The most bytes one GSO send may carry: the kernel's limit on a UDP datagram before
/// segmentation, less headers.
const MAX_GSO_BYTES: usize = 65_000;

/// One connection and what its requests still have to send.
struct Client {
    conn: quiche::Connection,
    h3: Option<h3::Connection>,
    /// Requests being read: their route and the body bytes read so far.
    reading: HashMap<u64, (Route, u64)>,
    /// Responses quiche could not take whole: what is left of their body.
    writing: HashMap<u64, Pending>,
    touched: bool,
}

/// The part of a response quiche did not take yet.
struct Pending {
    head: Option<(&'static [u8], u64)>,
    body: Body,
    sent: usize,
}

enum Body {
    /// This many bytes of [`FILL`], repeated.
    Fill(usize),
    Text(Vec<u8>),
}

impl Body {
    fn len(&self) -> usize {
        match self {
            Body::Fill(n) => *n,
            Body::Text(t) => t.len(),
        }
    }

    /// What is left to send after `sent` bytes, or as much of it as one call takes.
    fn rest(&self, sent: usize) -> &[u8] {
        match self {
            Body::Fill(n) => &FILL[..(n - sent).min(FILL.len())],
            Body::Text(t) => &t[sent..],
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(args.listen).await?;
    let local = socket.local_addr()?;
    let mut config = quiche::Config::new(quiche::PROTOCOL_VERSION)?;
    config.load_cert_chain_from_pem_file(&args.cert.to_string_lossy())?;
    config.load_priv_key_from_pem_file(&args.key.to_string_lossy())?;
    config.set_application_protos(h3::APPLICATION_PROTOCOL)?;
    // quay's defaults, so that quiche does the same work for both.
    config.set_max_idle_timeout(30_000);
    config.set_initial_max_data(10 << 20);
    config.set_initial_max_stream_data_bidi_local(1 << 20);
    config.set_initial_max_stream_data_bidi_remote(1 << 20);
    config.set_initial_max_stream_data_uni(1 << 20);
    config.set_max_connection_window(24 << 20);
    config.set_max_stream_window(16 << 20);
    config.set_initial_max_streams_bidi(100);
    config.set_initial_max_streams_uni(100);
    config.set_active_connection_id_limit(4);
    config.set_max_send_udp_payload_size(1452);
    config.discover_pmtu(true);
    config.set_max_recv_udp_payload_size(1500);
    config.set_curves_list("X25519MLKEM768:X25519:P-256:P-384")?;
    config.enable_pacing(false);
    let h3_config = h3::Config::new()?;
    println!("listening on {local}");

    let mut clients: Vec<Option<Client>> = Vec::new();
    let mut ids: HashMap<ConnectionId<'static>, usize> = HashMap::new();
    let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
    let chunk = (state.gro_segments() * MAX_DATAGRAM).min(u16::MAX as usize);
    let mut buf = vec![0u8; chunk * BATCH_SIZE];
    // A GSO send carries at most 64 KiB (less headers) whatever the segment count.
    let segments = state
        .max_gso_segments()
        .clamp(1, MAX_GSO_BYTES / MAX_DATAGRAM);
    let mut out = vec![0u8; MAX_DATAGRAM * segments];
    let mut scratch = vec![0u8; 65_536];
    let mut next_id = seed();
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    loop {
        let deadline = clients
            .iter()
            .flatten()
            .filter_map(|c| c.conn.timeout_instant())
            .min();
        if let Some(d) = deadline {
            timer.as_mut().reset(d.into());
        }
        tokio::select! {
            ready = socket.readable() => {
                ready?;
                loop {
                    let mut metas = [RecvMeta::default(); BATCH_SIZE];
                    let read = {
                        let mut slices: [IoSliceMut<'_>; BATCH_SIZE] = {
                            let mut chunks = buf.chunks_mut(chunk);
                            std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()))
                        };
                        socket.try_io(Interest::READABLE, || {
                            state.recv(UdpSockRef::from(&socket), &mut slices, &mut metas)
                        })
                    };
                    let n = match read {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e.into()),
                    };
                    for (meta, data) in metas[..n].iter().zip(buf.chunks_mut(chunk)) {
                        let stride = if meta.stride == 0 { meta.len } else { meta.stride };
                        for packet in data[..meta.len].chunks_mut(stride) {
                            let from = meta.addr;
                            let Ok(hdr) = quiche::Header::from_slice(packet, quiche::MAX_CONN_ID_LEN) else {
                                continue;
                            };
                            let at = match ids.get(&hdr.dcid) {
                                Some(&at) => at,
                                None => {
                                    let (conn, scid) = match admit(&hdr, from, local, &mut config, args.retry, &mut next_id, &mut out) {
                                        Admit::New(conn, scid) => (conn, scid),
                                        Admit::Retry(len) => {
                                            send(&socket, &state, &out[..len], len, from).await;
                                            continue;
                                        }
                                        Admit::Drop => continue,
                                    };
                                    let at = clients.iter().position(Option::is_none).unwrap_or_else(|| {
                                        clients.push(None);
                                        clients.len() - 1
                                    });
                                    clients[at] = Some(Client {
                                        conn,
                                        h3: None,
                                        reading: HashMap::new(),
                                        writing: HashMap::new(),
                                        touched: false,
                                    });
                                    ids.insert(hdr.dcid.clone().into_owned(), at);
                                    ids.insert(scid, at);
                                    at
                                }
                            };
                            let Some(client) = clients[at].as_mut() else { continue };
                            let _ = client.conn.recv(packet, RecvInfo { from, to: local });
                            client.touched = true;
                        }
                    }
                }
            }
            () = &mut timer, if deadline.is_some() => {
                let now = Instant::now();
                for client in clients.iter_mut().flatten() {
                    if client.conn.timeout_instant().is_some_and(|t| t <= now) {
                        client.conn.on_timeout();
                        client.touched = true;
                    }
                }
            }
        }
        for (at, slot) in clients.iter_mut().enumerate() {
            let Some(client) = slot.as_mut() else {
                continue;
            };
            if !client.touched {
                continue;
            }
            client.touched = false;
            answer(client, &h3_config, &mut scratch);
            flush(&socket, &state, &mut client.conn, &mut out).await;
            if client.conn.is_closed() {
                ids.retain(|_, &mut i| i != at);
                *slot = None;
            }
        }
    }
}

/// Reads what quiche has for this connection's requests and answers those read whole.
fn answer(client: &mut Client, config: &h3::Config, scratch: &mut [u8]) {
    let conn = &mut client.conn;
    if client.h3.is_none() && (conn.is_established() || conn.is_in_early_data()) {
        match h3::Connection::with_transport(conn, config) {
            Ok(h3) => client.h3 = Some(h3),
            Err(_) => {
                let _ = conn.close(true, 0x101, b"");
                return;
            }
        }
    }
    let Some(h3) = client.h3.as_mut() else { return };
    loop {
        match h3.poll(conn) {
            Ok((id, h3::Event::Headers { list, more_frames })) => {
                let route = route_of_fields(&list);
                if more_frames {
                    client.reading.insert(id, (route, 0));
                } else {
                    respond(h3, conn, &mut client.writing, id, route, 0);
                }
            }
            Ok((id, h3::Event::Data)) => {
                while let Ok(n) = h3.recv_body(conn, id, scratch) {
                    if let Some((_, read)) = client.reading.get_mut(&id) {
                        *read += n as u64;
                    }
                }
            }
            Ok((id, h3::Event::Finished)) => {
                if let Some((route, read)) = client.reading.remove(&id) {
                    respond(h3, conn, &mut client.writing, id, route, read);
                }
            }
            Ok((id, h3::Event::Reset(_))) => {
                client.reading.remove(&id);
                client.writing.remove(&id);
            }
            Ok(_) => {}
            Err(h3::Error::Done) => break,
            Err(_) => {
                let _ = conn.close(true, 0x101, b"");
                return;
            }
        }
    }
    if !client.writing.is_empty() {
        for id in conn.writable() {
            if let Some(mut pending) = client.writing.remove(&id)
                && !push(h3, conn, id, &mut pending)
            {
                client.writing.insert(id, pending);
            }
        }
    }
}

fn respond(
    h3: &mut h3::Connection,
    conn: &mut quiche::Connection,
    writing: &mut HashMap<u64, Pending>,
    id: u64,
    route: Route,
    read: u64,
) {
    let (status, body): (&'static [u8], Body) = match route {
        Route::Bytes(n) => (b"200", Body::Fill(n as usize)),
        Route::Upload => (b"200", Body::Text(read.to_string().into_bytes())),
        Route::NotFound => (b"404", Body::Fill(0)),
    };
    let length = match route {
        Route::Bytes(n) => n,
        _ => u64::MAX,
    };
    let mut pending = Pending {
        head: Some((status, length)),
        body,
        sent: 0,
    };
    if !push(h3, conn, id, &mut pending) {
        writing.insert(id, pending);
    }
}

/// Gives quiche what it takes of a response; true when all of it is taken.
fn push(
    h3: &mut h3::Connection,
    conn: &mut quiche::Connection,
    id: u64,
    pending: &mut Pending,
) -> bool {
    if let Some((status, length)) = pending.head {
        let mut buf = [0u8; 20];
        let fields = [
            HeaderRef::new(b":status", status),
            HeaderRef::new(b"content-length", digits(length, &mut buf)),
        ];
        let fields = if length == u64::MAX {
            &fields[..1]
        } else {
            &fields[..]
        };
        match h3.send_response(conn, id, fields, false) {
            Ok(()) => pending.head = None,
            Err(h3::Error::StreamBlocked) => return false,
            Err(_) => return true,
        }
    }
    loop {
        let rest = pending.body.rest(pending.sent);
        let fin = pending.sent + rest.len() == pending.body.len();
        match h3.send_body(conn, id, rest, fin) {
            Ok(n) => {
                pending.sent += n;
                if pending.sent == pending.body.len() {
                    return true;
                }
            }
            Err(h3::Error::Done) => return false,
            Err(_) => return true,
        }
    }
}

/// What a packet of no known connection gets (once per connection: its size does not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Admit {
    New(quiche::Connection, ConnectionId<'static>),
    /// A Retry, this long, written into the output buffer.
    Retry(usize),
    Drop,
}

/// Starts a connection for a client's first Initial; with `retry`, only for one that
/// returns the token of a Retry sent to its address.
fn admit(
    hdr: &quiche::Header<'_>,
    from: SocketAddr,
    local: SocketAddr,
    config: &mut quiche::Config,
    retry: bool,
    next_id: &mut u64,
    out: &mut [u8],
) -> Admit {
    if hdr.ty != quiche::Type::Initial || !quiche::version_is_supported(hdr.version) {
        return Admit::Drop;
    }
    *next_id = next_id.wrapping_mul(6364136223846793005).wrapping_add(1);
    // As long as the header parser expects of a short header.
    let mut raw = [0u8; quiche::MAX_CONN_ID_LEN];
    raw[..8].copy_from_slice(&next_id.to_le_bytes());
    raw[8..16].copy_from_slice(&next_id.rotate_left(29).to_le_bytes());
    raw[16..].copy_from_slice(&(*next_id as u32).to_le_bytes());
    let mut odcid = None;
    let scid = if retry {
        let token = hdr.token.as_deref().unwrap_or_default();
        if token.is_empty() {
            let scid = ConnectionId::from_ref(&raw);
            let token = retry_token(from, &hdr.dcid);
            return match quiche::retry(&hdr.scid, &hdr.dcid, &scid, &token, hdr.version, out) {
                Ok(len) => Admit::Retry(len),
                Err(_) => Admit::Drop,
            };
        }
        // The token is the address it was sent to and the client's first DCID.
        let prefix = retry_token(from, &[]);
        match token.strip_prefix(prefix.as_slice()) {
            Some(first) if hdr.dcid.len() == quiche::MAX_CONN_ID_LEN => {
                odcid = Some(ConnectionId::from_vec(first.to_vec()));
                hdr.dcid.clone().into_owned()
            }
            _ => return Admit::Drop,
        }
    } else {
        ConnectionId::from_vec(raw.to_vec())
    };
    match quiche::accept(&scid, odcid.as_ref(), local, from, config) {
        Ok(conn) => Admit::New(conn, scid),
        Err(_) => Admit::Drop,
    }
}

/// A Retry token: the client's address and the DCID of its first Initial, in clear
/// (a measuring instrument on loopback, not a server to deploy).
fn retry_token(from: SocketAddr, odcid: &[u8]) -> Vec<u8> {
    let mut token = b"floor".to_vec();
    match from.ip() {
        std::net::IpAddr::V4(ip) => token.extend_from_slice(&ip.octets()),
        std::net::IpAddr::V6(ip) => token.extend_from_slice(&ip.octets()),
    }
    token.extend_from_slice(&from.port().to_be_bytes());
    token.extend_from_slice(odcid);
    token
}

/// A number's decimal digits, written into `buf` rather than a heap string.
fn digits(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut start = buf.len();
    loop {
        start -= 1;
        buf[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[start..];
        }
    }
}

/// Sends what quiche has for a connection: each run of packets of one size to one
/// address (a shorter one may end it) leaves in one GSO send.
async fn flush(
    socket: &UdpSocket,
    state: &UdpSocketState,
    conn: &mut quiche::Connection,
    out: &mut [u8],
) {
    loop {
        let (mut len, mut segment, mut dest, mut done) = (0, 0, None, false);
        while len + MAX_DATAGRAM <= out.len() {
            let Ok((n, info)) = conn.send(&mut out[len..len + MAX_DATAGRAM]) else {
                done = true;
                break;
            };
            if dest.is_some_and(|d| d != info.to) || (segment > 0 && n > segment) {
                // It does not fit the run: the run leaves, this packet starts the next.
                send(socket, state, &out[..len], segment, dest.unwrap_or(info.to)).await;
                out.copy_within(len..len + n, 0);
                (len, segment, dest) = (n, n, Some(info.to));
                continue;
            }
            if segment == 0 {
                segment = n;
            }
            dest = Some(info.to);
            len += n;
            if n < segment {
                break;
            }
        }
        if let Some(dest) = dest {
            send(socket, state, &out[..len], segment, dest).await;
        }
        if done {
            return;
        }
    }
}

async fn send(
    socket: &UdpSocket,
    state: &UdpSocketState,
    contents: &[u8],
    segment: usize,
    to: SocketAddr,
) {
    if contents.is_empty() {
        return;
    }
    let transmit = Transmit {
        destination: to,
        ecn: None,
        contents,
        segment_size: (contents.len() > segment).then_some(segment),
        src_ip: None,
    };
    loop {
        match socket.try_io(Interest::WRITABLE, || {
            state.try_send(UdpSockRef::from(socket), &transmit)
        }) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Lost, as on a network: quiche sends it again.
                eprintln!("send to {to} failed: {e}");
                return;
            }
        }
    }
}

/// A starting point for connection IDs that differs from run to run.
fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()).rotate_left(32)
}
