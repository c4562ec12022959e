use std::future::Future;

use crate::{AppError, CloseReason, HandshakeInfo};

/// The QUIC connection an application drives: quiche's state machine.
pub type QuicConnection = quiche::Connection;

/// The most rounds of ready tasks a connection's loop runs after a handoff
/// ([`ApplicationOverQuic::handoff_passes`]) before it sends: each round puts the
/// connection behind every other ready task of the runtime's thread.
pub const MAX_HANDOFF_PASSES: usize = 4;

/// A protocol that runs over one QUIC connection.
///
/// The I/O loop that owns the connection (one task per connection) calls these methods,
/// always from that one task, in this order:
///
/// 1. [`on_conn_established`](Self::on_conn_established): once, as soon as the
///    handshake has completed, or earlier when 0-RTT is in use: on a server that
///    accepted 0-RTT data, and on a client resuming a session with early data enabled
///    (then [`HandshakeInfo::early_data`] is `true`, and what the client sends can be
///    replayed by an attacker, so it should be idempotent; if the server rejects 0-RTT,
///    quiche sends it again after the handshake). Before it, none of the other methods
///    below is called except [`on_conn_close`](Self::on_conn_close).
/// 2. On every turn of the loop:
///    - [`should_act`](Self::should_act) decides whether
///      [`wait_for_data`](Self::wait_for_data) takes part in this turn's wait;
///    - the loop waits for the first of: the connection's timer, incoming datagrams,
///      [`wait_for_data`](Self::wait_for_data) (if it takes part);
///    - incoming datagrams (all that are queued, up to a bound) are fed to the
///      connection, with `process_reads` before each one but the first while
///      [`reads_between_datagrams`](Self::reads_between_datagrams) says so;
///    - [`process_reads`](Self::process_reads), then
///      [`process_writes`](Self::process_writes);
///    - if [`handed_off_work`](Self::handed_off_work) says so, the loop lets the tasks
///      that work went to run ([`handoff_passes`](Self::handoff_passes) rounds), then
///      calls `process_reads` and `process_writes` again;
///    - the connection's outgoing packets are sent.
/// 3. [`on_conn_close`](Self::on_conn_close): once, when the connection has closed, for
///    whatever reason. The connection is still readable (stats, errors) but can no
///    longer send.
///
/// Purely reactive protocols implement two methods, `process_reads` and
/// `process_writes`: the others have defaults for them.
///
/// An `Err` from any method closes the connection: [`AppError::Close`] with the
/// application's code and reason, [`AppError::Quic`] with the matching transport error.
pub trait ApplicationOverQuic: Send + 'static {
    /// The handshake completed (or 0-RTT was accepted); the application may now open
    /// streams and send. The default does nothing.
    fn on_conn_established(
        &mut self,
        conn: &mut QuicConnection,
        info: &HandshakeInfo,
    ) -> Result<(), AppError> {
        let _ = (conn, info);
        Ok(())
    }

    /// Whether [`wait_for_data`](Self::wait_for_data) should be polled this turn.
    ///
    /// The default, `false`, suits a purely reactive protocol: one with nothing to
    /// wait for besides the peer. Return `true` while the application has work coming
    /// from elsewhere (a channel from user tasks, a timer of its own).
    fn should_act(&self) -> bool {
        false
    }

    /// Resolves when the application has work to do that did not come from the peer,
    /// for example a request handed in through a channel by a user task.
    ///
    /// The future is polled inside the loop's `select!` together with the timer and the
    /// packet queue; when one of those fires first, this future is dropped, and a new
    /// one is created on the next turn.
    ///
    /// The loop prefers its timer and incoming datagrams: while datagrams keep
    /// arriving, this future may not be polled for a while. Every turn still calls
    /// [`process_reads`](Self::process_reads) and
    /// [`process_writes`](Self::process_writes), so an application should also look at
    /// its queues there, without waiting (`try_recv`), and use this method only to be
    /// woken when the connection is otherwise quiet.
    ///
    /// # Cancel safety
    ///
    /// Implementations must be cancel safe: dropping the future before it resolves must
    /// lose nothing. Waiting on `tokio::sync::mpsc::Receiver::recv` and storing what it
    /// returns in `self` before returning is; reading half a message and holding the
    /// rest in the future is not.
    ///
    /// The default never resolves; it is never polled while
    /// [`should_act`](Self::should_act) returns `false`.
    fn wait_for_data(
        &mut self,
        conn: &mut QuicConnection,
    ) -> impl Future<Output = Result<(), AppError>> + Send {
        let _ = conn;
        std::future::pending()
    }

    /// Called each turn after incoming datagrams were fed to the connection: read what
    /// the peer sent (streams, datagrams).
    fn process_reads(&mut self, conn: &mut QuicConnection) -> Result<(), AppError>;

    /// Called each turn after [`process_reads`](Self::process_reads): write what is
    /// ready to send. The loop then turns the connection's output into packets.
    fn process_writes(&mut self, conn: &mut QuicConnection) -> Result<(), AppError>;

    /// Asked after [`process_writes`](Self::process_writes): whether this turn handed
    /// work to other tasks that may answer at once (a request to its handler, say).
    ///
    /// When it returns `true`, the loop lets the runtime's ready tasks run (and those
    /// they wake) before it sends, then calls [`process_reads`](Self::process_reads) and
    /// [`process_writes`](Self::process_writes) once more. An answer produced meanwhile
    /// then leaves in the same flight as the acknowledgement of what it answers,
    /// instead of one packet (and one system call) later. Each call reports the turn
    /// since the previous one. The default, `false`, sends at once.
    fn handed_off_work(&mut self) -> bool {
        false
    }

    /// Asked after each datagram of a turn but the last: whether the loop should run
    /// [`process_reads`](Self::process_reads) before it feeds the next one.
    ///
    /// An application whose reads cost more the more of the connection has data
    /// waiting (HTTP/3: quiche's `poll` lists every readable stream each time it is
    /// called) can say `true` while many exchanges start per turn, so that each read
    /// finds only what a datagram or two brought. The turn still ends with
    /// `process_reads` and [`process_writes`](Self::process_writes) as usual. The
    /// default, `false`, reads once per turn.
    fn reads_between_datagrams(&self) -> bool {
        false
    }

    /// How many rounds of the runtime's ready tasks the loop runs when
    /// [`handed_off_work`](Self::handed_off_work) says work was handed off: one when
    /// the task the work went to answers it, two when that task passes it on to another
    /// (a queue's reader that starts a task per request). The loop runs at most
    /// [`MAX_HANDOFF_PASSES`](crate::MAX_HANDOFF_PASSES). The default is 2.
    fn handoff_passes(&self) -> usize {
        2
    }

    /// Whether the application's exchanges are over: nothing in progress, and the
    /// peer has acknowledged everything it sent (the stream data it ended with a FIN).
    ///
    /// A graceful close (a listener's `shutdown`) asks this after every turn and closes
    /// the connection only once it returns `true` (or its deadline passes): a
    /// CONNECTION_CLOSE stops retransmission, so closing earlier could cut off the
    /// last bytes of a response that was lost on the way. The default, `true`, closes
    /// at once.
    fn delivered(&mut self, conn: &mut QuicConnection) -> bool {
        let _ = conn;
        true
    }

    /// The connection closed; `reason` says who closed it and why. Called exactly once,
    /// also when the handshake never completed. The default does nothing.
    fn on_conn_close(&mut self, conn: &mut QuicConnection, reason: &CloseReason) {
        let _ = (conn, reason);
    }
}
