//! A deterministic in-memory harness for protocols over QUIC.
//!
//! [`Pair`] connects a client app and a server app through two real
//! `quiche::Connection`s and an in-memory link, with no sockets: what one side sends is
//! handed to the other's `recv` directly. The link can drop and reorder datagrams;
//! the decisions come from a seeded generator, so a given seed drops the same datagrams
//! of the same sequence every run.
//!
//! Time: datagrams cross the link instantly, and nothing waits while either side has
//! work. quiche reads the system clock for its own timers (loss detection, idle and
//! draining timeouts), and it offers no way to inject a clock; when both sides have
//! nothing left to do but wait for such a timer, the harness sleeps until the earliest
//! one. The harness sets a small initial RTT estimate (10 ms) so that recovering from
//! early losses takes milliseconds, not seconds.
//!
//! The apps are driven exactly as `quic-io`'s workers drive them, through
//! [`AppDriver`].
//!
//! ```
//! # async fn run() -> Result<(), quic_app::testing::HarnessError> {
//! use std::time::Duration;
//! use quic_app::echo::{EchoClient, EchoServer, ALPN};
//! use quic_app::testing::{Pair, PairConfig};
//!
//! let (client, report) = EchoClient::new(4, 100_000);
//! let mut pair = Pair::new(PairConfig::new(ALPN).loss(0.05).seed(7), client, EchoServer::new())?;
//! pair.run_until_closed(Duration::from_secs(30)).await?;
//! assert!(report.await.unwrap().is_ok());
//! # Ok(()) }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```

mod link;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::{AppDriver, ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};
use link::{Direction, Link};
pub use link::{Faults, LinkStats};

/// The largest UDP payload either side sends.
const MAX_DATAGRAM: usize = 1350;

/// How many turns in a row [`Pair`] runs before yielding to the async runtime, so that
/// tasks exchanging data with the apps (through channels) get to run.
const TURNS_BEFORE_YIELD: usize = 64;

/// An app that opens nothing and answers nothing: its connection stays idle, and a
/// test or benchmark drives the `quiche::Connection` itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle;

impl ApplicationOverQuic for Idle {
    fn process_reads(&mut self, _conn: &mut QuicConnection) -> Result<(), crate::AppError> {
        Ok(())
    }

    fn process_writes(&mut self, _conn: &mut QuicConnection) -> Result<(), crate::AppError> {
        Ok(())
    }
}

/// Errors of the harness itself (the apps' errors close their connection instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// Building a side's TLS or QUIC configuration failed.
    #[error("failed to configure the {side} side")]
    Config {
        /// `"client"` or `"server"`.
        side: &'static str,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Both connections closed before the condition was reached.
    #[error("both connections closed before the condition was reached")]
    Closed,
    /// The condition was not reached within the time limit.
    #[error("condition not reached within {0:?}")]
    Timeout(Duration),
}

type Configure = Box<dyn Fn(&mut quiche::Config)>;

/// How to build a [`Pair`]: ALPN, link behaviour, and changes to the QUIC settings.
pub struct PairConfig {
    alpn: Vec<u8>,
    loss: f64,
    reorder: f64,
    seed: u64,
    faults: Option<Faults>,
    configure: Option<Configure>,
}

impl std::fmt::Debug for PairConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PairConfig")
            .field("alpn", &String::from_utf8_lossy(&self.alpn))
            .field("loss", &self.loss)
            .field("reorder", &self.reorder)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl PairConfig {
    /// Both sides offer `alpn`; no loss, no reordering, seed 0.
    pub fn new(alpn: &[u8]) -> Self {
        Self {
            alpn: alpn.to_vec(),
            loss: 0.0,
            reorder: 0.0,
            seed: 0,
            faults: None,
            configure: None,
        }
    }

    /// Drops each datagram, either direction, with probability `p` (0.0..=1.0).
    pub fn loss(mut self, p: f64) -> Self {
        self.loss = p.clamp(0.0, 1.0);
        self
    }

    /// Holds each datagram back behind the next one with probability `p`.
    pub fn reorder(mut self, p: f64) -> Self {
        self.reorder = p.clamp(0.0, 1.0);
        self
    }

    /// Seeds the link's loss and reorder decisions.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Lets `faults` (kept by the test) cut the link while the pair runs.
    pub fn faults(mut self, faults: &Faults) -> Self {
        self.faults = Some(faults.clone());
        self
    }

    /// Applies `f` to both sides' `quiche::Config` after the harness's defaults.
    pub fn configure(mut self, f: impl Fn(&mut quiche::Config) + 'static) -> Self {
        self.configure = Some(Box::new(f));
        self
    }
}

/// One side of a [`Pair`]: its connection, its app, and how it closed.
pub struct Side<A> {
    conn: QuicConnection,
    driver: AppDriver<A>,
    addr: SocketAddr,
    peer: SocketAddr,
    started: Instant,
    close_reason: Option<CloseReason>,
}

impl<A> std::fmt::Debug for Side<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Side")
            .field("trace_id", &self.conn.trace_id())
            .field("established", &self.driver.is_established())
            .field("close_reason", &self.close_reason)
            .finish_non_exhaustive()
    }
}

impl<A: ApplicationOverQuic> Side<A> {
    /// The side's QUIC connection.
    pub fn conn(&self) -> &QuicConnection {
        &self.conn
    }

    /// The side's QUIC connection, mutably (to act on it between turns).
    pub fn conn_mut(&mut self) -> &mut QuicConnection {
        &mut self.conn
    }

    /// The side's app.
    pub fn app(&self) -> &A {
        self.driver.app()
    }

    /// The side's app, mutably.
    pub fn app_mut(&mut self) -> &mut A {
        self.driver.app_mut()
    }

    /// Whether the app was told the connection is established.
    pub fn is_established(&self) -> bool {
        self.driver.is_established()
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        self.close_reason.as_ref()
    }

    /// The rest of a turn after input: app callbacks, then close detection.
    fn service(&mut self) {
        let (addr, peer, started) = (self.addr, self.peer, self.started);
        self.driver.after_input(&mut self.conn, |c| {
            HandshakeInfo::from_connection(c, addr, peer, started.elapsed())
        });
        if self.conn.is_closed() && self.close_reason.is_none() {
            let reason = CloseReason::from_connection(&self.conn);
            self.driver.on_close(&mut self.conn, &reason);
            self.close_reason = Some(reason);
        }
    }

    /// Feeds one datagram, after the application's reads if it asks for them between
    /// datagrams and one came before it (`unread`) in this delivery.
    fn feed(&mut self, dgram: &mut [u8], from: SocketAddr, unread: &mut bool) {
        if *unread {
            self.driver.reads_between(&mut self.conn);
        }
        *unread = true;
        let to = self.addr;
        // A datagram the connection rejects is dropped, as on a real socket.
        let _ = self.conn.recv(dgram, quiche::RecvInfo { from, to });
    }

    fn fire_timer(&mut self, now: Instant) -> bool {
        match self.conn.timeout_instant() {
            Some(t) if t <= now => {
                self.conn.on_timeout();
                true
            }
            _ => false,
        }
    }
}

/// A client app and a server app connected in memory. See the [module docs](self).
#[derive(Debug)]
pub struct Pair<C, S> {
    client: Side<C>,
    server: Side<S>,
    link: Link,
    buf: Box<[u8]>,
}

impl<C: ApplicationOverQuic, S: ApplicationOverQuic> Pair<C, S> {
    /// Builds both sides (a fresh self-signed certificate for `localhost`, verified by
    /// the client) and sends the client's first flight. Nothing else runs until one of
    /// the `run_*` methods is awaited.
    pub fn new(config: PairConfig, client_app: C, server_app: S) -> Result<Self, HarnessError> {
        let (mut client_cfg, mut server_cfg) = tls::configs(&config.alpn)?;
        for cfg in [&mut client_cfg, &mut server_cfg] {
            apply_defaults(cfg);
            if let Some(f) = &config.configure {
                f(cfg);
            }
        }
        let client_addr: SocketAddr = "127.0.0.1:40000".parse().expect("literal address");
        let server_addr: SocketAddr = "127.0.0.1:443".parse().expect("literal address");
        let scid = quiche::ConnectionId::from_ref(&[0xc1; 16]);
        let client_conn = quiche::connect(
            Some("localhost"),
            &scid,
            client_addr,
            server_addr,
            &mut client_cfg,
        )
        .map_err(|e| HarnessError::Config {
            side: "client",
            source: Box::new(e),
        })?;
        // The server learns its connection from the client's first Initial, exactly as a
        // listener does: DCID chosen by the client, a fresh SCID of the server's.
        let mut buf = vec![0u8; MAX_DATAGRAM].into_boxed_slice();
        let mut client = Side {
            conn: client_conn,
            driver: AppDriver::new(client_app),
            addr: client_addr,
            peer: server_addr,
            started: Instant::now(),
            close_reason: None,
        };
        let (len, _) = client
            .conn
            .send(&mut buf)
            .map_err(|e| HarnessError::Config {
                side: "client",
                source: Box::new(e),
            })?;
        let hdr =
            quiche::Header::from_slice(&mut buf[..len], quiche::MAX_CONN_ID_LEN).map_err(|e| {
                HarnessError::Config {
                    side: "server",
                    source: Box::new(e),
                }
            })?;
        let server_scid = quiche::ConnectionId::from_ref(&[0x5e; 16]);
        let server_conn = quiche::accept(
            &server_scid,
            None,
            server_addr,
            client_addr,
            &mut server_cfg,
        )
        .map_err(|e| HarnessError::Config {
            side: "server",
            source: Box::new(e),
        })?;
        drop(hdr);
        let server = Side {
            conn: server_conn,
            driver: AppDriver::new(server_app),
            addr: server_addr,
            peer: client_addr,
            started: Instant::now(),
            close_reason: None,
        };
        let mut link = Link::new(config.seed, config.loss, config.reorder, config.faults);
        link.push(Direction::ToServer, &buf[..len]);
        Ok(Self {
            client,
            server,
            link,
            buf,
        })
    }

    /// The client side.
    pub fn client(&self) -> &Side<C> {
        &self.client
    }

    /// The client side, mutably.
    pub fn client_mut(&mut self) -> &mut Side<C> {
        &mut self.client
    }

    /// The server side.
    pub fn server(&self) -> &Side<S> {
        &self.server
    }

    /// The server side, mutably.
    pub fn server_mut(&mut self) -> &mut Side<S> {
        &mut self.server
    }

    /// What the link delivered, dropped and reordered so far.
    pub fn link_stats(&self) -> LinkStats {
        self.link.stats()
    }

    /// Runs both sides until `done` returns `true`, or fails after `limit`.
    pub async fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Result<(), HarnessError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut turns = 0;
        loop {
            if done(self) {
                return Ok(());
            }
            if self.client.close_reason.is_some() && self.server.close_reason.is_some() {
                return Err(HarnessError::Closed);
            }
            if !self
                .step(deadline, &mut turns, std::future::pending())
                .await
            {
                return Err(HarnessError::Timeout(limit));
            }
        }
    }

    /// Runs both sides while `fut` runs, until it completes; returns its output, or
    /// fails after `limit`.
    ///
    /// This is how a test talks to its apps through their handles: the future sends
    /// requests and awaits answers, while the pair moves the packets.
    pub async fn run_with<F: Future>(
        &mut self,
        limit: Duration,
        fut: F,
    ) -> Result<F::Output, HarnessError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut fut = std::pin::pin!(fut);
        let mut turns = 0;
        loop {
            let mut out = None;
            let wake = std::future::poll_fn(|cx| {
                fut.as_mut().poll(cx).map(|v| {
                    out = Some(v);
                })
            });
            let in_time = self.step(deadline, &mut turns, wake).await;
            if let Some(v) = out {
                return Ok(v);
            }
            if !in_time {
                return Err(HarnessError::Timeout(limit));
            }
        }
    }

    /// One step: a turn, or when nothing moved a wait for the earliest quiche timer,
    /// an app's own work, or `wake`. Returns `false` once `deadline` has passed.
    async fn step(
        &mut self,
        deadline: tokio::time::Instant,
        turns: &mut usize,
        wake: impl Future<Output = ()>,
    ) -> bool {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        *turns += 1;
        if (*turns).is_multiple_of(TURNS_BEFORE_YIELD) {
            tokio::task::yield_now().await;
        }
        if self.turn() {
            // Give `wake` its poll too: the caller's future may be ready now.
            let mut wake = std::pin::pin!(wake);
            let _ = std::future::poll_fn(|cx| Poll::Ready(wake.as_mut().poll(cx))).await;
            return true;
        }
        let timer = self.next_timer(deadline);
        let client_waits = self.client.driver.wants_to_wait(&self.client.conn);
        let server_waits = self.server.driver.wants_to_wait(&self.server.conn);
        let (c, s) = (&mut self.client, &mut self.server);
        tokio::select! {
            // Timer first: it is what every turn of a real loop checks first too.
            biased;
            () = tokio::time::sleep_until(timer) => {}
            () = wake => {}
            () = c.driver.wait_for_data(&mut c.conn), if client_waits => {}
            () = s.driver.wait_for_data(&mut s.conn), if server_waits => {}
        }
        true
    }

    /// The earliest quiche timer of either side, or `deadline`.
    fn next_timer(&self, deadline: tokio::time::Instant) -> tokio::time::Instant {
        [
            self.client.conn.timeout_instant(),
            self.server.conn.timeout_instant(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(tokio::time::Instant::from_std)
        .map_or(deadline, |t| t.min(deadline))
    }

    /// Runs until both connections have closed (and both apps were told).
    pub async fn run_until_closed(&mut self, limit: Duration) -> Result<(), HarnessError> {
        self.run_until(limit, |p| {
            p.client.close_reason.is_some() && p.server.close_reason.is_some()
        })
        .await
    }

    /// Runs until both apps were told the connection is established.
    pub async fn run_until_established(&mut self, limit: Duration) -> Result<(), HarnessError> {
        self.run_until(limit, |p| {
            p.client.is_established() && p.server.is_established()
        })
        .await
    }

    /// One turn: due timers, delivery of everything on the link, app callbacks, and
    /// each side's output onto the link. Returns whether anything moved.
    fn turn(&mut self) -> bool {
        let now = Instant::now();
        let mut moved = self.client.fire_timer(now) | self.server.fire_timer(now);
        moved |= self.deliver();
        // Handshake messages leave before the apps hear of the handshake (see
        // `AppDriver::will_establish`).
        if self.client.driver.will_establish(&self.client.conn)
            || self.server.driver.will_establish(&self.server.conn)
        {
            moved |= self.flush();
        }
        self.client.service();
        self.server.service();
        moved |= self.flush();
        // A close detected after the flush (draining finished) also counts as progress.
        self.client.service();
        self.server.service();
        moved
    }

    fn deliver(&mut self) -> bool {
        let mut moved = false;
        let (mut client_unread, mut server_unread) = (false, false);
        while let Some((dir, mut dgram)) = self.link.pop() {
            moved = true;
            match dir {
                Direction::ToServer => {
                    self.server
                        .feed(&mut dgram, self.client.addr, &mut server_unread);
                }
                Direction::ToClient => {
                    self.client
                        .feed(&mut dgram, self.server.addr, &mut client_unread);
                }
            }
            self.link.recycle(dgram);
        }
        moved
    }

    fn flush(&mut self) -> bool {
        let mut moved = false;
        for dir in [Direction::ToServer, Direction::ToClient] {
            let conn = match dir {
                Direction::ToServer => &mut self.client.conn,
                Direction::ToClient => &mut self.server.conn,
            };
            loop {
                match conn.send(&mut self.buf) {
                    Ok((len, _)) => {
                        moved = true;
                        self.link.push(dir, &self.buf[..len]);
                    }
                    Err(quiche::Error::Done) => break,
                    Err(_) => break,
                }
            }
        }
        moved |= self.link.release_held();
        moved
    }
}

/// The harness's transport defaults: generous windows so bulk tests run fast, a small
/// initial RTT so early losses recover in milliseconds.
fn apply_defaults(cfg: &mut quiche::Config) {
    cfg.set_max_idle_timeout(30_000);
    cfg.set_max_recv_udp_payload_size(MAX_DATAGRAM);
    cfg.set_max_send_udp_payload_size(MAX_DATAGRAM);
    cfg.set_initial_max_data(4 * 1024 * 1024);
    cfg.set_initial_max_stream_data_bidi_local(1024 * 1024);
    cfg.set_initial_max_stream_data_bidi_remote(1024 * 1024);
    cfg.set_initial_max_stream_data_uni(1024 * 1024);
    cfg.set_initial_max_streams_bidi(100);
    cfg.set_initial_max_streams_uni(100);
    cfg.set_initial_rtt(Duration::from_millis(10));
}
