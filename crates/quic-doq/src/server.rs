//! The DoQ server: one `ApplicationOverQuic` per connection.

use std::collections::HashMap;
use std::sync::Arc;

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsCode;
use quic_app::{AppError, ApplicationOverQuic, QuicConnection};
use tokio::sync::mpsc;

use crate::resolver::Resolver;
use crate::{
    DOQ_EXCESSIVE_LOAD, DOQ_PROTOCOL_ERROR, DOQ_REQUEST_CANCELLED, MAX_MESSAGE, is_query_stream,
};

/// Limits of one DoQ connection, beside the QUIC stream limits of its listener
/// (`QuicSettings::max_streams_bidi` bounds the queries a client may have open).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Queries being answered at once; a query beyond it has its stream reset with
    /// `DOQ_EXCESSIVE_LOAD`. Default 100.
    pub max_in_flight: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self { max_in_flight: 100 }
    }
}

/// A DoQ server connection: reads each query stream to its end, answers it with the
/// [`Resolver`] (in a task, so forwarding does not hold the connection up) and writes
/// the answer back on the stream.
#[derive(Debug)]
pub struct DoqServer {
    resolver: Arc<Resolver>,
    limits: ServerLimits,
    /// Query bytes of streams not yet finished.
    incoming: HashMap<u64, Vec<u8>>,
    /// Framed answers and how much of each was written.
    outgoing: HashMap<u64, (Vec<u8>, usize)>,
    answers_tx: mpsc::UnboundedSender<(u64, Vec<u8>)>,
    answers_rx: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    in_flight: usize,
    handed_off: bool,
    scratch: Box<[u8]>,
}

impl DoqServer {
    /// A connection answered by `resolver`.
    pub fn new(resolver: Arc<Resolver>, limits: ServerLimits) -> Self {
        let (answers_tx, answers_rx) = mpsc::unbounded_channel();
        Self {
            resolver,
            limits,
            incoming: HashMap::new(),
            outgoing: HashMap::new(),
            answers_tx,
            answers_rx,
            in_flight: 0,
            handed_off: false,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
        }
    }

    /// Reads what stream `id` has; answers the query once it is whole.
    fn read(&mut self, conn: &mut QuicConnection, id: u64) -> Result<(), AppError> {
        if !is_query_stream(id) {
            // RFC 9250 §4.3.3: a unidirectional stream (the server opens none).
            return Err(protocol_error(
                "a stream that is not a client bidirectional stream",
            ));
        }
        loop {
            match conn.stream_recv(id, &mut self.scratch) {
                Ok((n, fin)) => {
                    let buf = self.incoming.entry(id).or_default();
                    buf.extend_from_slice(&self.scratch[..n]);
                    if buf.len() >= 2 {
                        let declared = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                        if buf.len() > 2 + declared {
                            return Err(protocol_error("more than one message on a stream"));
                        }
                    }
                    if fin {
                        let buf = self.incoming.remove(&id).unwrap_or_default();
                        return self.query(conn, id, &buf);
                    }
                }
                Err(quiche::Error::Done) => return Ok(()),
                Err(quiche::Error::StreamReset(_)) => {
                    // RFC 9250 §4.3.1: the client gave up; so does the server.
                    self.incoming.remove(&id);
                    let _ =
                        conn.stream_shutdown(id, quiche::Shutdown::Write, DOQ_REQUEST_CANCELLED);
                    return Ok(());
                }
                Err(_) => {
                    self.incoming.remove(&id);
                    return Ok(());
                }
            }
        }
    }

    /// A whole query arrived on stream `id`: checks it and starts its answer.
    fn query(&mut self, conn: &mut QuicConnection, id: u64, buf: &[u8]) -> Result<(), AppError> {
        if buf.len() < 2 || buf.len() != 2 + usize::from(u16::from_be_bytes([buf[0], buf[1]])) {
            return Err(protocol_error("a stream ended inside its message"));
        }
        let wire = &buf[2..];
        if wire.len() >= 2 && wire[..2] != [0, 0] {
            return Err(protocol_error("a message ID other than 0"));
        }
        let answer_now = |server: &mut Self, msg: Message| {
            let bytes = msg.to_vec().unwrap_or_default();
            server.outgoing.insert(id, (frame(&bytes), 0));
        };
        let query = match Message::from_vec(wire) {
            Ok(q) => q,
            Err(e) => {
                tracing::debug!(error = %e, stream = id, "unparsable query");
                answer_now(
                    self,
                    Message::error_msg(0, OpCode::Query, ResponseCode::FormErr),
                );
                return Ok(());
            }
        };
        if query
            .extensions()
            .as_ref()
            .is_some_and(|e| e.option(EdnsCode::Keepalive).is_some())
        {
            // RFC 9250 §5.5.2: edns-tcp-keepalive must not be used with DoQ.
            return Err(protocol_error("the edns-tcp-keepalive option"));
        }
        if conn.is_in_early_data() && query.op_code() != OpCode::Query {
            // RFC 9250 §4.5: only replayable transactions in 0-RTT.
            answer_now(
                self,
                Message::error_msg(0, query.op_code(), ResponseCode::Refused),
            );
            return Ok(());
        }
        if self.in_flight >= self.limits.max_in_flight {
            let _ = conn.stream_shutdown(id, quiche::Shutdown::Write, DOQ_EXCESSIVE_LOAD);
            return Ok(());
        }
        self.in_flight += 1;
        self.handed_off = true;
        let resolver = Arc::clone(&self.resolver);
        let tx = self.answers_tx.clone();
        tokio::spawn(async move {
            let answer = resolver.answer(&query).await;
            let bytes = answer.to_vec().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "an answer could not be encoded");
                Message::error_msg(0, OpCode::Query, ResponseCode::ServFail)
                    .to_vec()
                    .unwrap_or_default()
            });
            let _ = tx.send((id, bytes));
        });
        Ok(())
    }

    /// Writes what it can of each answer; a finished one is forgotten.
    fn write(&mut self, conn: &mut QuicConnection) {
        while let Ok((id, bytes)) = self.answers_rx.try_recv() {
            self.in_flight -= 1;
            self.outgoing.insert(id, (frame(&bytes), 0));
        }
        self.outgoing.retain(|&id, (buf, off)| {
            match conn.stream_send(id, &buf[*off..], true) {
                Ok(n) => {
                    *off += n;
                    *off < buf.len()
                }
                Err(quiche::Error::Done) => true,
                // Stopped or reset by the client, or the connection is closing.
                Err(_) => false,
            }
        });
    }
}

/// A message with its 2-byte length.
pub(crate) fn frame(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + message.len());
    let len = message.len().min(MAX_MESSAGE) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn protocol_error(what: &'static str) -> AppError {
    tracing::debug!(what, "DoQ protocol error");
    AppError::close(DOQ_PROTOCOL_ERROR, what)
}

impl ApplicationOverQuic for DoqServer {
    fn should_act(&self) -> bool {
        self.in_flight > 0
    }

    async fn wait_for_data(&mut self, _conn: &mut QuicConnection) -> Result<(), AppError> {
        // The sender lives in `self`: `None` never comes.
        if let Some((id, bytes)) = self.answers_rx.recv().await {
            self.in_flight -= 1;
            self.outgoing.insert(id, (frame(&bytes), 0));
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
        self.write(conn);
        Ok(())
    }

    fn handed_off_work(&mut self) -> bool {
        std::mem::take(&mut self.handed_off)
    }

    fn handoff_passes(&self) -> usize {
        // Each query's own task answers it.
        1
    }

    fn delivered(&mut self, _conn: &mut QuicConnection) -> bool {
        self.in_flight == 0 && self.outgoing.is_empty()
    }
}
