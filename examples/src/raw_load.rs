//! The raw-QUIC side of `quay-load`: each request is a bidirectional stream carrying
//! the request bytes with FIN, answered by the peer's echo (`echo-server`, ALPN
//! `quay-echo`) until its FIN.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use quay::app::{AppError, ApplicationOverQuic, QuicConnection};
use tokio::sync::{mpsc, oneshot};

/// Requests queued per connection before senders wait.
const QUEUE: usize = 1024;

/// Starts requests on one raw connection.
#[derive(Debug, Clone)]
pub struct RawSender {
    tx: mpsc::Sender<oneshot::Sender<Result<u64, String>>>,
}

impl RawSender {
    /// Sends one request; resolves to the bytes echoed back.
    pub async fn request(&self) -> anyhow::Result<u64> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(done)
            .await
            .map_err(|_| anyhow::anyhow!("the connection closed"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the connection closed"))?
            .map_err(|e| anyhow::anyhow!(e))
    }
}

#[derive(Debug)]
struct Stream {
    sent: usize,
    received: u64,
    done: oneshot::Sender<Result<u64, String>>,
}

/// The client application: opens a stream per request, writes the body, counts the
/// echo.
#[derive(Debug)]
pub struct RawClient {
    jobs: mpsc::Receiver<oneshot::Sender<Result<u64, String>>>,
    pending: VecDeque<oneshot::Sender<Result<u64, String>>>,
    body: Bytes,
    next_stream: u64,
    streams: HashMap<u64, Stream>,
    /// Streams with body bytes (or the FIN) still to write.
    sending: Vec<u64>,
    scratch: Box<[u8]>,
}

impl RawClient {
    /// A client whose every request carries `body`.
    pub fn new(body: Bytes) -> (Self, RawSender) {
        let (tx, jobs) = mpsc::channel(QUEUE);
        let app = Self {
            jobs,
            pending: VecDeque::new(),
            body,
            next_stream: 0,
            streams: HashMap::new(),
            sending: Vec::new(),
            scratch: vec![0; 64 * 1024].into_boxed_slice(),
        };
        (app, RawSender { tx })
    }
}

impl ApplicationOverQuic for RawClient {
    fn should_act(&self) -> bool {
        true
    }

    async fn wait_for_data(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        match self.jobs.recv().await {
            Some(job) => self.pending.push_back(job),
            // Every sender is gone: nothing more will come.
            None => std::future::pending().await,
        }
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        while let Some(id) = conn.stream_readable_next() {
            loop {
                match conn.stream_recv(id, &mut self.scratch) {
                    Ok((n, fin)) => {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.received += n as u64;
                        }
                        if fin {
                            if let Some(s) = self.streams.remove(&id) {
                                let _ = s.done.send(Ok(s.received));
                            }
                            break;
                        }
                    }
                    Err(quay::quiche::Error::Done) => break,
                    Err(e) => {
                        if let Some(s) = self.streams.remove(&id) {
                            let _ = s.done.send(Err(format!("stream {id}: {e}")));
                        }
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        while let Ok(job) = self.jobs.try_recv() {
            self.pending.push_back(job);
        }
        while conn.peer_streams_left_bidi() > 0 {
            let Some(done) = self.pending.pop_front() else {
                break;
            };
            let id = self.next_stream;
            self.next_stream += 4;
            self.streams.insert(
                id,
                Stream {
                    sent: 0,
                    received: 0,
                    done,
                },
            );
            self.sending.push(id);
        }
        let body = &self.body;
        let streams = &mut self.streams;
        self.sending.retain(|id| {
            let Some(s) = streams.get_mut(id) else {
                return false;
            };
            match conn.stream_send(*id, &body[s.sent..], true) {
                Ok(n) => {
                    s.sent += n;
                    s.sent < body.len()
                }
                // No room now, or a zero-length FIN not yet taken: try next turn.
                Err(quay::quiche::Error::Done) => true,
                Err(e) => {
                    if let Some(s) = streams.remove(id) {
                        let _ = s.done.send(Err(format!("stream {id}: {e}")));
                    }
                    false
                }
            }
        });
        Ok(())
    }
}
