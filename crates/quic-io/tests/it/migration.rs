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

/// A quiche server driven by hand, so a test can choose which of its packets leave
/// and in what order.
struct HandServer {
    socket: tokio::net::UdpSocket,
    conn: quiche::Connection,
    local: SocketAddr,
    _dir: TempDir,
}

fn local_port(socket: &tokio::net::UdpSocket) -> u16 {
    socket.local_addr().unwrap().port()
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl HandServer {
    /// Binds, then accepts the first connection that arrives, answering nothing else.
    async fn accept(socket: tokio::net::UdpSocket, cert_pem: &str, key_pem: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "quic-io-hand-{}-{}",
            std::process::id(),
            local_port(&socket)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = TempDir(dir);
        std::fs::write(dir.0.join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.0.join("key.pem"), key_pem).unwrap();
        let mut cfg = quiche::Config::new(quiche::PROTOCOL_VERSION).unwrap();
        cfg.load_cert_chain_from_pem_file(dir.0.join("cert.pem").to_str().unwrap())
            .unwrap();
        cfg.load_priv_key_from_pem_file(dir.0.join("key.pem").to_str().unwrap())
            .unwrap();
        cfg.set_application_protos(&[quic_app::echo::ALPN]).unwrap();
        cfg.set_max_idle_timeout(30_000);
        cfg.set_initial_max_data(1 << 20);
        cfg.set_initial_max_stream_data_bidi_remote(1 << 20);
        cfg.set_initial_max_streams_bidi(10);
        cfg.set_active_connection_id_limit(4);
        let local = socket.local_addr().unwrap();
        let mut buf = vec![0u8; 65535];
        let (len, from) = socket.recv_from(&mut buf).await.unwrap();
        let hdr = quiche::Header::from_slice(&mut buf[..len], quiche::MAX_CONN_ID_LEN).unwrap();
        let scid = [0x5a; 16];
        let scid = quiche::ConnectionId::from_ref(&scid);
        let mut conn = quiche::accept(&scid, Some(&hdr.dcid), local, from, &mut cfg).unwrap();
        conn.recv(&mut buf[..len], quiche::RecvInfo { from, to: local })
            .unwrap();
        let mut server = Self {
            socket,
            conn,
            local,
            _dir: dir,
        };
        server.flush().await;
        server
    }

    /// Sends everything the connection has to send now.
    async fn flush(&mut self) {
        let mut out = vec![0u8; 1500];
        while let Ok((len, info)) = self.conn.send(&mut out) {
            self.socket.send_to(&out[..len], info.to).await.unwrap();
        }
    }

    /// The next packet the connection would send, held back.
    fn hold(&mut self) -> (Vec<u8>, SocketAddr) {
        let mut out = vec![0u8; 1500];
        let (len, info) = self.conn.send(&mut out).unwrap();
        out.truncate(len);
        (out, info.to)
    }

    /// Receives and answers until `done` holds or the time is up.
    async fn drive_until(&mut self, mut done: impl FnMut(&quiche::Connection) -> bool) {
        self.drive(|_| true, |c| done(c)).await;
    }

    /// Receives and answers until `done` holds or the time is up. Each datagram
    /// `keep` refuses is dropped unread; `done` runs before each answer, and may act
    /// on the connection so that the answer carries it.
    async fn drive(
        &mut self,
        mut keep: impl FnMut(&[u8]) -> bool,
        mut done: impl FnMut(&mut quiche::Connection) -> bool,
    ) {
        let mut buf = vec![0u8; 65535];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        if done(&mut self.conn) {
            return;
        }
        loop {
            let wait = self
                .conn
                .timeout()
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100));
            assert!(
                tokio::time::Instant::now() < deadline,
                "the hand-driven server never saw what it waited for"
            );
            match tokio::time::timeout(wait, self.socket.recv_from(&mut buf)).await {
                Ok(Ok((len, _))) if !keep(&buf[..len]) => continue,
                Ok(Ok((len, from))) => {
                    let info = quiche::RecvInfo {
                        from,
                        to: self.local,
                    };
                    let _ = self.conn.recv(&mut buf[..len], info);
                }
                Ok(Err(e)) => panic!("receive failed: {e}"),
                Err(_) => self.conn.on_timeout(),
            }
            let finished = done(&mut self.conn);
            self.flush().await;
            if finished {
                return;
            }
        }
    }
}

/// The peer retires one of the client's connection IDs, and a packet it sent to that
/// ID earlier arrives after the retirement: reordered on the path, or (after a
/// migration) on the old socket behind the new one. The packet is dropped; the
/// connection carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_packet_to_a_just_retired_connection_id_does_not_close_the_connection() {
    let identity = quic_io::TlsConfig::self_signed(&["localhost"]).unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = socket.local_addr().unwrap();
    let server = tokio::spawn({
        let (cert, key) = (identity.cert_pem.clone(), identity.key_pem.clone());
        async move { HandServer::accept(socket, &cert, &key).await }
    });
    let connecting = tokio::spawn(quic_io::connect(
        server_addr,
        client_params(&identity.cert_pem),
        Idle,
    ));
    let mut server = server.await.unwrap();
    // Until the client has issued a spare ID the server can switch to.
    server
        .drive_until(|c| c.is_established() && c.available_dcids() > 0)
        .await;
    let conn = connecting.await.unwrap().unwrap();
    let before = conn.stats().await;

    // A packet to the client's first ID (sequence 0), held back...
    let first = server.conn.destination_id().into_owned();
    server.conn.send_ack_eliciting().unwrap();
    let (early, to) = server.hold();
    assert_eq!(&early[1..1 + first.len()], first.as_ref());
    // ...then a packet that retires that ID, sent first.
    server.conn.retire_dcid(0).unwrap();
    assert_ne!(server.conn.destination_id(), first);
    server.flush().await;
    server.socket.send_to(&early, to).await.unwrap();

    // Two round trips: the client answers both, and closes nothing.
    for _ in 0..2 {
        let recv = server.conn.stats().recv;
        server.conn.send_ack_eliciting().unwrap();
        server.flush().await;
        server
            .drive_until(|c| c.stats().recv > recv || c.is_closed() || c.is_draining())
            .await;
        assert_eq!(
            server.conn.peer_error(),
            None,
            "the client closed the connection"
        );
    }
    assert!(!conn.is_closed());
    // The server has seen the client's answers; the client reads the server's packets
    // on its own schedule, so wait (bounded) until it has.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = conn.stats().await;
        if after.bytes_recv > before.bytes_recv {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client received nothing after the retirement"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!conn.is_closed());
    conn.close(0, b"done").await;
}

/// Whether a datagram starts with a short-header (1-RTT) packet.
fn short_header(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & 0x80 == 0)
}

/// The client gives the server one spare ID at a time, and the next as soon as the
/// server uses it. A peer holding several can skip to a later one while an earlier
/// one's NEW_CONNECTION_ID is still being retransmitted, and retire the earlier one
/// unseen; quiche then fails every send (the next test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_one_spare_id_at_the_server_and_replaces_it_once_used() {
    let identity = quic_io::TlsConfig::self_signed(&["localhost"]).unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = socket.local_addr().unwrap();
    let server = tokio::spawn({
        let (cert, key) = (identity.cert_pem.clone(), identity.key_pem.clone());
        async move { HandServer::accept(socket, &cert, &key).await }
    });
    let connecting = tokio::spawn(quic_io::connect(
        server_addr,
        client_params(&identity.cert_pem),
        Idle,
    ));
    let mut server = server.await.unwrap();
    server
        .drive_until(|c| c.is_established() && c.available_dcids() > 0)
        .await;
    let conn = connecting.await.unwrap().unwrap();
    // Three round trips later the client still offers one, though both sides
    // allow four IDs.
    for _ in 0..3 {
        let recv = server.conn.stats().recv;
        server.conn.send_ack_eliciting().unwrap();
        server.flush().await;
        server.drive_until(|c| c.stats().recv > recv).await;
    }
    assert_eq!(server.conn.available_dcids(), 1);

    // The server moves to the spare: the client issues the next one.
    let first = server.conn.destination_id().into_owned();
    server.conn.retire_dcid(0).unwrap();
    assert_eq!(server.conn.available_dcids(), 0);
    server.conn.send_ack_eliciting().unwrap();
    server.flush().await;
    server.drive_until(|c| c.available_dcids() == 1).await;
    assert_ne!(server.conn.destination_id(), first);
    assert!(!conn.is_closed());
    conn.close(0, b"done").await;
}

/// quiche 0.30 re-sends a lost NEW_CONNECTION_ID even when the peer has retired
/// that ID since, and from then on fails every packet it builds. The server here
/// arranges it: it holds back the client's first 1-RTT datagram (the one with the
/// spare ID) and answers the ones after it, so the client declares it lost and sends
/// the ID again; it drops that copy, takes the first one, and retires the ID. When
/// the client then declares the copy lost too, it cannot send again: it closes at
/// once with INTERNAL_ERROR rather than going silent until the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_can_no_longer_send_closes_at_once() {
    let identity = quic_io::TlsConfig::self_signed(&["localhost"]).unwrap();
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let server_addr = socket.local_addr().unwrap();
    let server = tokio::spawn({
        let (cert, key) = (identity.cert_pem.clone(), identity.key_pem.clone());
        async move { HandServer::accept(socket, &cert, &key).await }
    });
    let connecting = tokio::spawn(quic_io::connect(
        server_addr,
        client_params(&identity.cert_pem),
        Idle,
    ));
    let mut server = server.await.unwrap();

    // Every 1-RTT datagram of the client's is held until there are four, 150 ms
    // after the first.
    let held = std::cell::RefCell::new(Vec::<Vec<u8>>::new());
    let first_at = std::cell::Cell::new(None::<tokio::time::Instant>);
    server
        .drive(
            |d| {
                if short_header(d) {
                    held.borrow_mut().push(d.to_vec());
                    if first_at.get().is_none() {
                        first_at.set(Some(tokio::time::Instant::now()));
                    }
                    return false;
                }
                true
            },
            |_| {
                held.borrow().len() >= 4
                    && first_at
                        .get()
                        .is_some_and(|t| t.elapsed() >= Duration::from_millis(150))
            },
        )
        .await;
    let mut held = held.into_inner();
    let conn = connecting.await.unwrap().unwrap();
    let client = conn.local_addr();
    let recv = |server: &mut HandServer, d: &mut [u8]| {
        let info = quiche::RecvInfo {
            from: client,
            to: server.local,
        };
        let _ = server.conn.recv(d, info);
    };
    // The ones after the first are answered: the client declares the first lost
    // and sends its frames again, in datagrams dropped for 100 ms.
    for d in &mut held[1..] {
        recv(&mut server, d);
    }
    assert_eq!(server.conn.available_dcids(), 0, "the spare ID came late");
    server.flush().await;
    let mut dropped = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut buf = vec![0u8; 65535];
    while let Ok(Ok(_)) = tokio::time::timeout_at(until, server.socket.recv_from(&mut buf)).await {
        dropped += 1;
    }
    assert!(dropped > 0, "the client sent nothing again");
    // The first arrives now, with the spare ID, which the answer retires.
    recv(&mut server, &mut held[0]);
    assert!(
        server.conn.available_dcids() > 0,
        "the first datagram held no spare ID"
    );
    server.conn.retire_dcid(1).unwrap();
    server.flush().await;

    let closed = async {
        server.drive_until(|c| c.peer_error().is_some()).await;
        conn.closed().await
    };
    let closed = tokio::time::timeout(Duration::from_secs(10), closed)
        .await
        .expect("the client neither sent nor closed");
    match &closed.reason {
        quic_app::CloseReason::Local { app, code, reason } => {
            assert!(!app);
            assert_eq!(*code, 0x1, "INTERNAL_ERROR");
            assert_eq!(String::from_utf8_lossy(reason), "cannot send: InvalidState");
        }
        other => panic!("closed by {other:?}"),
    }
    let e = server.conn.peer_error().unwrap();
    assert_eq!((e.is_app, e.error_code), (false, 0x1));
}
