//! The HTTP client the OTLP exporter sends through: weir's own upstream pool, with one
//! upstream, the collector.
//!
//! The pool already does what an exporter needs (keep-alive, HTTP/2 by ALPN, TLS
//! verified against the public web roots, connect and response timeouts) on tokio, so the
//! exporter brings no HTTP client of its own. Its metrics go to a registry of their own:
//! `/metrics` counts exports in `weir_otlp_*`, and the collector never shows up as an
//! upstream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use opentelemetry_http::{HttpClient, HttpError};

use crate::body;
use crate::config::{OtlpConfig, UpstreamConfig, defaults};
use crate::telemetry::UpstreamMetrics;
use crate::upstream::{Upstream, UpstreamPool};

/// The most bytes of a collector's answer that are read.
const MAX_ANSWER: u64 = 4 << 20;

/// How long one export request may take, connecting included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The collector, reached through a pool of its own.
pub struct Collector {
    pool: UpstreamPool,
    upstream: Arc<Upstream>,
    /// `[telemetry.otlp] headers`, secrets resolved, marked sensitive.
    headers: HeaderMap,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the header values: they may be secrets.
        f.debug_struct("Collector")
            .field("origin", &self.upstream.origin)
            .finish_non_exhaustive()
    }
}

impl Collector {
    /// A client for `config`'s collector. The error says what could not be set up.
    pub fn new(config: &OtlpConfig) -> Result<Collector, String> {
        let mut headers = HeaderMap::new();
        for (name, secret) in &config.headers {
            // validate() checked both and resolved the secret once; one that vanished
            // since is an error, not an export without its credential.
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| format!("telemetry.otlp.headers: {e}"))?;
            let value = secret
                .resolve()
                .map_err(|e| format!("telemetry.otlp.headers.{name}: {e}"))?;
            let mut value = HeaderValue::from_str(&value).map_err(|_| {
                format!("telemetry.otlp.headers.{name}: the value is not a valid header value")
            })?;
            value.set_sensitive(true);
            headers.insert(name, value);
        }
        let upstream = UpstreamConfig {
            url: config.endpoint.origin.clone(),
            connect_timeout: defaults::connect_timeout(),
            max_connections: 4,
            read_timeout: crate::config::HumanDuration(EXPORT_TIMEOUT),
            tls: config.tls.clone(),
        };
        let metrics =
            UpstreamMetrics::new(&prometheus::Registry::new()).map_err(|e| e.to_string())?;
        let pool = UpstreamPool::new(&[("otlp".to_owned(), upstream)], Arc::new(metrics))
            .map_err(|e| format!("telemetry.otlp.endpoint: {e}"))?;
        let upstream = pool
            .get("otlp")
            .cloned()
            .ok_or_else(|| "the collector's upstream is missing".to_owned())?;
        Ok(Collector {
            pool,
            upstream,
            headers,
        })
    }

    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (mut parts, bytes) = request.into_parts();
        // Only what describes the body, and the configured headers: the exporter also
        // adds any `OTEL_EXPORTER_OTLP_HEADERS` from weir's environment, which could
        // carry another service's credentials to this collector.
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 3);
        for name in [CONTENT_TYPE, CONTENT_ENCODING, USER_AGENT] {
            if let Some(value) = parts.headers.remove(&name) {
                headers.insert(name, value);
            }
        }
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        parts.headers = headers;
        let req = Request::from_parts(parts, body::full(bytes));
        let deadline = tokio::time::Instant::now() + EXPORT_TIMEOUT;
        let timeout_ms = EXPORT_TIMEOUT.as_millis() as u64;
        let resp = self
            .pool
            .send(&self.upstream, Box::new(req), deadline, timeout_ms)
            .await
            .map_err(|f| Box::new(f.error) as HttpError)?;
        let (parts, stream) = resp.into_parts();
        let answer = tokio::time::timeout_at(deadline, body::collect_limited(stream, MAX_ANSWER))
            .await
            .map_err(|_| "the collector's answer did not come in time".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(Response::from_parts(parts, answer))
    }
}

impl HttpClient for Collector {
    // What `#[async_trait]` makes of `async fn send_bytes`, written out.
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(self.send(request))
    }
}
