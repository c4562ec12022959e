//! Connection IDs a listener issues: from its generator (QUIC-LB here), one spare at
//! a time and the next once one is used or retired, all routed; retired ones
//! unrouted; none left behind.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quic_app::{AppError, ApplicationOverQuic, QuicConnection};
use quic_io::{ConnectionIdGenerator, QuicLbConfig, RetryPolicy, StatsHandle};

use super::util::{Idle, client_params, server_params};

const SERVER_ID: [u8; 2] = [0x42, 0x43];

/// Records the connection IDs the server's connection has issued: the current ones
/// and every one ever seen.
#[derive(Default, Clone)]
struct Seen {
    current: Arc<Mutex<Vec<Vec<u8>>>>,
    ever: Arc<Mutex<HashSet<Vec<u8>>>>,
}

struct Recorder(Seen);

impl ApplicationOverQuic for Recorder {
    // A turn every 20 ms, so that what the worker issued after the last one is seen
    // without waiting for the client to send.
    fn should_act(&self) -> bool {
        true
    }
    async fn wait_for_data(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let ids: Vec<Vec<u8>> = conn.source_ids().map(|c| c.to_vec()).collect();
        self.0.ever.lock().unwrap().extend(ids.iter().cloned());
        *self.0.current.lock().unwrap() = ids;
        Ok(())
    }
}

/// Retires the server's connection ID with sequence number 1, 200 ms after it got
/// it (so the server's recorder has seen it first).
struct Retirer {
    got_at: Option<std::time::Instant>,
    retired: bool,
}

impl ApplicationOverQuic for Retirer {
    fn should_act(&self) -> bool {
        !self.retired
    }
    async fn wait_for_data(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(())
    }
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        if conn.available_dcids() > 0 && self.got_at.is_none() {
            self.got_at = Some(std::time::Instant::now());
        }
        if !self.retired
            && self
                .got_at
                .is_some_and(|t| t.elapsed() >= Duration::from_millis(200))
        {
            self.retired = conn.retire_dcid(1).is_ok();
        }
        Ok(())
    }
}

fn config() -> QuicLbConfig {
    QuicLbConfig::new(1, SERVER_ID.len(), 6)
        .unwrap()
        .with_key([0x5c; 16])
}

/// A QUIC-LB listener whose connections record their IDs.
fn listener() -> (std::net::SocketAddr, String, StatsHandle, Seen) {
    let (mut params, cert_pem, _) = server_params();
    let generator = config().generator(&SERVER_ID).unwrap();
    params.set_cid_generator(Arc::new(generator));
    params.retry = RetryPolicy::Never;
    params.limits.max_handshakes_per_ip = 1000;
    params.limits.max_connections_per_ip = 1000;
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let stats = listener.stats_handle();
    let seen = Seen::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            incoming.start(Recorder(record.clone()));
        }
    });
    (addr, cert_pem, stats, seen)
}

/// Waits up to 5 s for `f` to hold.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_spare_id_carries_the_server_id_and_is_routed() {
    let (addr, cert_pem, stats, seen) = listener();
    let params = client_params(&cert_pem);
    assert!(params.settings.active_connection_id_limit > 2);
    let conn = quic_io::connect(addr, params, Idle).await.unwrap();
    eventually("the server issues a spare ID", async || {
        seen.current.lock().unwrap().len() == 2
    })
    .await;
    // A while later there is still one spare, though the client allows more.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids = seen.current.lock().unwrap().clone();
    assert_eq!(ids.len(), 2, "{ids:02x?}");
    let cfg = config();
    for id in &ids {
        assert_eq!(id.len(), cfg.cid_len());
        assert_eq!(id[0] >> 5, 1, "config rotation bits of {id:02x?}");
        assert_eq!(
            cfg.server_id(id).map(|s| s.as_bytes().to_vec()),
            Some(SERVER_ID.to_vec()),
            "{id:02x?}"
        );
    }
    assert_ne!(ids[0], ids[1]);
    // Both are routed, and the client's first DCID with them.
    let s = stats.get().await.unwrap();
    assert_eq!((s.connections, s.routes), (1, 3), "{s:?}");
    // The generator is the listener's own: IDs it makes decode the same.
    let fresh = config().generator(&SERVER_ID).unwrap().new_id();
    assert_eq!(cfg.server_id(&fresh).unwrap().as_bytes(), SERVER_ID);
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retired_id_is_unrouted_and_replaced() {
    let (addr, cert_pem, stats, seen) = listener();
    let params = client_params(&cert_pem);
    let conn = quic_io::connect(
        addr,
        params,
        Retirer {
            got_at: None,
            retired: false,
        },
    )
    .await
    .unwrap();
    eventually("the retired ID is replaced", async || {
        seen.ever.lock().unwrap().len() == 3 && seen.current.lock().unwrap().len() == 2
    })
    .await;
    let current: HashSet<Vec<u8>> = seen.current.lock().unwrap().iter().cloned().collect();
    let retired: Vec<Vec<u8>> = seen
        .ever
        .lock()
        .unwrap()
        .difference(&current)
        .cloned()
        .collect();
    assert_eq!(retired.len(), 1, "{retired:02x?}");
    eventually("the routes match the live IDs", async || {
        stats.get().await.unwrap().routes == 3
    })
    .await;
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_churn_the_routing_table_returns_to_empty() {
    let (addr, cert_pem, stats, _seen) = listener();
    for round in 0..4 {
        let mut conns = Vec::new();
        for _ in 0..10 {
            let conn = quic_io::connect(addr, client_params(&cert_pem), Idle)
                .await
                .unwrap();
            conns.push(conn);
        }
        // The spare IDs are out (one connection per turn of the others).
        eventually("every connection has its IDs routed", async || {
            stats.get().await.unwrap().routes >= 10 * 2
        })
        .await;
        for conn in conns {
            conn.close(0, "churn").await;
            conn.closed().await;
        }
        eventually("the table empties", async || {
            let s = stats.get().await.unwrap();
            s.connections == 0 && s.routes == 0 && s.sources == 0
        })
        .await;
        let _ = round;
    }
}
