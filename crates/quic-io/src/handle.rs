use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use quic_app::queue;
use quic_app::{CloseReason, ConnectionStats, HandshakeInfo};
use tokio::sync::{oneshot, watch};

use crate::worker::{MigrateError, WorkerCommand};

/// Where a connection is in its life, as its worker publishes it.
#[derive(Debug, Clone)]
pub(crate) enum ConnState {
    Handshaking,
    /// The application runs on 0-RTT keys; the handshake goes on.
    EarlyData(HandshakeInfo),
    Established(HandshakeInfo),
    /// Closed; with the handshake's results if it had completed.
    Closed(Arc<ConnectionClosed>, Option<HandshakeInfo>),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionClosed {
    /// Who closed it, and why.
    pub reason: CloseReason,
    /// Its counters when it closed.
    pub stats: ConnectionStats,
    /// Why the server's certificate was not trusted, when that ended the handshake.
    pub tls_verify_error: Option<String>,
}

impl ConnectionClosed {
    /// The close as a connection error, when it was one a handshake can end with: a
    /// TLS alert (either side), or CONNECTION_REFUSED. A TLS 1.3 client finishes its
    /// handshake before the server has checked the client's certificate, so a
    /// refused client certificate shows up as such a close after `connect` returned.
    pub fn handshake_error(&self, addr: std::net::SocketAddr) -> Option<crate::ConnectError> {
        let err = crate::connect::connect_error(addr, std::time::Duration::ZERO, self);
        matches!(
            err,
            crate::ConnectError::Tls { .. } | crate::ConnectError::Refused { .. }
        )
        .then_some(err)
    }
}

/// A handle to a running connection: its addresses, live stats, close.
///
/// Handles are cheap to clone; all of them talk to the connection's worker task.
///
/// # Drop behavior
///
/// Dropping handles does not close the connection: the application drives it, and it
/// ends when the application or the peer closes it, or on a timeout. Use
/// [`close`](Self::close) to end it from outside.
#[derive(Debug, Clone)]
pub struct ConnectionHandle {
    ctrl_tx: queue::Sender<WorkerCommand>,
    state_rx: watch::Receiver<ConnState>,
    local_addr: SocketAddr,
    peer_addr: SocketAddr,
    scid: Arc<str>,
    session: SessionSlot,
    span: tracing::Span,
}

/// The latest resumable session of a client connection, as its worker publishes it.
pub(crate) type SessionSlot = Arc<Mutex<Option<Arc<[u8]>>>>;

impl ConnectionHandle {
    pub(crate) fn new(
        ctrl_tx: queue::Sender<WorkerCommand>,
        state_rx: watch::Receiver<ConnState>,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        scid: String,
        session: SessionSlot,
        span: tracing::Span,
    ) -> Self {
        Self {
            ctrl_tx,
            state_rx,
            local_addr,
            peer_addr,
            scid: scid.into(),
            session,
            span,
        }
    }

    /// The client's latest session ticket, serialized: pass it as
    /// [`ClientParams::session`](crate::ClientParams::session) to a later connection to
    /// the same server to resume (a shorter handshake, and 0-RTT where both sides
    /// enable it). `None` until the server sent a ticket (shortly after the handshake),
    /// and always on a server. It stays readable after the connection closed.
    ///
    /// The ticket is a secret: whoever holds it can resume the session.
    pub fn session(&self) -> Option<Vec<u8>> {
        let slot = self.session.lock().unwrap_or_else(|e| e.into_inner());
        slot.as_deref().map(<[u8]>::to_vec)
    }

    /// Asks the connection to close with an application error code and reason
    /// (CONNECTION_CLOSE 0x1d). Returns at once; [`closed`](Self::closed) tells when
    /// it has. Does nothing if the connection already closed.
    pub async fn close(&self, code: u64, reason: impl Into<Vec<u8>>) {
        let cmd = WorkerCommand::Close {
            app: true,
            code,
            reason: reason.into(),
            by: None,
        };
        let _ = self.ctrl_tx.send(cmd).await;
    }

    /// Moves this client connection to a new local socket bound at `local` (port 0:
    /// any free port), returning its address. quiche validates the new path (it needs
    /// a spare connection ID from the server, which quay servers issue) and sends
    /// from it at once; the old socket is kept until the new path is validated, then
    /// closed. A server's connections cannot migrate.
    pub async fn migrate(&self, local: SocketAddr) -> Result<SocketAddr, MigrateError> {
        let socket = crate::socket::bind(local).map_err(MigrateError::Socket)?;
        let (reply, rx) = oneshot::channel();
        self.ctrl_tx
            .send(WorkerCommand::Migrate { socket, reply })
            .await
            .map_err(|_| MigrateError::Closed)?;
        rx.await.map_err(|_| MigrateError::Closed)?
    }

    /// The connection's counters now; after it closed, its final counters.
    pub async fn stats(&self) -> ConnectionStats {
        let (tx, rx) = oneshot::channel();
        if self.ctrl_tx.send(WorkerCommand::Stats(tx)).await.is_ok()
            && let Ok(stats) = rx.await
        {
            return stats;
        }
        self.closed().await.stats.clone()
    }

    /// Waits for the handshake; returns what it established (also when the connection
    /// has closed since), or how the connection ended before it completed.
    pub async fn established(&self) -> Result<HandshakeInfo, Arc<ConnectionClosed>> {
        self.wait(|state| match state {
            ConnState::Handshaking | ConnState::EarlyData(_) => None,
            ConnState::Established(info) | ConnState::Closed(_, Some(info)) => {
                Some(Ok(info.clone()))
            }
            ConnState::Closed(c, None) => Some(Err(Arc::clone(c))),
        })
        .await
        .unwrap_or_else(Err)
    }

    /// Waits until the application can send: the handshake completed, or the client
    /// is sending 0-RTT data (then [`HandshakeInfo::early_data`] is `true` and the
    /// handshake goes on). Returns how the connection ended if it closed first.
    pub async fn ready(&self) -> Result<HandshakeInfo, Arc<ConnectionClosed>> {
        self.wait(|state| match state {
            ConnState::Handshaking => None,
            ConnState::EarlyData(info)
            | ConnState::Established(info)
            | ConnState::Closed(_, Some(info)) => Some(Ok(info.clone())),
            ConnState::Closed(c, None) => Some(Err(Arc::clone(c))),
        })
        .await
        .unwrap_or_else(Err)
    }

    /// Waits until the connection has closed.
    pub async fn closed(&self) -> Arc<ConnectionClosed> {
        self.wait(|state| match state {
            ConnState::Closed(c, _) => Some(Arc::clone(c)),
            _ => None,
        })
        .await
        .unwrap_or_else(|aborted| aborted)
    }

    /// Waits until `pick` finds what it looks for in the published state; `Err` with
    /// an aborted close if the worker went away without publishing one.
    async fn wait<T>(
        &self,
        pick: impl Fn(&ConnState) -> Option<T>,
    ) -> Result<T, Arc<ConnectionClosed>> {
        let mut rx = self.state_rx.clone();
        loop {
            if let Some(v) = pick(&rx.borrow_and_update()) {
                return Ok(v);
            }
            if rx.changed().await.is_err() {
                return Err(Arc::new(ConnectionClosed {
                    reason: CloseReason::Aborted,
                    stats: ConnectionStats::default(),
                    tls_verify_error: None,
                }));
            }
        }
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        matches!(&*self.state_rx.borrow(), ConnState::Closed(..))
    }

    /// The handshake's results, once it completed (also after the connection closed).
    pub fn handshake_info(&self) -> Option<HandshakeInfo> {
        match &*self.state_rx.borrow() {
            ConnState::Established(info) | ConnState::Closed(_, Some(info)) => Some(info.clone()),
            _ => None,
        }
    }

    /// The local address of the connection's socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The peer's address when the connection started.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// This side's first source connection ID, hex: the `scid` of the connection's
    /// tracing span.
    pub fn scid(&self) -> &str {
        &self.scid
    }

    /// The connection's tracing span (`quic_conn`): work done for the connection
    /// elsewhere (a request's handler, say) can run in a child of it.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
}
