//! Host side of `weir:filter/outbound`: HTTP calls from a filter to the upstreams its
//! `[filters.NAME] outbound = [...]` setting names, through the shared upstream pool.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};

use super::bindings::weir::filter::outbound::{
    Host, OutboundError, OutboundRequest, OutboundResponse,
};
use super::{GuestHost, HostCallKind};
use crate::body;
use crate::headers;
use crate::upstream::UpstreamPool;

/// The default, and the most, an outbound call may wait for its response. The request's
/// deadline bounds it further.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// What one filter may call: the shared pool and the upstreams it is allowed.
pub struct Outbound {
    pool: Arc<UpstreamPool>,
    allowed: Vec<String>,
    max_body: u64,
}

impl Outbound {
    /// Calls through `pool` to the upstreams named in `allowed`, buffering responses up
    /// to `max_body` bytes.
    pub fn new(pool: Arc<UpstreamPool>, allowed: Vec<String>, max_body: u64) -> Outbound {
        Outbound {
            pool,
            allowed,
            max_body,
        }
    }

    /// Sends `req`, waiting no later than `deadline` (the request's, when the call
    /// works on one) and no longer than its own `timeout-ms` or [`MAX_TIMEOUT`].
    async fn send(
        &self,
        req: OutboundRequest,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<OutboundResponse, OutboundError> {
        // weir is never an open proxy, not even for its own filters.
        let upstream = match self.pool.get(&req.upstream) {
            Some(u) if self.allowed.contains(&req.upstream) => u.clone(),
            _ => {
                return Err(OutboundError::NotAllowed(format!(
                    "upstream `{}` is not in this filter's outbound list ({})",
                    req.upstream,
                    if self.allowed.is_empty() {
                        "empty".to_owned()
                    } else {
                        self.allowed.join(", ")
                    }
                )));
            }
        };
        let method = Method::from_bytes(req.method.as_bytes())
            .map_err(|_| OutboundError::Invalid(format!("invalid method {:?}", req.method)))?;
        let uri = upstream
            .uri(&req.path_with_query)
            .map_err(|e| OutboundError::Invalid(e.to_string()))?;
        let mut out = http::Request::new(body::full(Bytes::from(req.body.unwrap_or_default())));
        *out.method_mut() = method;
        *out.uri_mut() = uri;
        for (n, v) in &req.headers {
            let name = HeaderName::from_bytes(n.as_bytes())
                .map_err(|_| OutboundError::Invalid(format!("invalid header name {n:?}")))?;
            let value = HeaderValue::from_bytes(v)
                .map_err(|_| OutboundError::Invalid(format!("invalid value for header {n:?}")))?;
            out.headers_mut().append(name, value);
        }
        headers::prepare_upstream(out.headers_mut());
        let now = tokio::time::Instant::now();
        // A filter cannot hold its request past the route's timeout by waiting here.
        let remaining = deadline.map_or(MAX_TIMEOUT, |d| d.saturating_duration_since(now));
        let timeout = req
            .timeout_ms
            .map_or(MAX_TIMEOUT, |ms| Duration::from_millis(u64::from(ms)))
            .min(MAX_TIMEOUT)
            .min(remaining);
        let deadline = now + timeout;
        let resp = self
            .pool
            .send(
                &upstream,
                Box::new(out),
                deadline,
                timeout.as_millis() as u64,
            )
            .await
            .map_err(|f| OutboundError::Upstream(f.kind))?;
        let (parts, stream) = resp.into_parts();
        let collected =
            tokio::time::timeout_at(deadline, body::collect_limited(stream, self.max_body))
                .await
                .map_err(|_| OutboundError::Upstream(super::UpstreamError::Timeout))?;
        let bytes = match collected {
            Ok(b) => b,
            Err(e) if body::is_too_large(e.as_ref()) => return Err(OutboundError::TooLarge),
            Err(_) => return Err(OutboundError::Upstream(super::UpstreamError::Reset)),
        };
        Ok(OutboundResponse {
            status: parts.status.as_u16(),
            headers: headers::to_fields(&parts.headers),
            body: bytes.to_vec(),
        })
    }
}

impl Host for GuestHost {
    async fn send(&mut self, req: OutboundRequest) -> Result<OutboundResponse, OutboundError> {
        let Some(outbound) = self.outbound.clone() else {
            return Err(OutboundError::NotAllowed(format!(
                "filter `{}` has no outbound upstreams; list them in [filters.{}] outbound = [...]",
                self.meta.filter, self.meta.filter
            )));
        };
        if !self.record_calls {
            return outbound.send(req, self.deadline).await;
        }
        let at = tokio::time::Instant::now();
        let upstream = req.upstream.clone();
        let origin = outbound
            .pool
            .get(&upstream)
            .map(|u| u.origin.clone())
            .unwrap_or_default();
        let method = req.method.clone();
        let path = req
            .path_with_query
            .split('?')
            .next()
            .unwrap_or_default()
            .to_owned();
        let result = outbound.send(req, self.deadline).await;
        let error = result.as_ref().err().map(|e| match e {
            OutboundError::NotAllowed(_) => "not_allowed",
            OutboundError::Invalid(_) => "invalid",
            OutboundError::TooLarge => "too_large",
            OutboundError::Upstream(kind) => crate::telemetry::upstream_error_kind(*kind),
        });
        let status = result.as_ref().ok().map(|r| r.status);
        let what = HostCallKind::Outbound {
            upstream,
            origin,
            method,
            path,
            status,
        };
        self.note_call(what, at, error);
        result
    }
}
