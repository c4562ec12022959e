use std::net::SocketAddr;
use std::time::Duration;

/// What the handshake established, handed to
/// [`ApplicationOverQuic::on_conn_established`](crate::ApplicationOverQuic::on_conn_established).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HandshakeInfo {
    /// The negotiated ALPN protocol.
    pub alpn: Vec<u8>,
    /// The server name (SNI) the client asked for, if any.
    pub server_name: Option<String>,
    /// The local address of the connection's first path.
    pub local_addr: SocketAddr,
    /// The peer's address on the connection's first path.
    pub peer_addr: SocketAddr,
    /// Time from the first packet to the completed handshake (or to accepted 0-RTT).
    pub duration: Duration,
    /// Whether a previous session was resumed.
    pub resumed: bool,
    /// `true` when called on 0-RTT keys before the handshake completed.
    pub early_data: bool,
    /// Whether 0-RTT data was offered and accepted. Known on both sides once the
    /// handshake completed; `false` before, and whenever 0-RTT was not used.
    pub early_data_accepted: bool,
    /// The certificate chain the peer presented, DER, leaf first; empty when it
    /// presented none (a client without a certificate, or a server whose certificate
    /// was not checked).
    pub peer_certificates: Vec<Vec<u8>>,
    /// The connection's id for logs: this side's first source connection ID in hex,
    /// as the connection's tracing span (`quic_conn{scid=...}`) shows it.
    pub trace_id: String,
    /// The negotiated TLS cipher suite's standard name (`TLS_AES_128_GCM_SHA256`,
    /// ...), once the handshake completed; quiche does not tell it, so it is `None`
    /// unless the endpoint read it from TLS itself (quic-io's endpoints do).
    pub cipher: Option<&'static str>,
    /// The negotiated TLS key-exchange group (`X25519MLKEM768`, `X25519`, ...), read
    /// the same way as [`cipher`](Self::cipher).
    pub key_exchange: Option<&'static str>,
}

/// BoringSSL's `ssl_early_data_accepted` reason.
const EARLY_DATA_ACCEPTED: u32 = 2;

impl HandshakeInfo {
    /// Reads the info from a connection whose handshake completed (or that is in early
    /// data).
    pub fn from_connection(
        conn: &quiche::Connection,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        duration: Duration,
    ) -> Self {
        Self {
            alpn: conn.application_proto().to_vec(),
            server_name: conn.server_name().map(str::to_owned),
            local_addr,
            peer_addr,
            duration,
            resumed: conn.is_resumed(),
            early_data: conn.is_in_early_data() && !conn.is_established(),
            early_data_accepted: conn.is_established()
                && conn.early_data_reason() == EARLY_DATA_ACCEPTED,
            peer_certificates: conn
                .peer_cert_chain()
                .map(|chain| chain.into_iter().map(<[u8]>::to_vec).collect())
                .unwrap_or_default(),
            trace_id: conn.trace_id().to_owned(),
            cipher: None,
            key_exchange: None,
        }
    }
}

/// The connection a request (or any unit of an application's work) arrived on, for
/// handlers: addresses, server name, ALPN, the peer's certificates, 0-RTT, and an id
/// for logs.
///
/// Cheap to clone: the connection's part is shared. The HTTP/3 server puts one in the
/// extensions of every request it hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    handshake: std::sync::Arc<HandshakeInfo>,
    early_data: bool,
}

impl ConnectionInfo {
    /// The info of a connection whose handshake produced `handshake`; not in 0-RTT.
    pub fn new(handshake: std::sync::Arc<HandshakeInfo>) -> Self {
        Self {
            handshake,
            early_data: false,
        }
    }

    /// The same connection, marked as carrying this unit of work in 0-RTT data (or
    /// not).
    pub fn with_early_data(mut self, early_data: bool) -> Self {
        self.early_data = early_data;
        self
    }

    /// The peer's address when the connection started.
    pub fn peer_addr(&self) -> SocketAddr {
        self.handshake.peer_addr
    }

    /// The local address the connection arrived on.
    pub fn local_addr(&self) -> SocketAddr {
        self.handshake.local_addr
    }

    /// The server name (SNI) the client asked for, if any.
    pub fn server_name(&self) -> Option<&str> {
        self.handshake.server_name.as_deref()
    }

    /// The negotiated ALPN protocol (`b"h3"` for HTTP/3).
    pub fn alpn(&self) -> &[u8] {
        &self.handshake.alpn
    }

    /// Whether this arrived in 0-RTT data: an attacker can replay it, so only
    /// idempotent work should be done for it.
    pub fn early_data(&self) -> bool {
        self.early_data
    }

    /// The certificate chain the peer presented and the server verified (DER, leaf
    /// first): a client's, under mutual TLS. Empty when there was none.
    pub fn peer_certificates(&self) -> &[Vec<u8>] {
        &self.handshake.peer_certificates
    }

    /// The connection's id for logs (its first source connection ID, hex), as the
    /// connection's tracing span shows it.
    pub fn id(&self) -> &str {
        &self.handshake.trace_id
    }

    /// Everything the handshake established.
    pub fn handshake(&self) -> &HandshakeInfo {
        &self.handshake
    }
}
