/// HTTP/3 settings and limits for one connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct H3Settings {
    /// The largest field section (headers or trailers) accepted from the peer, in
    /// bytes as RFC 9114 §4.2.2 counts them; sent as SETTINGS_MAX_FIELD_SECTION_SIZE.
    pub max_field_section_size: u64,
    /// Requests a server queues for the application before it refuses more with
    /// H3_REQUEST_REJECTED.
    pub max_pending_requests: usize,
    /// Allow extended CONNECT (RFC 9220).
    pub enable_extended_connect: bool,
    /// The largest request body a server reads; beyond it the body ends with
    /// [`StreamError::BodyTooLarge`](crate::StreamError::BodyTooLarge) and the client is
    /// asked to stop sending (STOP_SENDING with H3_EXCESSIVE_LOAD). The handler can
    /// still answer (413). `None`: no limit.
    pub max_request_body_size: Option<u64>,
}

impl Default for H3Settings {
    fn default() -> Self {
        Self {
            max_field_section_size: 16 * 1024,
            max_pending_requests: 128,
            enable_extended_connect: false,
            max_request_body_size: None,
        }
    }
}
