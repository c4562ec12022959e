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
}

impl Default for H3Settings {
    fn default() -> Self {
        Self {
            max_field_section_size: 16 * 1024,
            max_pending_requests: 128,
            enable_extended_connect: false,
        }
    }
}
