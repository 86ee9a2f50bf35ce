//! The settings of the HTTP front door, with their defaults.

use std::time::Duration;

/// hyper's smallest read buffer: a smaller [`ProxyOptions::max_header_len`] is raised to this.
pub const MIN_HEADER_LEN: usize = 8192;

/// The settings of an [`crate::HttpProxy`]. `Default` gives the documented defaults; set the
/// public fields to change them.
///
/// ```
/// let mut options = http_proxy::ProxyOptions::default();
/// options.header_read_timeout = std::time::Duration::from_secs(5);
/// assert_eq!(options.max_header_len, 16 * 1024);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ProxyOptions {
    /// The whole request head (request line and headers) must arrive within this, for every
    /// request on a connection, or the connection is closed without an answer. The clock runs
    /// from the moment the proxy waits for a head, so it also bounds how long a kept-alive
    /// connection may sit idle between requests. Default 10 s.
    pub header_read_timeout: Duration,
    /// The most bytes hyper buffers while reading a request head; a larger head is answered
    /// 431 and the connection closed. At least [`MIN_HEADER_LEN`]. Default 16 KiB.
    pub max_header_len: usize,
    /// A backstop on each [`crate::Dialer::dial`] (which should apply its own
    /// `connect_timeout`): after it, 504. Default 30 s.
    pub dial_timeout: Duration,
    /// How long an origin may take to send a response head after the request: after it, 504.
    /// Default 60 s.
    pub response_timeout: Duration,
    /// A CONNECT tunnel with no byte moving either way for this long is closed (the relay of
    /// the socks5 crate's proxy core). Default `None`: a tunnel lasts until either side
    /// closes.
    pub idle_timeout: Option<Duration>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            header_read_timeout: Duration::from_secs(10),
            max_header_len: 16 * 1024,
            dial_timeout: Duration::from_secs(30),
            response_timeout: Duration::from_secs(60),
            idle_timeout: None,
        }
    }
}
