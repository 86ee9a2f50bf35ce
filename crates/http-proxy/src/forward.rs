//! Forwarding an absolute-form `http://` request (RFC 9112 §3.2.2) to its origin: the header
//! rewriting, pure, and the kept-alive connection to the origin.

use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Uri, Version};
use tokio::task::JoinHandle;

use crate::dial::Target;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), and the proxy's own
/// credentials (RFC 9110 §11.7.2: consumed by the proxy it is meant for).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop headers: the fixed list, and every header the `Connection` header
/// names. Hyper frames the body again on each side (`Content-Length` is kept, chunking is
/// redone), so `Transfer-Encoding` goes too.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The origin-form of an absolute URI (RFC 9112 §3.2.1): its path and query, `/` for none.
pub(crate) fn origin_form(uri: &Uri) -> Uri {
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let path = if path.as_str().is_empty() {
        PathAndQuery::from_static("/")
    } else {
        path
    };
    Uri::from(path)
}

/// The `Host` header for an absolute URI's authority (RFC 9112 §3.2.2: a proxy replaces the
/// client's Host with the target URI's authority), without any user info.
pub(crate) fn host_header(authority: &Authority) -> Option<HeaderValue> {
    let text = authority.as_str();
    let host = text.rsplit_once('@').map_or(text, |(_, host)| host);
    HeaderValue::from_str(host).ok()
}

/// Rewrites a client's request head for the origin: origin-form target, HTTP/1.1, the
/// authority's `Host`, no hop-by-hop headers.
pub(crate) fn upstream_request<B>(
    mut request: hyper::Request<B>,
    host: HeaderValue,
) -> hyper::Request<B> {
    *request.uri_mut() = origin_form(request.uri());
    *request.version_mut() = Version::HTTP_11;
    let headers = request.headers_mut();
    strip_hop_by_hop(headers);
    headers.insert(header::HOST, host);
    request
}

/// A kept-alive HTTP/1.1 connection to one origin: the handle that sends requests, and the
/// task that drives the connection (aborted when this is dropped, so no task outlives the
/// client's connection).
pub(crate) struct Upstream {
    pub(crate) target: Target,
    pub(crate) sender: SendRequest<hyper::body::Incoming>,
    pub(crate) driver: JoinHandle<()>,
}

impl Upstream {
    /// Whether this connection goes to `target` and can take another request now.
    pub(crate) fn reusable_for(&self, target: &Target) -> bool {
        &self.target == target && !self.sender.is_closed() && self.sender.is_ready()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_named_headers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("x-secret-hop", "1"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic YTpi"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("content-length", "3"),
            ("accept", "*/*"),
            ("user-agent", "t"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["accept", "content-length", "user-agent"]);
    }

    #[test]
    fn writes_the_origin_form() {
        let table = [
            ("http://a.test/x/y?q=1", "/x/y?q=1"),
            ("http://a.test", "/"),
            ("http://a.test/", "/"),
            ("http://a.test:8080?q", "/?q"),
        ];
        for (absolute, origin) in table {
            let uri: Uri = absolute.parse().expect("valid");
            assert_eq!(origin_form(&uri).to_string(), origin, "{absolute}");
        }
    }

    #[test]
    fn rewrites_a_request_for_the_origin() {
        let request = hyper::Request::builder()
            .method("POST")
            .uri("http://user:pw@a.test:8080/p?q")
            .version(Version::HTTP_10)
            .header("host", "evil.test")
            .header("proxy-authorization", "Basic YTpi")
            .header("proxy-connection", "keep-alive")
            .header("content-length", "0")
            .body(())
            .expect("valid request");
        let authority = request.uri().authority().cloned().expect("absolute");
        let host = host_header(&authority).expect("valid host");
        let request = upstream_request(request, host);
        assert_eq!(request.uri().to_string(), "/p?q");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "a.test:8080");
        assert!(!request.headers().contains_key("proxy-authorization"));
        assert!(!request.headers().contains_key("proxy-connection"));
        assert_eq!(request.headers()["content-length"], "0");
    }
}
