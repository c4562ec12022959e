//! Stateless reset packets (RFC 9000 §10.3) and the rate limit on sending them.

use std::time::Instant;

use crate::cid::random_bytes;

/// RFC 9000 §10.3: a stateless reset is at least 21 bytes (5 unpredictable bytes and
/// the 16-byte token) and looks like a short-header packet.
pub(crate) const MIN_RESET_LEN: usize = 21;

/// The longest reset quay sends: long enough to look like a small short-header packet.
const MAX_RESET_LEN: usize = 43;

/// Writes a stateless reset answering a packet of `received_len` bytes into `out`;
/// returns its length, or `None` when no reset may be sent.
///
/// RFC 9000 §10.3.3: a reset must be smaller than the packet that triggered it, so two
/// endpoints can never reset each other in a loop; packets too small to allow that get
/// no answer.
pub(crate) fn write_reset(token: &[u8; 16], received_len: usize, out: &mut [u8]) -> Option<usize> {
    if received_len <= MIN_RESET_LEN {
        return None;
    }
    let len = (received_len - 1).min(MAX_RESET_LEN).min(out.len());
    if len < MIN_RESET_LEN {
        return None;
    }
    random_bytes(&mut out[..len - 16]);
    // Short header form: first bit 0, fixed bit 1 (RFC 9000 §17.3.1).
    out[0] = (out[0] & 0x3f) | 0x40;
    out[len - 16..len].copy_from_slice(token);
    Some(len)
}

/// A token bucket: `rate` per second, bursts of up to `burst`. Time is passed in.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimiter {
    pub(crate) fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: None,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.rate;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reset_is_smaller_than_its_trigger_and_ends_with_the_token() {
        let token = [7u8; 16];
        let mut out = [0u8; 64];
        let len = write_reset(&token, 30, &mut out).unwrap();
        assert_eq!(len, 29);
        assert_eq!(&out[len - 16..len], &token);
        assert_eq!(out[0] & 0xc0, 0x40);
        assert_eq!(write_reset(&token, 1200, &mut out), Some(MAX_RESET_LEN));
        assert_eq!(write_reset(&token, 21, &mut out), None);
    }

    #[test]
    fn the_rate_limiter_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, 3);
        assert_eq!((0..5).filter(|_| limiter.try_take(t0)).count(), 3);
        assert!(!limiter.try_take(t0 + Duration::from_millis(50)));
        assert!(limiter.try_take(t0 + Duration::from_millis(160)));
    }
}
