//! Handshakes run off the router: while hundreds of new connections handshake, an
//! established connection's round trips keep flowing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quic_app::{AppError, ApplicationOverQuic, HandshakeInfo, QuicConnection};
use quic_io::RetryPolicy;

use super::util::{Idle, client_params, echo_listener};

/// Sends `ping` on a new stream, waits for its echo, and again, until stopped;
/// records when each round trip ended and how long it took.
struct Pinger {
    stop: Arc<AtomicBool>,
    rtts: Arc<Mutex<Vec<(Instant, Duration)>>>,
    next_stream: u64,
    in_flight: Option<(u64, Instant, Vec<u8>)>,
}

impl Pinger {
    fn ping(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        if self.in_flight.is_some() || self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        let id = self.next_stream;
        self.next_stream += 4;
        conn.stream_send(id, b"ping", true)?;
        self.in_flight = Some((id, Instant::now(), Vec::new()));
        Ok(())
    }
}

impl ApplicationOverQuic for Pinger {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.ping(conn)
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let mut buf = [0u8; 64];
        let readable: Vec<u64> = conn.readable().collect();
        for id in readable {
            while let Ok((n, fin)) = conn.stream_recv(id, &mut buf) {
                if let Some((want, sent, got)) = &mut self.in_flight
                    && *want == id
                {
                    got.extend_from_slice(&buf[..n]);
                    if fin {
                        assert_eq!(got, b"ping", "the echo of stream {id}");
                        let now = Instant::now();
                        self.rtts.lock().unwrap().push((now, now - *sent));
                        self.in_flight = None;
                    }
                }
                if fin {
                    break;
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.ping(conn)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_keep_flowing_while_hundreds_of_handshakes_run() {
    const HANDSHAKES: usize = 300;
    let server = echo_listener(|p| {
        p.retry = RetryPolicy::Never;
        // Every client comes from 127.0.0.1.
        p.limits.max_handshakes_per_ip = HANDSHAKES + 1;
        p.limits.max_connections_per_ip = HANDSHAKES + 1;
    });
    let stop = Arc::new(AtomicBool::new(false));
    let rtts = Arc::new(Mutex::new(Vec::new()));
    let pinger = Pinger {
        stop: stop.clone(),
        rtts: rtts.clone(),
        next_stream: 0,
        in_flight: None,
    };
    let conn = quic_io::connect(server.addr, client_params(&server.cert_pem), pinger)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !rtts.lock().unwrap().is_empty(),
        "no round trip before the handshakes"
    );

    let storm_start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..HANDSHAKES {
        let params = client_params(&server.cert_pem);
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let conn = quic_io::connect(addr, params, Idle).await?;
            anyhow::ensure!(conn.handshake_info().is_some(), "not established");
            Ok(conn)
        }));
    }
    let mut established = Vec::new();
    for t in tasks {
        established.push(t.await.unwrap().unwrap());
    }
    let storm_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    // The round trip in flight when the storm ended is part of it.
    tokio::time::sleep(Duration::from_millis(500)).await;

    assert_eq!(established.len(), HANDSHAKES);
    assert_eq!(
        server.metrics.snapshot().initials_accepted,
        HANDSHAKES as u64 + 1
    );
    let rtts = rtts.lock().unwrap().clone();
    let during: Vec<Duration> = rtts
        .iter()
        .filter(|(ended, rtt)| *ended > storm_start && *ended - *rtt < storm_end)
        .map(|(_, rtt)| *rtt)
        .collect();
    let storm = storm_end - storm_start;
    let max = during.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{HANDSHAKES} handshakes in {storm:?}; {} round trips meanwhile, the longest {max:?}",
        during.len()
    );
    // Round trips went on during the storm (one stalled for all of it would count
    // too, and fail the bound below), none waiting anywhere near a second.
    assert!(
        !during.is_empty(),
        "no round trip during the {storm:?} storm"
    );
    assert!(
        max < Duration::from_secs(1),
        "a round trip took {max:?} while {HANDSHAKES} handshakes ran"
    );
    drop(conn);
}
