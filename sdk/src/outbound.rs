//! HTTP calls from a filter (WIT `weir:filter/outbound`, since 0.1.1): token fetches,
//! webhooks. A filter may call only the upstreams listed in its
//! `[filters.NAME] outbound = ["token-endpoint"]` setting; anything else fails with
//! [`OutboundError::NotAllowed`], whose text names the upstream and the list. The path is
//! sent to that upstream's configured URL, so a filter can never reach an origin weir
//! does not know. The call goes through weir's shared upstream pool (TLS verified,
//! `connect_timeout` and `max_connections` applied) and blocks until the whole response
//! is in, so the code stays sequential.
//!
//! Waiting does not count against the filter's `max_call_time`, but it does hold up the
//! request the filter is working on, so weir ends it at the route's deadline
//! ([`RequestInfo::remaining_ms`](crate::RequestInfo::remaining_ms) at the call's start),
//! with [`OutboundError::Upstream`]`(UpstreamError::Timeout)`; a
//! [`timeout`](OutboundRequest::timeout) can only shorten it (weir caps it at 30 s, the
//! default). Keep what you fetch in [`state`](crate::state) so that most requests need
//! no call at all. A response body larger than weir's `max_body_bytes` is
//! [`OutboundError::TooLarge`]. A component that imports `outbound` needs weir 0.1.1 or
//! later. Off wasm (under `cargo test`) [`send`] panics.
//!
//! ```
//! use std::time::Duration;
//! use weir_filter::RequestInfo;
//! use weir_filter::outbound::{self, OutboundRequest};
//!
//! /// Fetches a token from the `oauth` upstream (listed in this filter's `outbound`).
//! fn fetch_token(info: &RequestInfo) -> Option<Vec<u8>> {
//!     let wait = Duration::from_millis(info.remaining_ms().min(2_000));
//!     let resp = outbound::send(
//!         OutboundRequest::new("oauth", "POST", "/token")
//!             .header("content-type", "application/x-www-form-urlencoded")
//!             .body("grant_type=client_credentials")
//!             .timeout(wait),
//!     );
//!     match resp {
//!         Ok(r) if r.status == 200 => Some(r.body),
//!         Ok(r) => {
//!             weir_filter::log::warn(&format!("token endpoint answered {}", r.status));
//!             None
//!         }
//!         Err(e) => {
//!             weir_filter::log::warn(&format!("token endpoint failed: {e:?}"));
//!             None
//!         }
//!     }
//! }
//! ```

use std::time::Duration;

use crate::bindings::weir::filter0_1_2::outbound as wit;

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
