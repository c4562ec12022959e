//! Sharded listeners: several SO_REUSEPORT sockets, a router each, connections owned
//! by the shard their connection IDs name.

use std::time::Duration;

use quic_app::echo::EchoClient;
use quic_io::{ListenError, QuicLbConfig, Sharding};

use super::util::{Idle, client_params, migrate_when_ready, serve_echo, server_params};

const ANY: &str = "127.0.0.1:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_shards_share_hundreds_of_connections() {
    const CONNS: usize = 200;
    let (mut params, cert_pem, metrics) = server_params();
    params.limits.max_connections_per_ip = 10_000;
    params.limits.max_handshakes_per_ip = 10_000;
    let listener = quic_io::listen_sharded(ANY.parse().unwrap(), 4, params).unwrap();
    assert_eq!(listener.shards(), 4);
    let addr = listener.local_addr();
    let stats = listener.stats_handle();
    let _server = serve_echo(listener);
    let mut conns = Vec::new();
    for batch in 0..CONNS / 50 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let params = client_params(&cert_pem);
            tasks.spawn(async move { quic_io::connect(addr, params, Idle).await });
        }
        while let Some(conn) = tasks.join_next().await {
            conns.push(
                conn.unwrap()
                    .unwrap_or_else(|e| panic!("batch {batch}: {e}")),
            );
        }
    }
    let shards = stats.shards().await.unwrap();
    assert_eq!(shards.len(), 4);
    let accepted: Vec<u64> = shards.iter().map(|s| s.accepted).collect();
    let open: Vec<usize> = shards.iter().map(|s| s.connections).collect();
    assert_eq!(accepted.iter().sum::<u64>(), CONNS as u64, "{accepted:?}");
    assert_eq!(open.iter().sum::<usize>(), CONNS, "{open:?}");
    // The kernel's hash spreads 200 clients over every shard.
    assert!(accepted.iter().all(|a| *a > 0), "{accepted:?}");
    // Every connection's routes are in its own shard: none was forwarded.
    assert_eq!(shards.iter().map(|s| s.forwarded).sum::<u64>(), 0);
    let total = stats.get().await.unwrap();
    assert_eq!(total.connections, CONNS);
    assert_eq!(metrics.snapshot().initials_accepted, CONNS as u64);
    for conn in &conns {
        conn.close(0, b"done").await;
    }
    for conn in conns {
        conn.closed().await;
    }
    let drained = async {
        loop {
            let s = stats.get().await.unwrap();
            if s.connections == 0 && s.routes == 0 && s.sources == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("every shard's table empties");
}

/// Eight clients download from a 4-shard listener and each moves to a new port
/// mid-transfer. The kernel hashes most new 4-tuples to other shards' sockets: with
/// steering those datagrams go straight to the owning shard; without, the shard that
/// gets one forwards it. Either way every byte arrives.
async fn migrations_keep_their_bytes(steering: bool) -> quic_io::EndpointStats {
    const CLIENTS: usize = 8;
    const BYTES: u64 = 2 * 1024 * 1024;
    let (params, cert_pem, metrics) = server_params();
    let sharding = Sharding::new(4).kernel_steering(steering);
    let listener = quic_io::listen_sharded(ANY.parse().unwrap(), sharding, params).unwrap();
    assert_eq!(listener.kernel_steering(), steering);
    let addr = listener.local_addr();
    let stats = listener.stats_handle();
    let _server = serve_echo(listener);
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let params = client_params(&cert_pem);
        clients.spawn(async move {
            let (app, report) = EchoClient::new(2, BYTES);
            let conn = quic_io::connect(addr, params, app).await.unwrap();
            let old = conn.local_addr();
            let new = migrate_when_ready(&conn, ANY.parse().unwrap()).await;
            assert_ne!(new.port(), old.port());
            let report = tokio::time::timeout(Duration::from_secs(30), report)
                .await
                .expect("the transfer finished")
                .unwrap();
            assert!(report.is_ok(), "{report:?}");
            assert_eq!(report.bytes_received(), 2 * BYTES);
            conn.close(0, b"done").await;
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let shards = stats.shards().await.unwrap();
    // Late datagrams (the closes) may still be forwarded: the counter and the
    // metric are compared once they hold still across a read.
    let settled = async {
        loop {
            let before = metrics.snapshot().datagrams_forwarded;
            let total = stats.get().await.unwrap();
            if before == total.forwarded && metrics.snapshot().datagrams_forwarded == before {
                return total;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let total = tokio::time::timeout(Duration::from_secs(5), settled)
        .await
        .expect("the forwarded counter and its metric agree");
    assert_eq!(total.accepted, CLIENTS as u64, "{shards:?}");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_client_keeps_its_bytes_when_its_shard_forwards() {
    let total = migrations_keep_their_bytes(false).await;
    // Eight new 4-tuples all hashed to their own shard: one chance in 65,536.
    assert!(total.forwarded > 0, "{total:?}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrating_client_keeps_its_bytes_when_the_kernel_steers() {
    let total = migrations_keep_their_bytes(true).await;
    // Every datagram reached its shard's socket directly.
    assert_eq!(total.forwarded, 0, "{total:?}");
}

#[tokio::test]
async fn a_sharded_listener_refuses_what_it_cannot_do() {
    let (params, _, _) = server_params();
    for shards in [0, 33] {
        let err =
            quic_io::listen_sharded(ANY.parse().unwrap(), shards, params.clone()).unwrap_err();
        assert!(
            matches!(&err, ListenError::Invalid(e) if e.to_string().contains("shards")),
            "{err}"
        );
    }
    // QUIC-LB IDs that encode their length leave no room for a shard number.
    let mut lb = params.clone();
    let config = QuicLbConfig::new(0, 2, 6).unwrap();
    lb.set_cid_generator(std::sync::Arc::new(config.generator(&[1, 2]).unwrap()));
    let err = quic_io::listen_sharded(ANY.parse().unwrap(), 2, lb).unwrap_err();
    assert!(
        matches!(&err, ListenError::Invalid(e) if e.to_string().contains("cid_generator")),
        "{err}"
    );
    // Without length encoding they have it, and the server ID stays readable.
    let mut lb = params.clone();
    let config = QuicLbConfig::new(0, 2, 6)
        .unwrap()
        .without_length_encoding();
    lb.set_cid_generator(std::sync::Arc::new(config.generator(&[1, 2]).unwrap()));
    let listener = quic_io::listen_sharded(ANY.parse().unwrap(), 2, lb).unwrap();
    // A busy port: held by a plain socket, or by another sharded listener (whose
    // SO_REUSEPORT group would otherwise take the new sockets in).
    let busy = std::net::UdpSocket::bind(ANY).unwrap();
    for addr in [busy.local_addr().unwrap(), listener.local_addr()] {
        let err = quic_io::listen_sharded(addr, 2, params.clone()).unwrap_err();
        assert!(matches!(&err, ListenError::Bind { .. }), "{addr}: {err}");
    }
    // One shard is a plain listener.
    let one = quic_io::listen_sharded(ANY.parse().unwrap(), 1, params).unwrap();
    assert_eq!(one.shards(), 1);
    assert!(!one.kernel_steering());
}
