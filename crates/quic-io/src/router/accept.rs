//! The accept path: what a listener's router does with an Initial for no known
//! connection.
//!
//! The router only decides and routes. It screens the datagram (size, source port,
//! backlog), checks the Retry token, and [`admit`]s or refuses by the endpoint's
//! limits; an admitted connection gets its routes and its slots at once, and its
//! first datagram is handed to a task of its own, which creates the
//! `quiche::Connection`, feeds it the Initial (the TLS work: decryption, the
//! ClientHello, the server's key share and signature) and offers it to the
//! application. The router's cost per new connection is a token check, a few table
//! inserts and a task spawn, whatever the handshake costs; stateless closes, which
//! need a TLS read too, are sent from a task as well.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use quic_app::queue;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::retry::{MAX_TOKEN_LEN, RetryTokens, TokenError};
use super::{MIN_INITIAL_DATAGRAM, REFLECTION_PORTS, Router, SourceCount, SourceKey, reset};
use crate::cid::{ConnectionIdGenerator, random_cid};
use crate::listen::{EndpointLimits, IncomingConnection, RetryPolicy, ServerParams};
use crate::metrics::{DropReason, Metrics, RejectReason};
use crate::socket::{Datagram, Socket};
use crate::worker::{WORKER_COMMAND_QUEUE, WorkerSetup, WorkerShared};

/// RFC 9000 §20.1: INVALID_TOKEN, "invalid packet token received".
const INVALID_TOKEN: u64 = 0xb;

/// RFC 9000 §20.1: CONNECTION_REFUSED, "the server refused to accept a new connection".
pub(crate) const CONNECTION_REFUSED: u64 = 0x2;

/// The configuration new connections are created with. Shared by the router (which
/// swaps it on a TLS reload) and the tasks that create connections; each holds the
/// lock only to create one, never during its TLS work.
pub(crate) type SharedConfig = Arc<Mutex<quiche::Config>>;

/// What a listener's router has that a client's does not.
pub(crate) struct Accept {
    pub(crate) config: SharedConfig,
    /// Makes new connections' and Retries' connection IDs.
    pub(crate) cids: Arc<dyn ConnectionIdGenerator>,
    pub(crate) params: ServerParams,
    pub(crate) retry: RetryTokens,
    pub(crate) reset_limiter: reset::RateLimiter,
    /// Stateless closes (INVALID_TOKEN, CONNECTION_REFUSED): each costs a TLS read.
    pub(crate) close_limiter: reset::RateLimiter,
    pub(crate) accept_tx: mpsc::Sender<IncomingConnection>,
    pub(crate) shared: Arc<WorkerShared>,
    pub(crate) shutdown: Option<oneshot::Sender<()>>,
    pub(crate) shutting_down: bool,
}

/// The stateless reset (and stateless close) rate limiter for a listener: `rate` per
/// second, bursts of the same size.
pub(crate) fn rate_limiter(rate: u32) -> reset::RateLimiter {
    reset::RateLimiter::new(rate, rate)
}

/// Locks `config`; a panic elsewhere while it was held leaves it usable.
fn lock(config: &SharedConfig) -> std::sync::MutexGuard<'_, quiche::Config> {
    config.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the router knows of an Initial for no known connection when it decides.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Facts {
    /// The listener is shutting down, or its application stopped accepting.
    pub(crate) shutting_down: bool,
    /// The UDP datagram's length.
    pub(crate) datagram_len: usize,
    /// The sender's UDP port.
    pub(crate) from_port: u16,
    /// The accept backlog has room.
    pub(crate) backlog_free: bool,
    /// Connections the endpoint holds.
    pub(crate) connections: usize,
    /// Of those, the ones in their handshake.
    pub(crate) handshaking: usize,
    /// What the sender's source (IPv4 address, IPv6 /64) holds.
    pub(crate) from_source: SourceCount,
}

/// The Retry token an Initial carried, as checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Token {
    /// None, or one that is not ours (a NEW_TOKEN token of another server, say): the
    /// client's address is unproven, as if it had sent none (RFC 9000 §8.1.3).
    Absent,
    /// One of our Retry tokens, valid for this address: the address is proven.
    Valid,
    /// One of ours, but forged, expired or for another address.
    Invalid,
}

/// The router's answer to an Initial for no known connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Dropped without an answer; counted under this reason.
    Drop(RejectReason),
    /// Answered with a stateless CONNECTION_CLOSE carrying transport error `code`;
    /// counted under `reason`.
    Close { reason: RejectReason, code: u64 },
    /// Answered with a Retry: the client must prove its address first.
    Retry,
    /// A new connection.
    Admit,
}

/// The checks that need no header parse: an Initial failing one is dropped before
/// anything else is read.
pub(crate) fn screen(facts: &Facts) -> Option<RejectReason> {
    if facts.shutting_down {
        Some(RejectReason::ShuttingDown)
    } else if facts.datagram_len < MIN_INITIAL_DATAGRAM {
        Some(RejectReason::TooShort)
    } else if REFLECTION_PORTS.contains(&facts.from_port) {
        Some(RejectReason::ReflectionPort)
    } else if !facts.backlog_free {
        Some(RejectReason::BacklogFull)
    } else {
        None
    }
}

/// The decision on a screened Initial, from its Retry token, the endpoint's limits and
/// its Retry policy.
///
/// - A token that is ours but invalid: INVALID_TOKEN at once (RFC 9000 §8.1.2: the
///   client will not accept a second Retry).
/// - Over a connection limit: a proven address is refused at once
///   (CONNECTION_REFUSED), so it fails fast; an unproven one gets a Retry first, so a
///   spoofed flood costs one stateless packet each and no TLS work.
/// - Otherwise an unproven address gets a Retry when the policy asks for one, and the
///   endpoint's handshake limit is applied last.
pub(crate) fn admit(
    facts: &Facts,
    token: Token,
    limits: &EndpointLimits,
    policy: RetryPolicy,
) -> Admission {
    if token == Token::Invalid {
        return Admission::Close {
            reason: RejectReason::InvalidToken,
            code: INVALID_TOKEN,
        };
    }
    let over_limit = if facts.connections >= limits.max_connections {
        Some(RejectReason::ConnectionLimit)
    } else if facts.from_source.conns >= limits.max_connections_per_ip {
        Some(RejectReason::SourceConnectionLimit)
    } else if facts.from_source.handshakes >= limits.max_handshakes_per_ip {
        Some(RejectReason::SourceHandshakeLimit)
    } else {
        None
    };
    let proven = token == Token::Valid;
    if let Some(reason) = over_limit {
        return if proven {
            Admission::Close {
                reason,
                code: CONNECTION_REFUSED,
            }
        } else {
            Admission::Retry
        };
    }
    let want_retry = match policy {
        RetryPolicy::Never => false,
        RetryPolicy::Always => true,
        RetryPolicy::UnderLoad { handshakes } => facts.handshaking >= handshakes,
    };
    if !proven && want_retry {
        return Admission::Retry;
    }
    if facts.handshaking >= limits.max_handshakes {
        return Admission::Drop(RejectReason::HandshakeLimit);
    }
    Admission::Admit
}

impl Router {
    fn reject(&self, reason: RejectReason) {
        tracing::trace!(?reason, "Initial rejected");
        self.metrics.initial_rejected(reason);
    }

    /// Answers a client's Initial with CONNECTION_CLOSE carrying transport error
    /// `code`, keeping no state. The client then fails at once instead of waiting out
    /// its handshake timeout. Building the close takes a throwaway connection that
    /// reads the client's Initial, so it is built in a task of its own, and these
    /// answers have a rate limit of their own (as many per second as stateless
    /// resets).
    fn close_statelessly(&mut self, mut dgram: Datagram, code: u64, reason: &'static [u8]) {
        let Some(accept) = self.accept.as_mut() else {
            return;
        };
        if !accept.close_limiter.try_take(Instant::now()) {
            return;
        }
        let config = Arc::clone(&accept.config);
        let socket = Arc::clone(&self.socket);
        let scid = random_cid(self.cid_len);
        let span = tracing::trace_span!("stateless_close", peer = %dgram.from);
        crate::spawn::task(
            async move {
                let info = quiche::RecvInfo {
                    from: dgram.from,
                    to: dgram.to,
                };
                let created = {
                    let mut config = lock(&config);
                    quiche::accept(&scid, None, dgram.to, dgram.from, &mut config)
                };
                let Ok(mut conn) = created else {
                    return;
                };
                if conn.recv(&mut dgram.buf, info).is_err() {
                    return;
                }
                let _ = conn.close(false, code, reason);
                let mut out = [0u8; crate::socket::MAX_UDP_PAYLOAD];
                if let Ok((len, send)) = conn.send(&mut out) {
                    let _ = socket.try_send_one(send.to, &out[..len]);
                }
            }
            .instrument(span),
        );
    }

    pub(super) fn accept_initial(&mut self, mut dgram: Datagram) {
        let accept = self.accept.as_ref().expect("checked by the caller");
        let source = SourceKey::of(dgram.from.ip());
        let facts = Facts {
            shutting_down: accept.shutting_down || accept.accept_tx.is_closed(),
            datagram_len: dgram.buf.len(),
            from_port: dgram.from.port(),
            backlog_free: accept.accept_tx.capacity() > 0,
            connections: self.conns.len(),
            handshaking: self.handshaking,
            from_source: self.sources.get(&source).copied().unwrap_or_default(),
        };
        if let Some(reason) = screen(&facts) {
            return self.reject(reason);
        }
        // The full parse (with the token) happens only here, once per new connection.
        let Ok(hdr) = quiche::Header::from_slice(&mut dgram.buf, self.cid_len) else {
            self.metrics.datagram_dropped(DropReason::Malformed);
            return;
        };
        let now_secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let raw_token = hdr.token.as_deref().unwrap_or(&[]);
        let (token, odcid) = if raw_token.is_empty() {
            (Token::Absent, None)
        } else {
            match accept
                .retry
                .validate(raw_token, dgram.from, &hdr.dcid, now_secs)
            {
                Ok(odcid) => (Token::Valid, Some(odcid.to_vec())),
                Err(TokenError::Malformed) => (Token::Absent, None),
                Err(e) => {
                    tracing::debug!(?e, peer = %dgram.from, "invalid Retry token");
                    (Token::Invalid, None)
                }
            }
        };
        let admission = admit(&facts, token, &accept.params.limits, accept.params.retry);
        match admission {
            Admission::Drop(reason) => self.reject(reason),
            Admission::Close { reason, code } => {
                drop(hdr);
                self.reject(reason);
                let text: &'static [u8] = if code == INVALID_TOKEN {
                    b"invalid retry token"
                } else {
                    b"connection limit"
                };
                self.close_statelessly(dgram, code, text);
            }
            Admission::Retry => {
                // The client's next Initial comes to this ID: it must route here.
                let new_scid = accept.cids.new_id();
                let mut token = [0u8; MAX_TOKEN_LEN];
                let token_len = accept
                    .retry
                    .mint(dgram.from, &hdr.dcid, &new_scid, now_secs, &mut token);
                match quiche::retry(
                    &hdr.scid,
                    &hdr.dcid,
                    &new_scid,
                    &token[..token_len],
                    hdr.version,
                    &mut self.out,
                ) {
                    Ok(len) => {
                        if self
                            .socket
                            .try_send_one(dgram.from, &self.out[..len])
                            .is_ok()
                        {
                            self.metrics.retry_sent();
                        }
                    }
                    Err(_) => self.metrics.datagram_dropped(DropReason::Malformed),
                }
            }
            Admission::Admit => {
                // The backlog slot is taken now, so that the connection has one once
                // its first flight has been read. Only routers take slots, but the
                // shards of a sharded listener share one backlog: another may have
                // taken the last one since the screen.
                let permit = match accept.accept_tx.clone().try_reserve_owned() {
                    Ok(permit) => permit,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        return self.reject(RejectReason::BacklogFull);
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        return self.reject(RejectReason::ShuttingDown);
                    }
                };
                // After a Retry, the client addresses us by the SCID the Retry carried
                // (RFC 9000 §7.3: it becomes retry_source_connection_id).
                let scid = match &odcid {
                    Some(_) => quiche::ConnectionId::from_vec(hdr.dcid.to_vec()),
                    None => accept.cids.new_id(),
                };
                let client_dcid = hdr.dcid.to_vec();
                drop(hdr);
                self.hand_off(dgram, scid, odcid, client_dcid, source, permit);
            }
        }
    }

    /// Registers an admitted connection (its routes, its slots) and hands its first
    /// datagram to a task that creates the connection and reads it.
    fn hand_off(
        &mut self,
        dgram: Datagram,
        scid: quiche::ConnectionId<'static>,
        odcid: Option<Vec<u8>>,
        client_dcid: Vec<u8>,
        source: SourceKey,
        permit: mpsc::OwnedPermit<IncomingConnection>,
    ) {
        let reset_token = u128::from_be_bytes(self.reset_key.token(&scid));
        let accept = self.accept.as_ref().expect("checked by the caller");
        let config = Arc::clone(&accept.config);
        let shared = Arc::clone(&accept.shared);
        let (ctrl_tx, ctrl_rx) = queue::channel(WORKER_COMMAND_QUEUE);
        let cids = vec![scid.to_vec()];
        let peer_cid = (client_dcid != cids[0]).then_some(client_dcid);
        // The worker holds no sender of its own queue: when the router is gone, the
        // queue closes and the worker ends.
        let (registration, _, pkt_rx) =
            self.register(cids, peer_cid, ctrl_tx.clone(), Some(source));
        self.accepted += 1;
        let first = FirstFlight {
            config,
            reset_token,
            scid,
            odcid,
            dgram,
            permit,
            metrics: Arc::clone(&self.metrics),
            setup: Pending {
                registration,
                socket: Arc::clone(&self.socket),
                pkt_rx,
                ctrl_rx,
                ctrl_tx,
                shared,
                abort: self.abort.child_token(),
                started: Instant::now(),
            },
        };
        crate::spawn::task(async move { first.read() });
    }
}

/// A worker's setup before its connection exists.
struct Pending {
    registration: super::Registration,
    socket: Arc<Socket>,
    pkt_rx: queue::Receiver<Datagram>,
    ctrl_rx: queue::Receiver<crate::worker::WorkerCommand>,
    ctrl_tx: queue::Sender<crate::worker::WorkerCommand>,
    shared: Arc<WorkerShared>,
    abort: tokio_util::sync::CancellationToken,
    started: Instant,
}

/// An admitted connection's first datagram, on its way to becoming a connection.
struct FirstFlight {
    config: SharedConfig,
    reset_token: u128,
    scid: quiche::ConnectionId<'static>,
    odcid: Option<Vec<u8>>,
    dgram: Datagram,
    permit: mpsc::OwnedPermit<IncomingConnection>,
    metrics: Arc<dyn Metrics>,
    setup: Pending,
}

impl FirstFlight {
    /// Creates the connection and feeds it the Initial. One that does not decrypt
    /// (forged, corrupted) costs no slot in the accept backlog: dropping its
    /// registration gives its routes and slots back. Otherwise the connection is
    /// offered to the application.
    fn read(mut self) {
        let odcid = self.odcid.take().map(quiche::ConnectionId::from_vec);
        let (local, peer) = (self.dgram.to, self.dgram.from);
        let created = {
            let mut config = lock(&self.config);
            config.set_stateless_reset_token(Some(self.reset_token));
            quiche::accept(&self.scid, odcid.as_ref(), local, peer, &mut config)
        };
        let mut conn = match created {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "quiche refused a new connection");
                self.metrics.initial_rejected(RejectReason::AcceptFailed);
                return;
            }
        };
        let info = quiche::RecvInfo {
            from: peer,
            to: local,
        };
        let received = conn.recv(&mut self.dgram.buf, info);
        if received.is_err() || conn.stats().recv == 0 {
            tracing::trace!(reason = ?RejectReason::InvalidInitial, "Initial rejected");
            self.metrics.initial_rejected(RejectReason::InvalidInitial);
            if let Err(e) = received
                && conn.local_error().is_some()
            {
                // The Initial was genuine but TLS refused it (no common key-exchange
                // group, cipher or protocol): the client is told why at once, in the
                // one small packet its Initial allows, instead of timing out.
                tracing::debug!(error = %e, %peer, "handshake refused");
                let mut out = [0u8; crate::socket::MAX_UDP_PAYLOAD];
                if let Ok((len, send)) = conn.send(&mut out) {
                    let _ = self.setup.socket.try_send_one(send.to, &out[..len]);
                }
            }
            return;
        }
        let p = self.setup;
        let setup = WorkerSetup {
            conn: Box::new(conn),
            registration: p.registration,
            socket: p.socket,
            pkt_rx: p.pkt_rx,
            pkt_tx: None,
            ctrl_rx: p.ctrl_rx,
            ctrl_tx: p.ctrl_tx,
            shared: p.shared,
            abort: p.abort,
            local,
            peer,
            started: p.started,
        };
        // A listener dropped meanwhile drops the connection with its backlog, which
        // refuses it (and unregisters it).
        self.permit.send(IncomingConnection::new(setup));
        self.metrics.initial_accepted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EndpointLimits {
        EndpointLimits {
            max_connections: 10,
            max_connections_per_ip: 4,
            max_handshakes: 6,
            max_handshakes_per_ip: 2,
            ..EndpointLimits::default()
        }
    }

    fn fresh() -> Facts {
        Facts {
            datagram_len: 1200,
            from_port: 50_000,
            backlog_free: true,
            ..Facts::default()
        }
    }

    const NEVER: RetryPolicy = RetryPolicy::Never;

    #[test]
    fn screening_drops_short_reflected_unbacklogged_and_late_initials() {
        assert_eq!(screen(&fresh()), None);
        let cases = [
            (
                Facts {
                    shutting_down: true,
                    ..fresh()
                },
                RejectReason::ShuttingDown,
            ),
            (
                Facts {
                    datagram_len: 1199,
                    ..fresh()
                },
                RejectReason::TooShort,
            ),
            (
                Facts {
                    from_port: 53,
                    ..fresh()
                },
                RejectReason::ReflectionPort,
            ),
            (
                Facts {
                    backlog_free: false,
                    ..fresh()
                },
                RejectReason::BacklogFull,
            ),
        ];
        for (facts, want) in cases {
            assert_eq!(screen(&facts), Some(want), "{facts:?}");
        }
    }

    #[test]
    fn a_fresh_client_is_admitted_and_an_invalid_token_closed() {
        assert_eq!(
            admit(&fresh(), Token::Absent, &limits(), NEVER),
            Admission::Admit
        );
        assert_eq!(
            admit(&fresh(), Token::Valid, &limits(), NEVER),
            Admission::Admit
        );
        assert_eq!(
            admit(&fresh(), Token::Invalid, &limits(), NEVER),
            Admission::Close {
                reason: RejectReason::InvalidToken,
                code: INVALID_TOKEN
            }
        );
    }

    #[test]
    fn over_a_limit_an_unproven_address_gets_retry_and_a_proven_one_is_refused() {
        let over = [
            (
                Facts {
                    connections: 10,
                    ..fresh()
                },
                RejectReason::ConnectionLimit,
            ),
            (
                Facts {
                    from_source: SourceCount {
                        conns: 4,
                        handshakes: 0,
                    },
                    ..fresh()
                },
                RejectReason::SourceConnectionLimit,
            ),
            (
                Facts {
                    from_source: SourceCount {
                        conns: 2,
                        handshakes: 2,
                    },
                    ..fresh()
                },
                RejectReason::SourceHandshakeLimit,
            ),
        ];
        for (facts, reason) in over {
            assert_eq!(
                admit(&facts, Token::Absent, &limits(), NEVER),
                Admission::Retry,
                "{facts:?}"
            );
            assert_eq!(
                admit(&facts, Token::Valid, &limits(), NEVER),
                Admission::Close {
                    reason,
                    code: CONNECTION_REFUSED
                },
                "{facts:?}"
            );
        }
    }

    #[test]
    fn the_retry_policy_applies_to_unproven_addresses_only() {
        let busy = Facts {
            handshaking: 3,
            ..fresh()
        };
        let under_load = RetryPolicy::UnderLoad { handshakes: 3 };
        assert_eq!(
            admit(&busy, Token::Absent, &limits(), under_load),
            Admission::Retry
        );
        assert_eq!(
            admit(&busy, Token::Valid, &limits(), under_load),
            Admission::Admit
        );
        let calm = Facts {
            handshaking: 2,
            ..fresh()
        };
        assert_eq!(
            admit(&calm, Token::Absent, &limits(), under_load),
            Admission::Admit
        );
        assert_eq!(
            admit(&fresh(), Token::Absent, &limits(), RetryPolicy::Always),
            Admission::Retry
        );
        assert_eq!(
            admit(&fresh(), Token::Valid, &limits(), RetryPolicy::Always),
            Admission::Admit
        );
    }

    #[test]
    fn the_handshake_limit_drops_even_proven_addresses() {
        let full = Facts {
            handshaking: 6,
            ..fresh()
        };
        for token in [Token::Absent, Token::Valid] {
            assert_eq!(
                admit(&full, token, &limits(), NEVER),
                Admission::Drop(RejectReason::HandshakeLimit)
            );
        }
        // Under Retry-on-load, the unproven are sent a Retry before the limit bites.
        assert_eq!(
            admit(
                &full,
                Token::Absent,
                &limits(),
                RetryPolicy::UnderLoad { handshakes: 5 }
            ),
            Admission::Retry
        );
    }
}
