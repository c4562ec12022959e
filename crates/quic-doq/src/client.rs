//! The DoQ client: queries handed in through a [`QueryHandle`], one stream each.

use std::collections::{HashMap, VecDeque};

use hickory_proto::op::Message;
use quic_app::{AppError, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};
use tokio::sync::{mpsc, oneshot};

use crate::server::frame;
use crate::{DOQ_PROTOCOL_ERROR, MAX_MESSAGE, is_query_stream};

/// Why a query got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The connection closed (or was never established) before the answer.
    #[error("the DoQ connection closed before the answer")]
    Closed,
    /// The server reset the query's stream with this DoQ error code.
    #[error("the server reset the query with {name} ({0:#x})", name = crate::error_name(*.0))]
    Reset(u64),
    /// The answer broke the protocol or is not a DNS message.
    #[error("a malformed answer: {0}")]
    Malformed(String),
    /// The query does not fit in a DoQ message (65,535 bytes), or cannot be encoded.
    #[error("the query cannot be sent: {0}")]
    Unsendable(String),
}

type Reply = oneshot::Sender<Result<Message, QueryError>>;

/// Sends queries to a [`DoqClient`]'s connection; cloneable.
#[derive(Debug, Clone)]
pub struct QueryHandle {
    tx: mpsc::UnboundedSender<(Vec<u8>, Reply)>,
}

impl QueryHandle {
    /// Sends `query` (its ID is set to 0, as DoQ requires) and waits for the answer.
    pub async fn query(&self, mut query: Message) -> Result<Message, QueryError> {
        query.set_id(0);
        let wire = query
            .to_vec()
            .map_err(|e| QueryError::Unsendable(e.to_string()))?;
        if wire.len() > MAX_MESSAGE {
            return Err(QueryError::Unsendable(format!(
                "{} bytes, above {MAX_MESSAGE}",
                wire.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((frame(&wire), tx))
            .map_err(|_| QueryError::Closed)?;
        rx.await.map_err(|_| QueryError::Closed)?
    }
}

/// One query's stream.
#[derive(Debug)]
struct Pending {
    out: Vec<u8>,
    written: usize,
    answer: Vec<u8>,
    reply: Reply,
}

/// A DoQ client connection: opens a stream per query, writes it with its length and
/// FIN, reads the answer.
#[derive(Debug)]
pub struct DoqClient {
    rx: mpsc::UnboundedReceiver<(Vec<u8>, Reply)>,
    waiting: VecDeque<(Vec<u8>, Reply)>,
    streams: HashMap<u64, Pending>,
    next_stream: u64,
    ready: bool,
    scratch: Box<[u8]>,
}

impl DoqClient {
    /// A client app and the handle that sends it queries.
    pub fn new() -> (Self, QueryHandle) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Self {
            rx,
            waiting: VecDeque::new(),
            streams: HashMap::new(),
            next_stream: 0,
            ready: false,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        };
        (app, QueryHandle { tx })
    }

    /// Opens streams for waiting queries while the server's stream limit allows.
    fn start_queries(&mut self, conn: &mut QuicConnection) {
        while let Ok(q) = self.rx.try_recv() {
            self.waiting.push_back(q);
        }
        while conn.peer_streams_left_bidi() > 0 {
            let Some((out, reply)) = self.waiting.pop_front() else {
                break;
            };
            let id = self.next_stream;
            self.next_stream += 4;
            self.streams.insert(
                id,
                Pending {
                    out,
                    written: 0,
                    answer: Vec::new(),
                    reply,
                },
            );
        }
        let mut failed = Vec::new();
        for (&id, p) in &mut self.streams {
            if p.written == p.out.len() {
                continue;
            }
            match conn.stream_send(id, &p.out[p.written..], true) {
                Ok(n) => p.written += n,
                Err(quiche::Error::Done) => {}
                Err(e) => failed.push((id, e)),
            }
        }
        for (id, e) in failed {
            if let Some(p) = self.streams.remove(&id) {
                let _ = p.reply.send(Err(QueryError::Unsendable(e.to_string())));
            }
        }
    }

    fn read(&mut self, conn: &mut QuicConnection, id: u64) -> Result<(), AppError> {
        if !is_query_stream(id) {
            // RFC 9250 §4.3.3: the server must not open streams.
            return Err(AppError::close(
                DOQ_PROTOCOL_ERROR,
                "a server-initiated stream",
            ));
        }
        let Some(p) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        loop {
            match conn.stream_recv(id, &mut self.scratch) {
                Ok((n, fin)) => {
                    p.answer.extend_from_slice(&self.scratch[..n]);
                    if p.answer.len() > 2 + MAX_MESSAGE {
                        return Err(AppError::close(DOQ_PROTOCOL_ERROR, "an oversized answer"));
                    }
                    if fin {
                        let p = self.streams.remove(&id).expect("present");
                        let _ = p.reply.send(parse_answer(&p.answer));
                        return Ok(());
                    }
                }
                Err(quiche::Error::Done) => return Ok(()),
                Err(quiche::Error::StreamReset(code)) => {
                    let p = self.streams.remove(&id).expect("present");
                    let _ = p.reply.send(Err(QueryError::Reset(code)));
                    return Ok(());
                }
                Err(_) => return Ok(()),
            }
        }
    }
}

/// A framed answer: exactly one message of the length it announces.
fn parse_answer(buf: &[u8]) -> Result<Message, QueryError> {
    if buf.len() < 2 {
        return Err(QueryError::Malformed("no length".into()));
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if buf.len() != 2 + len {
        return Err(QueryError::Malformed(format!(
            "{} bytes after a length of {len}",
            buf.len() - 2
        )));
    }
    Message::from_vec(&buf[2..]).map_err(|e| QueryError::Malformed(e.to_string()))
}

impl ApplicationOverQuic for DoqClient {
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        _info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        self.ready = true;
        self.start_queries(conn);
        Ok(())
    }

    fn should_act(&self) -> bool {
        true
    }

    async fn wait_for_data(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        match self.rx.recv().await {
            Some(q) => self.waiting.push_back(q),
            // Every handle is gone: nothing more will come.
            None => std::future::pending::<()>().await,
        }
        Ok(())
    }

    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        for id in conn.readable() {
            self.read(conn, id)?;
        }
        Ok(())
    }

    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError> {
        if self.ready {
            self.start_queries(conn);
        }
        Ok(())
    }

    fn delivered(&mut self, _conn: &mut QuicConnection) -> bool {
        self.streams.is_empty() && self.waiting.is_empty()
    }

    fn on_conn_close(&mut self, _conn: &mut QuicConnection, reason: &CloseReason) {
        tracing::debug!(?reason, "DoQ connection closed");
        for (_, p) in self.streams.drain() {
            let _ = p.reply.send(Err(QueryError::Closed));
        }
        for (_, reply) in self.waiting.drain(..) {
            let _ = reply.send(Err(QueryError::Closed));
        }
        self.rx.close();
        while let Ok((_, reply)) = self.rx.try_recv() {
            let _ = reply.send(Err(QueryError::Closed));
        }
    }
}
