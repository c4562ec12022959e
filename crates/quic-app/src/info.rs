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
        }
    }
}
