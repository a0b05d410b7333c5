//! The bounds of one listener: connections, head size, and timeouts. Plain
//! data, read by the accept loop and the connection tasks.

use std::time::Duration;

/// Bytes read from a socket at once.
pub(crate) const READ_CHUNK_BYTES: usize = 16 * 1024;

/// What a listener allows. [`Limits::default`] is what `hearth serve` uses.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections held at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Largest request head (request line and headers), in bytes; a larger
    /// one is answered 431.
    pub max_head_bytes: usize,
    /// Most header fields in a request; more are answered 431.
    pub max_headers: usize,
    /// A request head must arrive whole within this time of its first byte,
    /// and a new connection must send its first head within it; else 408.
    pub head_timeout: Duration,
    /// A kept-alive connection with no new request for this long is closed.
    pub idle_timeout: Duration,
    /// A body that sends nothing for this long is answered 408.
    pub body_idle_timeout: Duration,
    /// A body must also arrive at this average rate (after a grace of
    /// `body_idle_timeout`); a slower one is answered 408.
    pub body_min_bytes_per_sec: u64,
    /// Writing a response may take this long before the connection is
    /// dropped.
    pub write_timeout: Duration,
    /// How long [`crate::serve`] waits for in-flight requests at shutdown.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(10),
            body_min_bytes_per_sec: 32 * 1024,
            write_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// The most memory the open connections can hold for request heads and
    /// reads, whoever sends them: one head and one read buffer each.
    pub fn connection_memory_bound_bytes(&self) -> usize {
        self.max_connections * (self.max_head_bytes + READ_CHUNK_BYTES)
    }

    /// By when (from the start of the body) its first `len_bytes` must have
    /// arrived: the grace of `body_idle_timeout`, then the minimum rate.
    pub(crate) fn body_deadline(&self, len_bytes: u64) -> Duration {
        let rate = self.body_min_bytes_per_sec.max(1);
        self.body_idle_timeout + Duration::from_millis(len_bytes.saturating_mul(1000) / rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_bound_is_documented_and_body_deadlines_grow_with_length() {
        let l = Limits::default();
        // docs/ARCHITECTURE.md states this figure.
        assert_eq!(l.connection_memory_bound_bytes(), 48 * 1024 * 1024);
        assert_eq!(l.body_deadline(0), Duration::from_secs(10));
        assert_eq!(
            l.body_deadline(6 * 1024 * 1024),
            Duration::from_secs(10 + 192)
        );
    }
}
