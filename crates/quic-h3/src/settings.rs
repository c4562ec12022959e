use std::time::Duration;

/// HTTP/3 settings and limits for one connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct H3Settings {
    /// The largest field section (headers or trailers) accepted from the peer, in
    /// bytes as RFC 9114 §4.2.2 counts them; sent as SETTINGS_MAX_FIELD_SECTION_SIZE.
    pub max_field_section_size: u64,
    /// Requests a server connection queues for the application (on its
    /// [`RequestStream`](crate::RequestStream)) before it refuses more with
    /// H3_REQUEST_REJECTED. A [`Dispatch`](crate::Dispatch) sets its own bound; quay's
    /// `Server` applies this one to the requests whose handlers still run on the
    /// connection (a handler may outlive its stream, after the client reset it). How
    /// many requests a client may have open at once is the QUIC stream limit,
    /// `QuicSettings::max_streams_bidi` in quic-io: MAX_STREAMS makes clients wait
    /// instead of failing.
    pub max_pending_requests: usize,
    /// Allow extended CONNECT (RFC 9220).
    pub enable_extended_connect: bool,
    /// The largest request body a server reads; beyond it the body ends with
    /// [`StreamError::BodyTooLarge`](crate::StreamError::BodyTooLarge) and the client is
    /// asked to stop sending (STOP_SENDING with H3_EXCESSIVE_LOAD). The handler can
    /// still answer (413). `None`: no limit.
    pub max_request_body_size: Option<u64>,
    /// How long a server waits after the handshake for the first request; then it
    /// closes the connection with H3_NO_ERROR. Bounds what a peer that connects and
    /// never asks for anything can hold. `None`: no limit (the idle timeout still
    /// applies, but PINGs defeat it).
    pub first_request_timeout: Option<Duration>,
    /// After a graceful drain ([`ServerControl::goaway`](crate::ServerControl::goaway))
    /// has finished every request, the server closes the connection as soon as the
    /// client has acknowledged every response; if that takes longer than this (the
    /// client is gone, the path is black-holed), it closes anyway and logs how many
    /// responses may be cut short.
    pub drain_ack_timeout: Duration,
    /// Requests a server takes on one connection; with the last one it sends GOAWAY
    /// and drains (later requests are refused with H3_REQUEST_REJECTED, which clients
    /// retry on a new connection), so long-lived connections are recycled and spread
    /// over servers and restarts. `None`: no limit. Default 100,000.
    pub max_requests_per_connection: Option<u64>,
    /// How long a server waits for a request's header section once the client has
    /// opened its stream; then it resets the stream (H3_REQUEST_INCOMPLETE). Bounds
    /// what a client that trickles headers, or never finishes them, can hold.
    /// `None`: no limit. Default 10 s.
    pub request_header_timeout: Option<Duration>,
}

impl Default for H3Settings {
    fn default() -> Self {
        Self {
            max_field_section_size: 16 * 1024,
            max_pending_requests: 128,
            enable_extended_connect: false,
            max_request_body_size: None,
            first_request_timeout: Some(Duration::from_secs(10)),
            drain_ack_timeout: Duration::from_secs(5),
            max_requests_per_connection: Some(100_000),
            request_header_timeout: Some(Duration::from_secs(10)),
        }
    }
}
