//! UDP sockets with the kernel's batching offloads.
//!
//! Sending uses UDP generic segmentation offload (GSO, `UDP_SEGMENT`) where the kernel
//! has it: one message carries many equal-sized datagrams, and on Linux one
//! `sendmmsg` carries a connection's turn of such messages, each with its own segment
//! size ([`Socket::send_batches`]). Receiving uses `recvmmsg` and UDP generic receive
//! offload (GRO) where available: one call returns many datagrams. `quinn-udp`
//! detects what the kernel supports, receives, and sends single messages, falling
//! back to one datagram per call where it must.
//!
//! A socket is registered with the runtime for readability only. Registered for
//! writability too, it would wake the runtime after nearly every send: the kernel
//! signals write space each time a sent datagram's buffer is freed (on loopback, as it
//! is delivered), an event with nothing waiting for it. Sends go straight to the socket;
//! the rare send that finds the socket's buffer full registers a duplicate of its
//! descriptor for writability, shared by every send waiting, until they are done.

use std::io;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::worker::batch::Batch;

mod fd;
#[cfg(target_os = "linux")]
mod mmsg;
#[cfg(target_os = "linux")]
pub(crate) mod steer;

/// The largest UDP payload quay accepts (advertised as `max_udp_payload_size`,
/// RFC 9000 §18.2). Larger datagrams are truncated by the receive buffers and fail
/// authentication.
pub(crate) const MAX_UDP_PAYLOAD: usize = 1500;

/// Bytes from one sender in a row from which a run gets a receive buffer of its own.
const OWN_BUFFER_RUN: usize = 16 * 1024;

/// Receive slot size without GRO: one datagram of up to [`MAX_UDP_PAYLOAD`] bytes,
/// rounded up.
const SLOT_PLAIN: usize = 2048;

/// Receive slot size with GRO: the kernel coalesces up to 64 KiB per slot.
const SLOT_GRO: usize = 64 * 1024;

/// Receive slots per batch with GRO: 8 × 64 KiB = 512 KiB per receive call.
const SLOTS_GRO: usize = 8;

/// How long a send waits before it tries again when the socket's buffer is full and
/// no descriptor is left to wait for write space with.
const WRITE_RETRY: Duration = Duration::from_millis(1);

/// A UDP socket shared by a router (the only reader) and workers (writers).
#[derive(Debug)]
pub(crate) struct Socket {
    /// Registered for readability only (see the module's docs).
    io: AsyncFd<std::net::UdpSocket>,
    /// A duplicate of the descriptor registered for writability, while sends wait for
    /// buffer space; dropped (and unregistered) with the last of them.
    write_wait: Mutex<Weak<AsyncFd<std::net::UdpSocket>>>,
    state: quinn_udp::UdpSocketState,
    local_addr: SocketAddr,
    gso: bool,
    /// A receive batch that did not fill every slot leaves the socket's queue empty.
    /// On Linux, `recvmmsg` (which `quinn-udp` reads with there) stops early only at
    /// an empty queue or at an error, and an unconnected socket without `IP_RECVERR`
    /// has no error to report, so for it the read that would only say "empty" can be
    /// skipped. A connected socket (a client's) can stop early at an ICMP error, with
    /// datagrams still queued, and elsewhere `quinn-udp` reads one datagram per call:
    /// those read until the queue says it is empty.
    short_read_drains: bool,
}

impl Socket {
    /// Wraps a bound std socket; must be called inside a tokio runtime.
    pub(crate) fn new(socket: std::net::UdpSocket, enable_gso: bool) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        // Bigger kernel buffers absorb bursts at high rates; failure is not fatal.
        let _ = state.set_recv_buffer_size((&socket).into(), 4 * 1024 * 1024);
        let _ = state.set_send_buffer_size((&socket).into(), 4 * 1024 * 1024);
        let local_addr = socket.local_addr()?;
        let short_read_drains =
            cfg!(any(target_os = "linux", target_os = "android")) && socket.peer_addr().is_err();
        let io = fd::register(socket, Interest::READABLE)?;
        Ok(Self {
            io,
            write_wait: Mutex::new(Weak::new()),
            state,
            local_addr,
            gso: enable_gso,
            short_read_drains,
        })
    }

    /// The registration for write space the waiting sends share, made if none waits.
    fn write_waiter(&self) -> io::Result<Arc<AsyncFd<std::net::UdpSocket>>> {
        let mut slot = self.write_wait.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = slot.upgrade() {
            return Ok(w);
        }
        let w = Arc::new(fd::register(
            self.io.get_ref().try_clone()?,
            Interest::WRITABLE,
        )?);
        *slot = Arc::downgrade(&w);
        Ok(w)
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How many datagrams one [`send`](Self::send) may carry.
    pub(crate) fn max_segments(&self) -> usize {
        if self.gso {
            self.state.max_gso_segments().max(1)
        } else {
            1
        }
    }

    /// Sends `contents` to `dst`: one datagram, or with `segment_size` several of that
    /// size (the last may be shorter) in one call.
    pub(crate) async fn send(
        &self,
        dst: SocketAddr,
        contents: &[u8],
        segment_size: Option<usize>,
    ) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents,
            segment_size: segment_size.filter(|s| *s < contents.len()),
            src_ip: None,
        };
        let mut room = RoomWait::new(self);
        loop {
            match self.state.try_send(self.io.get_ref().into(), &transmit) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => room.wait().await?,
                // EMSGSIZE: a datagram larger than the path allows (an MTU probe); it is
                // lost like any other datagram and QUIC recovers.
                Err(e) if quinn_udp::is_msg_size_err(&e) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `batches` (their bytes in `buf`), each a GSO batch with its own segment
    /// size: on Linux in one `sendmmsg` (more when the socket buffer fills), elsewhere
    /// one call each. A batch that fails is sent again on its own through
    /// [`send`](Self::send), which knows GSO's failure modes; the first error is
    /// returned once every batch had its turn.
    pub(crate) async fn send_batches(&self, buf: &[u8], batches: &[Batch]) -> io::Result<()> {
        let mut result = Ok(());
        let mut room = RoomWait::new(self);
        let mut i = 0;
        while i < batches.len() {
            #[cfg(target_os = "linux")]
            if batches.len() - i > 1 {
                let v6 = self.local_addr.is_ipv6();
                match mmsg::send(self.io.get_ref(), v6, buf, &batches[i..]) {
                    Ok(sent) if sent > 0 => {
                        i += sent;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        room.wait().await?;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // Nothing sent, or an error for the first batch: it goes alone.
                    _ => {}
                }
            }
            let b = &batches[i];
            let r = self
                .send(b.dst, &buf[b.offset..b.offset + b.len], Some(b.segment))
                .await;
            if let Err(e) = r
                && result.is_ok()
            {
                result = Err(e);
            }
            i += 1;
        }
        result
    }

    /// Sends one datagram without waiting: for the router's stateless answers (Retry,
    /// Version Negotiation, reset), which are dropped when the socket is full.
    pub(crate) fn try_send_one(&self, dst: SocketAddr, contents: &[u8]) -> io::Result<()> {
        let transmit = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        };
        self.state.try_send(self.io.get_ref().into(), &transmit)
    }

    /// Waits until the socket may have datagrams to read.
    pub(crate) async fn readable(&self) -> io::Result<()> {
        self.io.readable().await.map(drop)
    }
}

/// One send's waits for room in the socket's full buffer. The registration it waits on
/// is held until the send is done, so that a wait after a retry that failed again
/// waits for new room, not for the event it already saw.
struct RoomWait<'a> {
    socket: &'a Socket,
    waiter: Option<Arc<AsyncFd<std::net::UdpSocket>>>,
}

impl<'a> RoomWait<'a> {
    fn new(socket: &'a Socket) -> Self {
        Self {
            socket,
            waiter: None,
        }
    }

    /// Waits until the socket may have room; the caller then tries again.
    async fn wait(&mut self) -> io::Result<()> {
        if self.waiter.is_none() {
            match self.socket.write_waiter() {
                Ok(w) => self.waiter = Some(w),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot wait for write space; retrying shortly");
                    tokio::time::sleep(WRITE_RETRY).await;
                    return Ok(());
                }
            }
        }
        if let Some(waiter) = &self.waiter {
            // Registered after the send failed: a socket with room by then reports it
            // at once. The readiness is cleared before the caller tries again, so a
            // send that fails again waits for room freed after that.
            let mut ready = waiter.writable().await?;
            ready.clear_ready();
        }
        Ok(())
    }
}

/// A received datagram: its own slice of the buffer its receive batch was copied into,
/// so handing it to a worker costs no allocation of its own.
#[derive(Debug)]
pub(crate) struct Datagram {
    /// One datagram or, when `segment` is not zero, several of `segment` bytes each
    /// (the last may be shorter): a run the router merged back for one connection.
    pub(crate) buf: BytesMut,
    /// The size of each datagram in `buf`; 0 when it holds one.
    pub(crate) segment: usize,
    /// Its bytes share one allocation with other senders' datagrams of its receive
    /// batch: kept waiting long, it keeps theirs alive too.
    pub(crate) shared: bool,
    pub(crate) from: SocketAddr,
    pub(crate) to: SocketAddr,
}

impl Datagram {
    /// How many datagrams it holds.
    pub(crate) fn count(&self) -> usize {
        if self.segment == 0 {
            1
        } else {
            self.buf.len().div_ceil(self.segment).max(1)
        }
    }

    /// Hands each datagram it holds to `f`, in order.
    pub(crate) fn for_each_datagram(mut self, mut f: impl FnMut(&mut [u8])) {
        if self.segment == 0 || self.buf.len() <= self.segment {
            return f(&mut self.buf);
        }
        for one in self.buf.chunks_mut(self.segment) {
            f(one);
        }
    }

    /// The size of each datagram it holds but the last: its length when it holds one.
    fn segment_size(&self) -> usize {
        if self.segment == 0 {
            self.buf.len()
        } else {
            self.segment
        }
    }

    /// Takes it apart: each datagram it holds on its own (sharing its bytes).
    pub(crate) fn into_singles(mut self) -> impl Iterator<Item = Datagram> {
        let segment = self.segment_size();
        std::iter::from_fn(move || {
            if self.buf.is_empty() {
                return None;
            }
            Some(Datagram {
                buf: self.buf.split_to(segment.min(self.buf.len())),
                segment: 0,
                shared: self.shared,
                from: self.from,
                to: self.to,
            })
        })
    }

    /// Appends `next` (one datagram or a run), from the same sender to the same
    /// address, whose bytes follow this one's in their buffer, if the result is still
    /// a run of equal segments (the last may be shorter); otherwise hands it back.
    pub(crate) fn try_merge(&mut self, next: Datagram) -> Result<(), Datagram> {
        let segment = self.segment_size();
        let follows = self.buf.as_ptr().wrapping_add(self.buf.len()) == next.buf.as_ptr();
        let fits = if next.segment == 0 {
            next.buf.len() <= segment
        } else {
            next.segment == segment
        };
        let mergeable = fits
            && follows
            && segment > 0
            && self.buf.len().is_multiple_of(segment)
            && next.from == self.from
            && next.to == self.to
            && next.shared == self.shared;
        if !mergeable {
            return Err(next);
        }
        // Contiguous, so O(1): no bytes move.
        self.buf.unsplit(next.buf);
        self.segment = segment;
        Ok(())
    }
}

/// The receive side: a fixed buffer carved into slots for one `recvmmsg`.
///
/// After each call, the bytes received (not the slots) are copied into fresh buffers
/// that the messages split among themselves: a run of consecutive messages from one
/// sender of at least [`OWN_BUFFER_RUN`] bytes (a bulk flow, GRO) gets a buffer of its
/// own, the rest of the batch shares one. At most a few allocations per batch, never
/// one per datagram; a datagram of a long run pins only its own sender's bytes, and
/// the router copies a shared one out before it queues behind many others (see
/// `worker::COPY_SHARED_AFTER`). Each message becomes one [`Datagram`]: a GRO read's
/// several datagrams stay together, marked by their segment size, so that a bulk
/// flow's reads reach the router as a few items rather than one per packet.
#[derive(Debug)]
pub(crate) struct Receiver {
    buf: Box<[u8]>,
    slot: usize,
    slots: usize,
    meta: Vec<quinn_udp::RecvMeta>,
}

impl Receiver {
    pub(crate) fn new(socket: &Socket) -> Self {
        let gro = socket.state.gro_segments() > 1;
        let (slot, slots) = if gro {
            (SLOT_GRO, SLOTS_GRO.min(quinn_udp::BATCH_SIZE))
        } else {
            (SLOT_PLAIN, quinn_udp::BATCH_SIZE)
        };
        Self {
            buf: vec![0; slot * slots].into_boxed_slice(),
            slot,
            slots,
            meta: vec![quinn_udp::RecvMeta::default(); slots],
        }
    }

    /// Reads one batch without waiting and appends each message to `out` (a GRO
    /// read's datagrams as one item, see [`Datagram::segment`]). Returns the number of
    /// datagrams, or `WouldBlock` when there was nothing to read, or when the last
    /// batch drained the queue (see `Socket::short_read_drains`): datagrams that came
    /// after it are read once the socket reports readiness again.
    pub(crate) fn recv_batch(
        &mut self,
        socket: &Socket,
        out: &mut Vec<Datagram>,
    ) -> io::Result<usize> {
        let msgs = {
            let mut slices: [IoSliceMut<'_>; quinn_udp::BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(&mut []));
            for (i, chunk) in self.buf.chunks_mut(self.slot).enumerate() {
                slices[i] = IoSliceMut::new(chunk);
            }
            let meta = &mut self.meta;
            let state = &socket.state;
            let slots = self.slots;
            // A batch that drains the queue goes out of `try_io` as `WouldBlock`, kept
            // here, so that the runtime clears the readiness as for an empty read: the
            // read that would only find the queue empty is skipped. Datagrams that
            // arrive after it signal readiness anew.
            let mut drained = None;
            let r = socket.io.try_io(Interest::READABLE, |fd| {
                let n = state.recv(fd.into(), &mut slices[..slots], meta)?;
                if n < slots && socket.short_read_drains {
                    drained = Some(n);
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match (r, drained) {
                (_, Some(n)) => n,
                (r, None) => r?,
            }
        };
        let local = socket.local_addr;
        let metas = &self.meta[..msgs];
        // Runs of messages from one sender. A long one (a bulk flow, GRO) gets a buffer
        // of its own: `long[i]` is (its end, its bytes) at its first message. The
        // short ones share one buffer.
        let mut long = [(0usize, 0usize); quinn_udp::BATCH_SIZE];
        let mut shared_len = 0;
        let mut i = 0;
        while i < msgs {
            let j = i + metas[i..]
                .iter()
                .take_while(|m| m.addr == metas[i].addr)
                .count();
            let len: usize = metas[i..j].iter().map(|m| m.len).sum();
            if len >= OWN_BUFFER_RUN {
                long[i] = (j, len);
            } else {
                shared_len += len;
            }
            i = j;
        }
        let mut shared = BytesMut::with_capacity(shared_len);
        let mut run = BytesMut::new();
        let mut run_end = 0;
        let mut count = 0;
        for (i, meta) in metas.iter().enumerate() {
            let (end, len) = long[i];
            if end != 0 {
                run = BytesMut::with_capacity(len);
                run_end = end;
            }
            if meta.len == 0 {
                // An empty datagram carries no packet.
                continue;
            }
            let from_shared = i >= run_end;
            // Appended to its buffer, then split off: the buffer keeps one allocation.
            let buf = if from_shared { &mut shared } else { &mut run };
            buf.extend_from_slice(&self.buf[i * self.slot..i * self.slot + meta.len]);
            let to = meta
                .dst_ip
                .map_or(local, |ip| SocketAddr::new(ip, local.port()));
            // A GRO read stays one item, its segments marked; the router takes it
            // apart only if they are not all for one connection.
            let segment = if meta.stride > 0 && meta.stride < meta.len {
                count += meta.len.div_ceil(meta.stride);
                meta.stride
            } else {
                count += 1;
                0
            };
            out.push(Datagram {
                buf: buf.split_to(meta.len),
                segment,
                shared: from_shared,
                from: meta.addr,
                to,
            });
        }
        Ok(count)
    }
}

/// Binds a UDP socket, with the address in the error when it fails.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    bind_with(addr, false)
}

/// Binds `n` UDP sockets to `addr` in one SO_REUSEPORT group, in order (the kernel
/// numbers a group's sockets as they bind). With port 0, all take the port the first
/// one got.
///
/// A port some other socket holds is refused, even one bound with SO_REUSEPORT by the
/// same user: the group would take it in and share this listener's datagrams with it.
pub(crate) fn bind_shards(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let mut addr = addr;
    if addr.port() != 0 {
        // Taken, and released at once: the port is free (of this user's sockets too).
        drop(bind_with(addr, false)?);
    }
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = bind_with(addr, true)?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

fn bind_with(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack when bound to [::], as most servers want.
        let _ = socket.set_only_v6(false);
    }
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::time::Duration;

    use super::*;

    /// Sends three batches of different segment sizes from a socket bound to `from`
    /// to a receiver on `to`, and checks each datagram's length and bytes.
    async fn three_batches(from: &str, to: &str) {
        let receiver = UdpSocket::bind(to).expect("bind receiver");
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let dst = receiver.local_addr().expect("addr");
        let socket =
            Socket::new(UdpSocket::bind(from).expect("bind sender"), true).expect("socket");
        let gso = socket.max_segments() > 1;
        let buf: Vec<u8> = (0..8000u32).map(|i| (i % 251) as u8).collect();
        // Without GSO every batch is one datagram.
        let shapes: &[(usize, usize)] = if gso {
            &[(4100, 1200), (300, 300), (2000, 1000)]
        } else {
            &[(1200, 1200), (300, 300), (1000, 1000)]
        };
        let mut batches = Vec::new();
        let mut expected = Vec::new();
        let mut offset = 0;
        for &(len, segment) in shapes {
            batches.push(Batch {
                dst,
                offset,
                len,
                segment,
                count: len.div_ceil(segment),
            });
            expected.extend(
                buf[offset..offset + len]
                    .chunks(segment)
                    .map(<[u8]>::to_vec),
            );
            offset += len;
        }
        socket.send_batches(&buf, &batches).await.expect("send");
        let mut got = Vec::new();
        let mut slot = [0u8; 2048];
        for _ in 0..expected.len() {
            let n = receiver.recv(&mut slot).expect("a datagram");
            got.push(slot[..n].to_vec());
        }
        let lens: Vec<usize> = got.iter().map(Vec::len).collect();
        let want: Vec<usize> = expected.iter().map(Vec::len).collect();
        assert_eq!(lens, want);
        assert_eq!(got, expected);
    }

    /// Datagrams of the given sizes and senders, end to end in one buffer: the `n`th
    /// filled with byte `n`.
    fn end_to_end(shapes: &[(usize, SocketAddr)]) -> Vec<Datagram> {
        let mut bytes = BytesMut::new();
        for (n, (len, _)) in shapes.iter().enumerate() {
            bytes.extend_from_slice(&vec![n as u8; *len]);
        }
        let to: SocketAddr = "127.0.0.1:2".parse().unwrap();
        shapes
            .iter()
            .map(|&(len, from)| Datagram {
                buf: bytes.split_to(len),
                segment: 0,
                shared: false,
                from,
                to,
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sends_waiting_for_room_share_one_registration_gone_with_the_last() {
        let socket = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap(), true).unwrap();
        let a = socket.write_waiter().unwrap();
        let b = socket.write_waiter().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // A socket with room says so at once, however late the registration.
        let mut room = RoomWait::new(&socket);
        tokio::time::timeout(Duration::from_secs(5), room.wait())
            .await
            .expect("room reported")
            .unwrap();
        assert!(Arc::ptr_eq(room.waiter.as_ref().unwrap(), &a));
        drop((a, b, room));
        assert!(socket.write_wait.lock().unwrap().upgrade().is_none());
        // The socket still sends after its waiters are gone.
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .send(receiver.local_addr().unwrap(), b"after", None)
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(receiver.recv(&mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"after");
    }

    /// A send that finds the socket's buffer full waits on the write registration, and
    /// once the network drains the buffer it sends: every datagram arrives, once and in
    /// order; for single sends and for `sendmmsg` batches. Loopback delivers within
    /// `sendmsg`, so its buffer never fills: the test takes a network namespace of its
    /// own (this thread only) whose loopback queue holds packets back. Needs root, `ip`
    /// and `tc`; `cargo xtask test` runs it, or `sudo cargo test -p quic-io --lib --
    /// --ignored full_buffer`.
    #[test]
    #[cfg(target_os = "linux")]
    #[ignore = "needs root, ip and tc: run by cargo xtask test"]
    fn a_send_into_a_full_buffer_waits_for_room_and_loses_nothing() {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("a network namespace of the test's own (needs root)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        sh("ip", &["link", "set", "lo", "up"]);
        for batches in [false, true] {
            rt.block_on(stall_then_drain(batches));
        }
    }

    /// Runs `cmd` with `args`, which must succeed.
    #[cfg(target_os = "linux")]
    fn sh(cmd: &str, args: &[&str]) {
        let status = std::process::Command::new(cmd)
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        assert!(status.success(), "{cmd} {args:?}: {status}");
    }

    /// Fills a socket's send buffer on a loopback that holds packets back, starts a
    /// send that must wait, speeds the loopback up, and checks that the send completes
    /// and nothing was lost.
    #[cfg(target_os = "linux")]
    async fn stall_then_drain(batches: bool) {
        // 100 bit/s past a burst of one packet (the next leaves after 80 s), with room
        // to queue everything: the socket's datagrams wait in the queue, charged to its
        // send buffer.
        let slow = [
            "tbf", "rate", "100bit", "burst", "1600", "limit", "10000000",
        ];
        sh(
            "tc",
            &[&["qdisc", "replace", "dev", "lo", "root"][..], &slow].concat(),
        );
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let to = receiver.local_addr().unwrap();
        let socket = Socket::new(UdpSocket::bind("127.0.0.1:0").unwrap(), false).unwrap();
        let socket = &socket;
        socket2::SockRef::from(socket.io.get_ref())
            .set_send_buffer_size(4096)
            .unwrap();
        let datagram = |n: u32| {
            let mut d = vec![n as u8; 1000];
            d[..4].copy_from_slice(&n.to_be_bytes());
            d
        };
        // Each step sends the two datagrams from `first`: two sends, or one call of
        // two batches.
        let step = |first: u32| {
            let (a, b) = (datagram(first), datagram(first + 1));
            async move {
                if batches {
                    let buf = [&a[..], &b[..]].concat();
                    let batch = |offset| Batch {
                        dst: to,
                        offset,
                        len: a.len(),
                        segment: a.len(),
                        count: 1,
                    };
                    socket.send_batches(&buf, &[batch(0), batch(a.len())]).await
                } else {
                    socket.send(to, &a, None).await?;
                    socket.send(to, &b, None).await
                }
            }
        };
        // Fill the send buffer to the last byte it takes.
        let mut n = 0u32;
        while socket.try_send_one(to, &datagram(n)).is_ok() {
            n += 1;
            assert!(n < 1000, "the send buffer never filled");
        }
        assert!(n > 0, "the first datagram had room");
        // The next step finds it full, and waits.
        let mut stalled = Box::pin(step(n));
        tokio::select! {
            r = &mut stalled => panic!("a send into a full buffer returned {r:?}"),
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
        assert!(
            socket.write_wait.lock().unwrap().upgrade().is_some(),
            "the waiting send holds the write registration"
        );
        // The network speeds up: the queue drains, the buffer frees, the send goes.
        let fast = ["tbf", "rate", "1gbit", "burst", "1mb", "limit", "10000000"];
        sh(
            "tc",
            &[&["qdisc", "change", "dev", "lo", "root"][..], &fast].concat(),
        );
        // tbf looks at its queue again on its timer (80 s away) or when a packet
        // arrives: one from another socket starts the drain now.
        let kick = UdpSocket::bind("127.0.0.1:0").unwrap();
        kick.send_to(b"kick", kick.local_addr().unwrap()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), stalled)
            .await
            .expect("the waiting send went once there was room")
            .unwrap();
        assert!(socket.write_wait.lock().unwrap().upgrade().is_none());
        for m in 1..6 {
            step(n + 2 * m).await.unwrap();
        }
        let mut buf = [0u8; 2048];
        for m in 0..n + 12 {
            let len = receiver.recv(&mut buf).expect("every datagram arrives");
            assert_eq!(&buf[..len], &datagram(m)[..], "datagram {m}");
        }
        receiver.set_nonblocking(true).unwrap();
        assert_eq!(
            receiver.recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing more"
        );
    }

    /// Receives on a socket (bound to loopback, connected to the sender when
    /// `connected`) one datagram, then checks whether the read right after a second
    /// one arrives sees it (a connected socket) or skips the system call (an
    /// unconnected one, whose first batch drained its queue); either way the second
    /// datagram is read once the socket reports readiness again.
    async fn drain_then_arrival(connected: bool) {
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let std_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        if connected {
            std_socket.connect(sender.local_addr().unwrap()).unwrap();
        }
        let to = std_socket.local_addr().unwrap();
        let socket = Socket::new(std_socket, true).unwrap();
        assert_eq!(socket.short_read_drains, !connected);
        let mut receiver = Receiver::new(&socket);
        let mut out = Vec::new();
        sender.send_to(b"first", to).unwrap();
        let wait = Duration::from_secs(5);
        tokio::time::timeout(wait, socket.readable())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(receiver.recv_batch(&socket, &mut out).unwrap(), 1);
        sender.send_to(b"second", to).unwrap();
        // Loopback delivers within the send: the datagram is queued now.
        let next = receiver.recv_batch(&socket, &mut out);
        if connected {
            assert_eq!(next.unwrap(), 1);
        } else {
            assert_eq!(next.unwrap_err().kind(), io::ErrorKind::WouldBlock);
            tokio::time::timeout(wait, socket.readable())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(receiver.recv_batch(&socket, &mut out).unwrap(), 1);
        }
        let got: Vec<&[u8]> = out.iter().map(|d| &d.buf[..]).collect();
        assert_eq!(got, [&b"first"[..], &b"second"[..]]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_that_drains_an_unconnected_socket_skips_the_empty_read() {
        drain_then_arrival(false).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connected_socket_reads_until_its_queue_says_it_is_empty() {
        drain_then_arrival(true).await;
    }

    #[test]
    fn a_merged_run_gives_back_its_datagrams_and_only_equal_neighbours_merge() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:3".parse().unwrap();
        let mut parts = end_to_end(&[(5, a), (5, a), (5, a), (3, a), (5, a)]);
        let last = parts.pop().unwrap();
        let mut run = parts.remove(0);
        for p in parts {
            run.try_merge(p)
                .expect("equal segments end to end, then a shorter one");
        }
        // After a shorter datagram the run is closed.
        let last = run
            .try_merge(last)
            .expect_err("nothing follows a short segment");
        assert_eq!((run.segment, run.count(), last.count()), (5, 4, 1));
        let mut seen = Vec::new();
        run.for_each_datagram(|d| seen.push(d.to_vec()));
        assert_eq!(seen, [vec![0; 5], vec![1; 5], vec![2; 5], vec![3; 3]]);
        // A longer one, another sender, or not end to end: no merge.
        for (pair, why) in [
            (end_to_end(&[(4, a), (5, a)]), "a longer one"),
            (end_to_end(&[(4, a), (4, b)]), "another sender"),
            (
                end_to_end(&[(4, a)])
                    .into_iter()
                    .chain(end_to_end(&[(4, a)]))
                    .collect(),
                "another buffer",
            ),
        ] {
            let [mut first, second]: [Datagram; 2] = pair.try_into().unwrap();
            assert!(first.try_merge(second).is_err(), "{why}");
            let mut one = Vec::new();
            first.for_each_datagram(|d| one.push(d.len()));
            assert_eq!(one, [4], "{why}");
        }
    }

    #[tokio::test]
    async fn batches_of_different_segment_sizes_leave_as_their_datagrams() {
        three_batches("127.0.0.1:0", "127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn batches_reach_an_ipv4_peer_from_a_dual_stack_socket() {
        three_batches("[::]:0", "127.0.0.1:0").await;
    }

    #[tokio::test]
    async fn batches_reach_an_ipv6_peer() {
        if let Err(e) = UdpSocket::bind("[::1]:0") {
            eprintln!("skipped: no IPv6 loopback on this host ({e})");
            return;
        }
        three_batches("[::1]:0", "[::1]:0").await;
    }
}
