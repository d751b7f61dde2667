//! Webhook deliveries: a job's result POSTed to the client's callback URL, signed as the
//! Standard Webhooks spec says, retried on a schedule.
//!
//! - Each delivery carries `webhook-id` (the same on every retry, so a receiver can drop
//!   duplicates), `webhook-timestamp` (Unix seconds of this attempt) and
//!   `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed with the
//!   bytes of a `whsec_<base64>` secret.
//! - A 2xx answer delivers; 410 stops for good; anything else (or no answer) waits the
//!   schedule's next step, plus up to a fifth more at random so that many failed
//!   deliveries do not come back at once, and at least what `Retry-After` asked for.
//! - Callback URLs may only point at the origins the operator listed, so a client cannot
//!   make weir call anything else (no SSRF).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};

use crate::body;
use crate::config::{Origin, UpstreamConfig, WebhooksConfig, defaults};
use crate::telemetry::UpstreamMetrics;
use crate::upstream::{Upstream, UpstreamPool};

/// The longest `Retry-After` a receiver may ask for; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A Standard Webhooks signing key: the bytes of a `whsec_<base64>` secret.
pub struct SigningKey(ring::hmac::Key);

impl SigningKey {
    /// Parses `whsec_<base64>`; the error says what is wrong, never the secret.
    pub fn parse(secret: &str) -> Result<SigningKey, String> {
        let b64 = secret
            .strip_prefix("whsec_")
            .ok_or("must start with `whsec_` (Standard Webhooks)")?;
        let bytes = BASE64
            .decode(b64)
            .map_err(|_| "must be base64 after `whsec_`".to_owned())?;
        if bytes.is_empty() {
            return Err("has no key after `whsec_`".to_owned());
        }
        Ok(SigningKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    /// The `webhook-signature` value for this message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut ctx = ring::hmac::Context::with_key(&self.0);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        format!("v1,{}", BASE64.encode(ctx.sign().as_ref()))
    }
}

/// How one delivery attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The receiver answered 2xx.
    Delivered,
    /// The receiver answered 410 Gone: stop.
    Gone,
    /// Anything else: retry, no sooner than `retry_after` when the receiver gave one.
    Failed {
        /// What went wrong, for the job's record.
        reason: String,
        /// The receiver's `Retry-After`.
        retry_after: Option<Duration>,
    },
}

/// The wait before the next attempt after `failures` failed ones, or `None` when the
/// schedule is used up. `jitter` in `[0, 1)` adds up to a fifth of the step.
pub fn next_wait(
    schedule: &[Duration],
    failures: usize,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let step = *schedule.get(failures.checked_sub(1)?)?;
    let wait = step + step.mul_f64(jitter.clamp(0.0, 1.0) / 5.0);
    Some(wait.max(retry_after.unwrap_or_default().min(MAX_RETRY_AFTER)))
}

/// `Retry-After` as delta-seconds or an HTTP-date (RFC 9110 §10.2.3).
fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(text)
        .ok()
        .map(|at| at.duration_since(now).unwrap_or_default())
}

/// The delivery side: allowed origins, the key, the schedule, and a client of its own
/// (callbacks are not upstreams, and share no connection limit with them).
pub struct Webhooks {
    key: SigningKey,
    /// The waits between attempts.
    pub schedule: Vec<Duration>,
    timeout: Duration,
    pool: UpstreamPool,
    /// Each allowed origin and its upstream in `pool`.
    origins: Vec<(Origin, Arc<Upstream>)>,
}

impl Webhooks {
    /// The delivery side for `[jobs.webhooks]`, its secret resolved.
    pub fn new(cfg: &WebhooksConfig, metrics: Arc<UpstreamMetrics>) -> Result<Webhooks, String> {
        let key = SigningKey::parse(&cfg.secret.resolve()?)?;
        let named: Vec<(String, UpstreamConfig)> = cfg
            .origins
            .iter()
            .map(|o| {
                (
                    format!("webhook {o}"),
                    UpstreamConfig {
                        url: o.clone(),
                        connect_timeout: defaults::connect_timeout(),
                        max_connections: defaults::max_connections(),
                        read_timeout: defaults::upstream_read_timeout(),
                        tls: None,
                    },
                )
            })
            .collect();
        let pool = UpstreamPool::new(&named, metrics).map_err(|e| e.to_string())?;
        let origins = named
            .iter()
            .zip(&cfg.origins)
            .filter_map(|((name, _), o)| Some((o.clone(), pool.get(name)?.clone())))
            .collect();
        Ok(Webhooks {
            key,
            schedule: cfg.schedule.iter().map(|d| d.0).collect(),
            timeout: cfg.timeout.0,
            pool,
            origins,
        })
    }

    /// Checks a client's callback URL: absolute, no credentials, and under an allowed
    /// origin. The error is the 400's message.
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        self.target(url).map(|_| ())
    }

    /// The allowed origin's upstream and the path for `url`.
    fn target(&self, url: &str) -> Result<(&Arc<Upstream>, String), String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|_| format!("callback URL {url:?} is not a URL"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme(), uri.authority()) else {
            return Err(format!("callback URL {url:?} is not absolute"));
        };
        if authority.as_str().contains('@') {
            return Err(format!("callback URL {url:?} carries credentials"));
        }
        let (_, upstream) = self
            .origins
            .iter()
            .find(|(o, _)| {
                &o.scheme == scheme
                    && o.authority
                        .as_str()
                        .eq_ignore_ascii_case(authority.as_str())
            })
            .ok_or_else(|| {
                format!(
                    "callback URL {url:?} is not under an origin listed in [jobs.webhooks] origins"
                )
            })?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        Ok((upstream, path))
    }

    /// One signed delivery of `body` to `url`.
    pub async fn deliver(&self, url: &str, id: &str, body: Bytes) -> Attempt {
        let failed = |reason: String| Attempt::Failed {
            reason,
            retry_after: None,
        };
        let (upstream, path) = match self.target(url) {
            Ok(t) => t,
            // The origin was allowed at acceptance; a reload of the list may have dropped it.
            Err(e) => return failed(e),
        };
        let now = SystemTime::now();
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signature = self.key.sign(id, timestamp, &body);
        let uri = match upstream.uri(&path) {
            Ok(u) => u,
            Err(e) => return failed(e.to_string()),
        };
        let mut req = Request::new(body::full(body));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.insert(name, v);
            }
        };
        put("content-type", "application/json".to_owned());
        put("webhook-id", id.to_owned());
        put("webhook-timestamp", timestamp.to_string());
        put("webhook-signature", signature);
        if let Some(host) = upstream.host_header() {
            h.insert(http::header::HOST, host.clone());
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        let timeout_ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        match self
            .pool
            .send(upstream, Box::new(req), deadline, timeout_ms)
            .await
        {
            Err(f) => failed(f.error.to_string()),
            Ok(resp) => {
                let (parts, resp_body) = resp.into_parts();
                // Read the answer to the end so that the connection goes back to the pool.
                let _ = body::collect_limited(resp_body, 64 << 10).await;
                classify(
                    parts.status,
                    parts.headers.get(http::header::RETRY_AFTER),
                    now,
                )
            }
        }
    }
}

/// What a receiver's answer means for the delivery.
fn classify(status: StatusCode, retry: Option<&HeaderValue>, now: SystemTime) -> Attempt {
    if status.is_success() {
        Attempt::Delivered
    } else if status == StatusCode::GONE {
        Attempt::Gone
    } else {
        Attempt::Failed {
            reason: format!("the receiver answered {}", status.as_u16()),
            retry_after: retry.and_then(|v| retry_after(v, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        // The vector published with the Standard Webhooks reference libraries.
        let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_must_be_whsec_base64() {
        assert!(SigningKey::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
        assert!(SigningKey::parse("whsec_").is_err());
    }

    #[test]
    fn waits_follow_the_schedule_with_jitter_and_retry_after() {
        let s = [Duration::from_secs(10), Duration::from_secs(60)];
        assert_eq!(next_wait(&s, 1, None, 0.0), Some(Duration::from_secs(10)));
        assert_eq!(next_wait(&s, 1, None, 0.5), Some(Duration::from_secs(11)));
        assert_eq!(next_wait(&s, 2, None, 0.0), Some(Duration::from_secs(60)));
        // Retry-After wins when it asks for longer, never when shorter.
        let ra = Some(Duration::from_secs(300));
        assert_eq!(next_wait(&s, 1, ra, 0.0), Some(Duration::from_secs(300)));
        let short = Some(Duration::from_secs(1));
        assert_eq!(next_wait(&s, 1, short, 0.0), Some(Duration::from_secs(10)));
        // Used up: the job is dead.
        assert_eq!(next_wait(&s, 3, None, 0.0), None);
    }

    #[test]
    fn answers_are_classified() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            classify(StatusCode::NO_CONTENT, None, now),
            Attempt::Delivered
        );
        assert_eq!(classify(StatusCode::GONE, None, now), Attempt::Gone);
        let ra = HeaderValue::from_static("120");
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE, Some(&ra), now),
            Attempt::Failed {
                reason: "the receiver answered 503".to_owned(),
                retry_after: Some(Duration::from_secs(120)),
            }
        );
        let date =
            HeaderValue::from_str(&httpdate::fmt_http_date(now + Duration::from_secs(30))).unwrap();
        assert_eq!(retry_after(&date, now), Some(Duration::from_secs(30)));
    }
}
