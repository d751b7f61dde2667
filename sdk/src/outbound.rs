//! HTTP calls from a filter (WIT `weir:filter/outbound`, since 0.1.1): token fetches,
//! webhooks. A filter may call only the upstreams listed in its
//! `[filters.NAME] outbound = ["token-endpoint"]` setting; anything else fails with
//! [`OutboundError::NotAllowed`]. The call goes through weir's shared upstream pool (TLS
//! verified, connection limits applied) and blocks until the whole response is in, so the
//! code stays sequential. Waiting does not count against the filter's `max_call_time`.
//!
//! ```no_run
//! use weir_filter::outbound::{self, OutboundRequest};
//! let resp = outbound::send(
//!     OutboundRequest::new("oauth", "POST", "/token")
//!         .header("content-type", "application/x-www-form-urlencoded")
//!         .body("grant_type=client_credentials"),
//! );
//! match resp {
//!     Ok(r) if r.status == 200 => { /* parse r.body */ }
//!     Ok(r) => weir_filter::log::warn(&format!("token endpoint answered {}", r.status)),
//!     Err(e) => weir_filter::log::warn(&format!("token endpoint failed: {e:?}")),
//! }
//! ```

use std::time::Duration;

use crate::bindings::weir::filter::outbound as wit;

pub use wit::{OutboundError, OutboundRequest, OutboundResponse};

/// Sends `req` and waits for the whole response.
pub fn send(req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
    wit::send(&req)
}

impl OutboundRequest {
    /// A request with no headers or body to `path_with_query` on the upstream named
    /// `upstream` in weir's config.
    pub fn new(upstream: &str, method: &str, path_with_query: &str) -> OutboundRequest {
        OutboundRequest {
            upstream: upstream.to_owned(),
            method: method.to_owned(),
            path_with_query: path_with_query.to_owned(),
            headers: Vec::new(),
            body: None,
            timeout_ms: None,
        }
    }

    /// Adds a header (the name is lowercased).
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> OutboundRequest {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> OutboundRequest {
        self.body = Some(body.into());
        self
    }

    /// Waits at most `timeout` for the response (weir caps it at 30 s).
    pub fn timeout(mut self, timeout: Duration) -> OutboundRequest {
        self.timeout_ms = Some(timeout.as_millis().min(u128::from(u32::MAX)) as u32);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_fills_every_field() {
        let r = OutboundRequest::new("oauth", "POST", "/token")
            .header("Content-Type", "text/plain")
            .body("x")
            .timeout(Duration::from_millis(1500));
        assert_eq!(r.upstream, "oauth");
        assert_eq!(
            r.headers,
            vec![("content-type".to_owned(), b"text/plain".to_vec())]
        );
        assert_eq!(r.body.as_deref(), Some(&b"x"[..]));
        assert_eq!(r.timeout_ms, Some(1500));
    }
}
