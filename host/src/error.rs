//! Every way a request can fail, and the one place that turns a failure into a response.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{self, BodyFaultKind, ProxyBody};

/// Where a failure came from. Retrying is allowed for some upstream failures only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The client sent something weir will not forward.
    Client,
    /// The upstream could not be reached or did not answer.
    Upstream,
    /// A filter failed (trap, timeout, memory) or misbehaved.
    Filter,
    /// weir has nowhere to send the request.
    Config,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route matches the request.
    #[error("no route matches {method} {path}")]
    NoRoute {
        /// The request's method.
        method: String,
        /// The request's path.
        path: String,
    },
    /// The request body is larger than `max_body_bytes`.
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The client's request could not be read or forwarded as it is.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The client's request body broke its framing (e.g. a malformed chunk).
    #[error("malformed request body: {detail}")]
    BadRequestBody {
        /// What the parser said.
        detail: String,
    },
    /// The client stopped sending its request body: nothing came for
    /// `body_read_timeout`, or the route's deadline passed while weir waited for it.
    #[error("request body timed out: {detail}")]
    ClientTimeout {
        /// Which limit passed.
        detail: String,
    },
    /// The client went away (closed or reset) before its request body ended. Nobody
    /// reads the answer; it is logged and counted.
    #[error("client closed the request mid-body: {detail}")]
    ClientClosed {
        /// What the connection said.
        detail: String,
    },
    /// The request's path is malformed, or has an escape its route refuses.
    #[error(transparent)]
    BadPath(#[from] crate::path::PathError),
    /// The TCP connection to the upstream failed.
    #[error("cannot connect to upstream {upstream}: {detail}")]
    ConnectFailed {
        /// The upstream's origin.
        upstream: String,
        /// The OS or resolver error.
        detail: String,
    },
    /// The upstream did not accept a connection within `connect_timeout`.
    #[error("connecting to upstream {upstream} timed out")]
    ConnectTimeout {
        /// The upstream's origin.
        upstream: String,
    },
    /// The TLS handshake with the upstream failed (e.g. an untrusted certificate).
    #[error("TLS handshake with upstream {upstream} failed: {detail}")]
    Tls {
        /// The upstream's origin.
        upstream: String,
        /// What rustls said.
        detail: String,
    },
    /// The upstream broke the connection or spoke broken HTTP.
    #[error("upstream {upstream} failed: {detail}")]
    UpstreamBroken {
        /// The upstream's origin.
        upstream: String,
        /// What went wrong.
        detail: String,
    },
    /// The route's deadline (or a filter's per-try timeout) passed before the response came.
    #[error("no response within {timeout_ms} ms")]
    Timeout {
        /// The route's timeout.
        timeout_ms: u64,
    },
    /// All of the upstream's connections stayed busy until the deadline.
    #[error("upstream {upstream} is at its connection limit")]
    Overloaded {
        /// The upstream's origin.
        upstream: String,
    },
    /// A filter trapped, ran out of time or memory, or answered something invalid.
    #[error("filter `{filter}` failed: {detail}")]
    FilterFailed {
        /// The filter's name.
        filter: String,
        /// What went wrong.
        detail: String,
    },
    /// A filter's response was too large to buffer.
    #[error("upstream response larger than {limit} bytes, which filter `{filter}` must buffer")]
    ResponseTooLarge {
        /// The filter that wants the body.
        filter: String,
        /// The limit.
        limit: u64,
    },
}

/// The status of a request whose client went away mid-body: nginx's 499 "client closed
/// request". The client does not read it; logs, metrics and `/requests` do, and it is a
/// 4xx, so a breaker never counts it as the upstream's failure.
pub const CLIENT_CLOSED: StatusCode = match StatusCode::from_u16(499) {
    Ok(s) => s,
    Err(_) => panic!("499 is a valid status"),
};

impl From<BodyFaultKind> for ProxyError {
    fn from(fault: BodyFaultKind) -> ProxyError {
        match fault {
            BodyFaultKind::TooLarge(limit) => ProxyError::BodyTooLarge { limit },
            BodyFaultKind::Malformed(detail) => ProxyError::BadRequestBody { detail },
            BodyFaultKind::Stalled(_) | BodyFaultKind::TooSlow(_) => ProxyError::ClientTimeout {
                detail: fault.to_string(),
            },
            BodyFaultKind::Closed(detail) => ProxyError::ClientClosed { detail },
        }
    }
}

impl ProxyError {
    /// The HTTP status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_)
            | ProxyError::BadRequestBody { .. }
            | ProxyError::BadPath(_) => StatusCode::BAD_REQUEST,
            ProxyError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::ClientClosed { .. } => CLIENT_CLOSED,
            ProxyError::ConnectFailed { .. }
            | ProxyError::Tls { .. }
            | ProxyError::UpstreamBroken { .. }
            | ProxyError::ResponseTooLarge { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ConnectTimeout { .. } | ProxyError::Timeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::Overloaded { .. } | ProxyError::FilterFailed { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The stable, machine-readable code in the JSON body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::BadRequestBody { .. } => "bad_request_body",
            ProxyError::ClientTimeout { .. } => "client_timeout",
            ProxyError::ClientClosed { .. } => "client_closed",
            ProxyError::BadPath(_) => "bad_path",
            ProxyError::ConnectFailed { .. } => "connect_failed",
            ProxyError::ConnectTimeout { .. } => "connect_timeout",
            ProxyError::Tls { .. } => "tls_failed",
            ProxyError::UpstreamBroken { .. } => "upstream_failed",
            ProxyError::Timeout { .. } => "timeout",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::FilterFailed { .. } => "filter_failed",
            ProxyError::ResponseTooLarge { .. } => "response_too_large",
        }
    }

    /// Where the failure came from.
    pub fn origin(&self) -> Origin {
        match self {
            ProxyError::NoRoute { .. } => Origin::Config,
            ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::BadRequestBody { .. }
            | ProxyError::ClientTimeout { .. }
            | ProxyError::ClientClosed { .. }
            | ProxyError::BadPath(_) => Origin::Client,
            ProxyError::FilterFailed { .. } => Origin::Filter,
            _ => Origin::Upstream,
        }
    }

    /// Whether the same request may be sent again as it is: true only where the upstream
    /// cannot have acted on it, or said it was busy.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::ConnectFailed { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::Overloaded { .. }
        )
    }

    /// The JSON error response: `{"error", "message", "route", "request_id"}`.
    pub fn to_response(&self, route: Option<&str>, request_id: &str) -> Response<ProxyBody> {
        let body = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "route": route,
            "request_id": request_id,
        });
        json_response(self.status(), &body)
    }
}

/// A response with a JSON body.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    let mut text = serde_json::to_vec(body).unwrap_or_default();
    text.push(b'\n');
    let mut resp = Response::new(body::full(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn errors_map_to_status_and_json() {
        let e = ProxyError::ConnectFailed {
            upstream: "http://127.0.0.1:1".into(),
            detail: "refused".into(),
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert!(e.is_retryable());
        assert_eq!(e.origin(), Origin::Upstream);
        let resp = e.to_response(Some("payments"), "abc");
        assert_eq!(resp.status(), 502);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "connect_failed");
        assert_eq!(v["route"], "payments");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].as_str().unwrap().contains("refused"));
        assert_eq!(ProxyError::Timeout { timeout_ms: 5 }.status(), 504);
        assert!(!ProxyError::Timeout { timeout_ms: 5 }.is_retryable());
        let f = ProxyError::FilterFailed {
            filter: "auth".into(),
            detail: "trap".into(),
        };
        assert_eq!(
            (f.status(), f.origin()),
            (StatusCode::SERVICE_UNAVAILABLE, Origin::Filter)
        );
    }
}
