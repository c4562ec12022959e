//! Reads between a turn's datagrams: when the application asks for them, the worker
//! runs `process_reads` before each datagram of a turn but the first.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quic_app::{AppError, ApplicationOverQuic, QuicConnection};

use super::util::{client_params, server_params};

/// Packets the connection had received at each `process_reads` call, turn by turn (a
/// turn ends with `process_writes`).
type Turns = Arc<Mutex<Vec<Vec<usize>>>>;

/// A server that reads and drops whatever arrives, recording its turns.
struct Sink {
    asks: bool,
    turns: Turns,
    open: Vec<usize>,
}

impl ApplicationOverQuic for Sink {
    fn reads_between_datagrams(&self) -> bool {
        self.asks
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        self.open.push(conn.stats().recv);
        let mut buf = [0u8; 16 * 1024];
        let readable: Vec<u64> = conn.readable().collect();
        for id in readable {
            while let Ok((_, fin)) = conn.stream_recv(id, &mut buf) {
                if fin {
                    break;
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        if !self.open.is_empty() {
            self.turns
                .lock()
                .unwrap()
                .push(std::mem::take(&mut self.open));
        }
        Ok(())
    }
}

/// A client that sends `left` bytes on one stream as fast as flow control lets it.
struct Upload {
    left: usize,
}

impl ApplicationOverQuic for Upload {
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        let chunk = [7u8; 64 * 1024];
        while self.left > 0 {
            let n = self.left.min(chunk.len());
            match conn.stream_send(0, &chunk[..n], self.left == n) {
                Ok(0) | Err(quiche::Error::Done) => break,
                Ok(sent) => self.left -= sent,
                Err(e) => return Err(AppError::close(1, format!("send failed: {e}"))),
            }
        }
        Ok(())
    }
}

/// Uploads 4 MiB to a `Sink` that asks (or not) for reads between datagrams; returns
/// its turns once the upload has arrived.
async fn upload_turns(asks: bool) -> Vec<Vec<usize>> {
    let (params, cert_pem, _) = server_params();
    let mut listener = quic_io::listen_on("127.0.0.1:0".parse().unwrap(), params).unwrap();
    let addr = listener.local_addr();
    let turns: Turns = Arc::default();
    let server_turns = turns.clone();
    let server = tokio::spawn(async move {
        let incoming = listener.accept().await.unwrap();
        incoming.start(Sink {
            asks,
            turns: server_turns,
            open: Vec::new(),
        });
        // The listener (and its router) lives as long as this task.
        std::future::pending::<()>().await;
    });
    const SIZE: usize = 4 * 1024 * 1024;
    let conn = quic_io::connect(addr, client_params(&cert_pem), Upload { left: SIZE })
        .await
        .unwrap();
    // About 3,000 datagrams: until the server has seen them all, bounded in time.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let received = turns
            .lock()
            .unwrap()
            .last()
            .and_then(|t| t.last().copied())
            .unwrap_or(0);
        if received >= SIZE / 1500 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    server.abort();
    let turns = turns.lock().unwrap().clone();
    assert!(
        turns.last().and_then(|t| t.last()).copied().unwrap_or(0) >= SIZE / 1500,
        "the upload did not arrive in time"
    );
    turns
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_reads_between_its_datagrams_only_when_the_application_asks() {
    // Not asked: one read per turn, and turns that took in many datagrams at once
    // (which makes the other half of the test mean something).
    let turns = upload_turns(false).await;
    assert!(
        turns.iter().all(|t| t.len() == 1),
        "more than one read in a turn"
    );
    let widest = turns
        .windows(2)
        .map(|w| w[1][0] - w[0][0])
        .max()
        .unwrap_or(0);
    assert!(widest >= 4, "no turn took in more than {widest} packets");

    // Asked: within a turn, each read finds at most one more packet than the last,
    // and turns of many datagrams read many times.
    let turns = upload_turns(true).await;
    for t in &turns {
        for w in t.windows(2) {
            assert!(w[1] - w[0] <= 1, "a read found {} new packets", w[1] - w[0]);
        }
    }
    let most = turns.iter().map(Vec::len).max().unwrap_or(0);
    assert!(most >= 4, "at most {most} reads in a turn");
}
