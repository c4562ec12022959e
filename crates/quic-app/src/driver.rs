use crate::{ApplicationOverQuic, CloseReason, HandshakeInfo, QuicConnection};

/// Calls an [`ApplicationOverQuic`]'s methods in the order the trait documents.
///
/// Every I/O loop that drives an application (quic-io's per-connection worker, the
/// in-memory harness) goes through this one type, so the order and the handling of
/// application errors are the same everywhere. An application error closes the
/// connection as [`AppError::close_connection`](crate::AppError::close_connection)
/// describes.
#[derive(Debug)]
pub struct AppDriver<A> {
    app: A,
    established: bool,
    closed: bool,
}

impl<A: ApplicationOverQuic> AppDriver<A> {
    /// Wraps `app`; nothing is called yet.
    pub fn new(app: A) -> Self {
        Self {
            app,
            established: false,
            closed: false,
        }
    }

    /// Runs the part of a loop turn that follows the input: tells the application that
    /// the connection is established (once, when it is, or when a server is in 0-RTT),
    /// then [`process_reads`](ApplicationOverQuic::process_reads) and
    /// [`process_writes`](ApplicationOverQuic::process_writes). Once the peer has
    /// closed the connection (draining), only `process_reads` runs, so the application
    /// still gets what arrived before the close.
    ///
    /// `info` builds the handshake info; it is called at most once.
    pub fn after_input(
        &mut self,
        conn: &mut QuicConnection,
        info: impl FnOnce(&QuicConnection) -> HandshakeInfo,
    ) {
        if self.closed || conn.is_closed() {
            return;
        }
        if conn.is_draining() {
            // The peer closed; what it sent before its CONNECTION_CLOSE (often in the
            // same packet) is still there to read, but nothing can be sent any more.
            if self.established
                && let Err(e) = self.app.process_reads(conn)
            {
                e.close_connection(conn);
            }
            return;
        }
        if !self.established {
            if !self.will_establish(conn) {
                return;
            }
            self.established = true;
            let info = info(conn);
            if let Err(e) = self.app.on_conn_established(conn, &info) {
                e.close_connection(conn);
                return;
            }
        }
        let result = self
            .app
            .process_reads(conn)
            .and_then(|()| self.app.process_writes(conn));
        if let Err(e) = result {
            e.close_connection(conn);
        }
    }

    /// Between two datagrams of a turn's input: runs the application's
    /// [`process_reads`](ApplicationOverQuic::process_reads) alone when it asks for
    /// that ([`reads_between_datagrams`](ApplicationOverQuic::reads_between_datagrams)),
    /// once the connection is established and while it is open. The turn still ends
    /// with [`after_input`](Self::after_input).
    pub fn reads_between(&mut self, conn: &mut QuicConnection) {
        if !self.established
            || self.closed
            || !self.app.reads_between_datagrams()
            || conn.is_closed()
            || conn.is_draining()
        {
            return;
        }
        if let Err(e) = self.app.process_reads(conn) {
            e.close_connection(conn);
        }
    }

    /// Whether the next [`after_input`](Self::after_input) will tell the application
    /// that the connection is established.
    ///
    /// The loop should send what the connection has queued before that call: an
    /// application that closes the connection at once would otherwise keep the last
    /// handshake message (the client's Finished) from ever leaving, since quiche sends
    /// nothing but the close once one is pending.
    pub fn will_establish(&self, conn: &QuicConnection) -> bool {
        !self.established
            && !self.closed
            && !conn.is_closed()
            && !conn.is_draining()
            && (conn.is_established() || conn.is_in_early_data())
    }

    /// Whether [`wait_for_data`](Self::wait_for_data) should take part in this turn's
    /// wait: the connection is established and open (not closing or draining, when
    /// the application can no longer act on it), and the application wants it.
    pub fn wants_to_wait(&self, conn: &QuicConnection) -> bool {
        self.established
            && !self.closed
            && !conn.is_closed()
            && !conn.is_draining()
            && self.app.should_act()
    }

    /// Whether the peer has acknowledged what the application sent
    /// ([`delivered`](ApplicationOverQuic::delivered)); `true` before the application
    /// was told the connection is established, and after it was told it closed.
    pub fn delivered(&mut self, conn: &mut QuicConnection) -> bool {
        !self.established || self.closed || conn.is_closed() || self.app.delivered(conn)
    }

    /// Waits for the application's own work
    /// ([`wait_for_data`](ApplicationOverQuic::wait_for_data)); an error closes the
    /// connection.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as the application's `wait_for_data`, which the trait requires to
    /// be cancel safe.
    pub async fn wait_for_data(&mut self, conn: &mut QuicConnection) {
        if let Err(e) = self.app.wait_for_data(conn).await {
            e.close_connection(conn);
        }
    }

    /// How many rounds of ready tasks the loop should let run before it calls
    /// `after_input` again and sends: 0 when the last [`after_input`](Self::after_input)
    /// handed no work to other tasks
    /// ([`handed_off_work`](ApplicationOverQuic::handed_off_work)), else the
    /// application's [`handoff_passes`](ApplicationOverQuic::handoff_passes), at most
    /// [`MAX_HANDOFF_PASSES`](crate::MAX_HANDOFF_PASSES).
    pub fn handoff_passes(&mut self) -> usize {
        if self.established && !self.closed && self.app.handed_off_work() {
            self.app.handoff_passes().min(crate::MAX_HANDOFF_PASSES)
        } else {
            0
        }
    }

    /// Tells the application the connection closed; only the first call reaches it.
    pub fn on_close(&mut self, conn: &mut QuicConnection, reason: &CloseReason) {
        if !self.closed {
            self.closed = true;
            self.app.on_conn_close(conn, reason);
        }
    }
}

impl<A> AppDriver<A> {
    /// Whether the application was told the connection is established.
    pub fn is_established(&self) -> bool {
        self.established
    }

    /// Whether the application was told the connection closed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.app
    }

    /// The application, mutably.
    pub fn app_mut(&mut self) -> &mut A {
        &mut self.app
    }

    /// Unwraps the application.
    pub fn into_app(self) -> A {
        self.app
    }
}
