use super::*;
use crate::metrics::NoopMetrics;

/// A socket on an ephemeral loopback port.
fn loopback() -> Arc<Socket> {
    let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    Arc::new(Socket::new(std, false).unwrap())
}

/// A router of 8-byte connection IDs on `socket`.
fn router_on(socket: Arc<Socket>, metrics: Arc<dyn Metrics>) -> Router {
    Router::new(
        socket,
        8,
        metrics,
        ResetKey::random(),
        None,
        CancellationToken::new(),
    )
}

/// A migrating client's new router delivers what waits in the old socket before
/// what it reads from its own, even when the old socket's router has not run; and
/// lets the old socket go once everyone else has.
#[tokio::test]
async fn a_new_socket_router_delivers_the_old_sockets_datagrams_first() {
    let (old, new) = (loopback(), loopback());
    let mut router = router_on(Arc::clone(&new), Arc::new(NoopMetrics));
    router.follow(&old);
    let cid = vec![7u8; 8];
    let (pkt_tx, mut pkt_rx) = queue::channel(64);
    let (ctrl_tx, _ctrl_rx) = queue::channel(1);
    let _registration = router.adopt(vec![cid.clone()], pkt_tx, ctrl_tx);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = |n: u8| [&[0x40][..], &cid, &[n; 24]].concat();
    for n in 0..5 {
        peer.send_to(&datagram(n), old.local_addr()).unwrap();
    }
    peer.send_to(&datagram(5), new.local_addr()).unwrap();
    // Loopback delivers at once; the wait only makes sure.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    router.read_batches();
    let mut seen = Vec::new();
    while let Ok(mut d) = pkt_rx.try_recv() {
        // A run read at once arrives as one item of equal segments.
        let segment = if d.segment == 0 {
            d.buf.len()
        } else {
            d.segment
        };
        while !d.buf.is_empty() {
            let one = d.buf.split_to(segment.min(d.buf.len()));
            seen.push((one[9], d.to));
        }
    }
    let expected: Vec<_> = (0..5)
        .map(|n| (n, old.local_addr()))
        .chain([(5, new.local_addr())])
        .collect();
    assert_eq!(seen, expected);
    // Once the others let the old socket go, the router does too: it closes.
    let addr = old.local_addr();
    drop(old);
    router.read_batches();
    assert!(router.predecessor.is_none());
    assert!(
        std::net::UdpSocket::bind(addr).is_ok(),
        "the old socket is closed"
    );
}

/// A receive batch mixing connections, a run per connection ID among them, reaches
/// each connection whole and in order; what a full queue cannot take is counted,
/// and the rest of its run still goes in once there is room for it.
#[tokio::test]
async fn runs_of_a_batch_reach_their_connections_in_order() {
    // A's queue takes 4 datagrams of 20 bytes by weight; B's has room for all.
    let (a_tx, mut a_rx) = queue::weighted(16, 80, |d: &Datagram| d.buf.len());
    let (b_tx, mut b_rx) = queue::channel(64);
    let (mut router, metrics, (a, b), _routes) = two_connections(a_tx, b_tx);
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let to = router.local_addr();
    let datagram = |cid: &[u8], n: u8| Datagram {
        buf: bytes::BytesMut::from(&[&[0x40][..], cid, &[n; 11]].concat()[..]),
        segment: 0,
        shared: false,
        from,
        to,
    };
    // A A A B A B B A A: runs of 3, 1, 1, 2 and 2.
    let order = [&a, &a, &a, &b, &a, &b, &b, &a, &a];
    let mut batch: Vec<Datagram> = order
        .iter()
        .enumerate()
        .map(|(n, cid)| datagram(cid, n as u8))
        .collect();
    router.route_batch(&mut batch);
    assert!(batch.is_empty());
    let drain = |rx: &mut queue::Receiver<Datagram>| {
        let mut seen = Vec::new();
        while let Ok(d) = rx.try_recv() {
            assert_eq!(d.buf.len(), 20);
            seen.push(d.buf[9]);
        }
        seen
    };
    assert_eq!(drain(&mut a_rx), [0, 1, 2, 4], "A's queue full after four");
    assert_eq!(drain(&mut b_rx), [3, 5, 6]);
    assert_eq!(metrics.snapshot().queue_full_drops, 2);
    // With room again, a whole run goes in.
    let mut batch = vec![datagram(&a, 9), datagram(&a, 10)];
    router.route_batch(&mut batch);
    assert_eq!(drain(&mut a_rx), [9, 10]);
    assert_eq!(metrics.snapshot().queue_full_drops, 2);
}

/// Datagrams of one receive buffer that lie end to end (a GRO read's segments)
/// reach their connection as one item of equal segments, bytes untouched; a gap, a
/// longer datagram or another sender starts a new item.
#[tokio::test]
async fn segments_of_one_buffer_are_queued_as_one_run() {
    let mut router = router_on(loopback(), Arc::new(NoopMetrics));
    let cid = vec![3u8; 8];
    let (tx, mut rx) = queue::channel(64);
    let (ctrl_tx, _ctrl_rx) = queue::channel(1);
    let _r = router.adopt(vec![cid.clone()], tx, ctrl_tx);
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let other: std::net::SocketAddr = "127.0.0.1:10".parse().unwrap();
    let to = router.local_addr();
    // Segments of 20 bytes, then a short last one; then 20 more from another
    // sender; then two full ones again.
    let lens = [20, 20, 20, 15, 20, 20, 20];
    let froms = [from, from, from, from, other, from, from];
    let mut bytes = bytes::BytesMut::new();
    for (n, len) in lens.iter().enumerate() {
        bytes.extend_from_slice(&[0x40]);
        bytes.extend_from_slice(&cid);
        bytes.extend_from_slice(&vec![n as u8; len - 9]);
    }
    let whole = bytes.clone().freeze();
    let mut batch = Vec::new();
    for (len, from) in lens.iter().zip(froms) {
        batch.push(Datagram {
            buf: bytes.split_to(*len),
            segment: 0,
            shared: false,
            from,
            to,
        });
    }
    router.route_batch(&mut batch);
    let mut items = Vec::new();
    while let Ok(d) = rx.try_recv() {
        items.push((d.buf.len(), d.segment, d.count(), d.from, d.buf.freeze()));
    }
    let shape: Vec<_> = items.iter().map(|i| (i.0, i.1, i.2, i.3)).collect();
    assert_eq!(
        shape,
        [(75, 20, 4, from), (20, 0, 1, other), (40, 20, 2, from)],
    );
    let joined: Vec<u8> = items.iter().flat_map(|i| i.4.to_vec()).collect();
    assert_eq!(joined, whole.to_vec(), "bytes and order unchanged");
}

/// A GRO read (one item of several datagrams) whose datagrams are all for one
/// connection reaches it as that one item; one that mixes connections is taken
/// apart, each datagram reaching its own connection, in order, bytes untouched.
#[tokio::test]
async fn a_gro_read_goes_whole_only_when_its_datagrams_share_a_connection() {
    let (a_tx, mut a_rx) = queue::channel(64);
    let (b_tx, mut b_rx) = queue::channel(64);
    let (mut router, metrics, (a, b), _routes) = two_connections(a_tx, b_tx);
    let from: std::net::SocketAddr = "127.0.0.1:9".parse().unwrap();
    let to = router.local_addr();
    // Datagrams of 20 bytes (the last 15), the `n`th filled with `n`, end to end.
    let read = |cids: &[&Vec<u8>], first: u8| {
        let mut bytes = bytes::BytesMut::new();
        for (i, cid) in cids.iter().enumerate() {
            let len = if i + 1 == cids.len() { 15 } else { 20 };
            bytes.extend_from_slice(&[0x40]);
            bytes.extend_from_slice(cid);
            bytes.extend_from_slice(&vec![first + i as u8; len - 9]);
        }
        Datagram {
            buf: bytes,
            segment: 20,
            shared: false,
            from,
            to,
        }
    };
    let items = |rx: &mut queue::Receiver<Datagram>| {
        let mut seen = Vec::new();
        while let Ok(d) = rx.try_recv() {
            let mut tags = Vec::new();
            let segment = d.segment;
            d.for_each_datagram(|one| tags.push(one[9]));
            seen.push((segment, tags));
        }
        seen
    };
    let mut batch = vec![read(&[&a, &a, &a], 0)];
    router.route_batch(&mut batch);
    assert_eq!(items(&mut a_rx), [(20, vec![0, 1, 2])], "one item, whole");
    // A, B, A, A, an unknown ID, B: each on its own.
    let unknown = vec![7u8; 8];
    let mut batch = vec![read(&[&a, &b, &a, &a, &unknown, &b], 10)];
    router.route_batch(&mut batch);
    assert_eq!(
        items(&mut a_rx),
        [(0, vec![10]), (0, vec![12]), (0, vec![13])]
    );
    assert_eq!(items(&mut b_rx), [(0, vec![11]), (0, vec![15])]);
    let dropped = |reason| {
        let snapshot = metrics.snapshot();
        snapshot
            .datagrams_dropped
            .iter()
            .find(|(r, _)| *r == reason)
            .unwrap()
            .1
    };
    // The unknown ID's datagram alone is dropped (a client's router: no reset).
    assert_eq!(dropped(DropReason::UnknownConnection), 1);
    // A read with a long-header packet in it is taken apart too: its short-header
    // datagram reaches A, the other is judged on its own and dropped.
    let mut mixed = read(&[&a, &a], 20);
    mixed.buf[20] = 0xc0;
    router.route_batch(&mut vec![mixed]);
    assert_eq!(items(&mut a_rx), [(0, vec![20])]);
    let total: u64 = metrics
        .snapshot()
        .datagrams_dropped
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(total, 2);
}

/// A client's router (no accept path) with connections A (ID 1…1) and B (ID 2…2)
/// queuing to `a_tx` and `b_tx`, its metrics counted; the routes last as long as
/// the last value returned (the registrations and the workers' command queue).
fn two_connections(
    a_tx: queue::Sender<Datagram>,
    b_tx: queue::Sender<Datagram>,
) -> (
    Router,
    Arc<crate::metrics::CountingMetrics>,
    (Vec<u8>, Vec<u8>),
    impl Sized,
) {
    let metrics = Arc::new(crate::metrics::CountingMetrics::default());
    let mut router = router_on(loopback(), Arc::clone(&metrics) as Arc<dyn Metrics>);
    let (a, b) = (vec![1u8; 8], vec![2u8; 8]);
    let (ctrl_tx, ctrl_rx) = queue::channel(1);
    let ra = router.adopt(vec![a.clone()], a_tx, ctrl_tx.clone());
    let rb = router.adopt(vec![b.clone()], b_tx, ctrl_tx);
    (router, metrics, (a, b), (ra, rb, ctrl_rx))
}

/// Registration messages go through however many are pending: a bounded queue
/// that drops on full would leave handshakes counted (and Retry or
/// `HandshakeLimit` for everyone) or routes leaked.
#[tokio::test]
async fn registration_messages_are_never_lost_however_many_are_pending() {
    let mut router = router_on(loopback(), Arc::new(NoopMetrics));
    let mut registrations = Vec::new();
    for i in 0..5_000u64 {
        let (ctrl_tx, _ctrl_rx) = queue::channel(1);
        let source = Some(SourceKey::of([10, 0, (i / 256) as u8, i as u8].into()));
        let (r, _pkt_tx, _pkt_rx) =
            router.register(vec![i.to_be_bytes().to_vec()], None, ctrl_tx, source);
        registrations.push(r);
    }
    assert_eq!(router.handshaking, 5_000);
    // Every worker reports its handshake before the router gets to run.
    for r in &mut registrations {
        r.established();
        r.established();
    }
    while let Ok(cmd) = router.cmd_rx.try_recv() {
        router.handle(cmd);
    }
    assert_eq!(router.handshaking, 0);
    assert_eq!(router.conns.len(), 5_000);
    assert!(router.sources.values().all(|c| c.handshakes == 0));
    drop(registrations);
    while let Ok(cmd) = router.cmd_rx.try_recv() {
        router.handle(cmd);
    }
    assert!(router.conns.is_empty());
    assert!(router.routes.is_empty());
    assert!(router.sources.is_empty());
}
