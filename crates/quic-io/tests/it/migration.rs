//! A client connection moves to a new local socket mid-transfer: every byte arrives,
//! and the old socket is let go once the new path is validated.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quic_app::echo::{EchoClient, EchoServer};
use quic_app::{AppError, ApplicationOverQuic, QuicConnection};
use quic_io::MigrateError;

use super::util::{Idle, client_params, echo_listener, migrate_when_ready, server_params};

/// The echo server, noting every client address it has received packets from.
struct Watched {
    echo: EchoServer,
    peers: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl ApplicationOverQuic for Watched {
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.echo.process_reads(conn)
    }
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let mut peers = self.peers.lock().unwrap();
        for path in conn.path_stats().filter(|p| p.recv > 0) {
            peers.insert(path.peer_addr);
        }
        drop(peers);
        self.echo.process_writes(conn)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_migrates_mid_transfer_and_every_byte_arrives() {
    const BYTES: u64 = 16 * 1024 * 1024;
    let (params, cert_pem, _) = server_params();
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let server_addr = listener.local_addr();
    let peers = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::clone(&peers);
    tokio::spawn(async move {
        while let Ok(incoming) = listener.accept().await {
            incoming.start(Watched {
                echo: EchoServer::new(),
                peers: Arc::clone(&seen),
            });
        }
    });
    let std = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let old = std.local_addr().unwrap();
    drop(std);
    let mut params = client_params(&cert_pem);
    params.bind = Some(old);
    let (app, report) = EchoClient::new(2, BYTES);
    let conn = quic_io::connect(server_addr, params, app).await.unwrap();
    let new = migrate_when_ready(&conn, "127.0.0.1:0".parse().unwrap()).await;
    assert_ne!(new.port(), old.port());
    let at_migration = conn.stats().await.bytes_recv;
    assert!(
        at_migration < 2 * BYTES,
        "migrated after the transfer ({at_migration} bytes)"
    );
    let report = tokio::time::timeout(Duration::from_secs(30), report)
        .await
        .expect("the transfer finished")
        .unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.bytes_received(), 2 * BYTES);
    // The old socket was closed once the new path was validated: its port is free.
    let freed = async {
        loop {
            if std::net::UdpSocket::bind(old).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), freed)
        .await
        .expect("the old socket is let go");
    // The server received packets from the new address.
    let peers = peers.lock().unwrap().clone();
    assert!(peers.contains(&new), "{peers:?} lacks {new}");
    conn.close(0, b"done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_cannot_happen_says_why() {
    let server = echo_listener(|_| {});
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), Idle)
        .await
        .unwrap();
    // A busy address: the bind fails.
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = conn.migrate(busy.local_addr().unwrap()).await.unwrap_err();
    assert!(matches!(err, MigrateError::Socket(_)), "{err}");
    conn.close(0, b"done").await;
    conn.closed().await;
    let err = conn
        .migrate("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, MigrateError::Closed), "{err}");
}
