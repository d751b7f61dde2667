//! Whether and when to retry one outcome: plain Rust, with the time, the time left and the
//! random number passed in, so every rule is tested natively.

use std::time::{Duration, SystemTime};

use weir_filter::{Outcome, UpstreamError};

use crate::config::{Condition, Policy};

/// The facts about the try that just ended that the decision needs.
#[derive(Debug, Clone)]
pub struct Try<'a> {
    /// The request method, upper case.
    pub method: &'a str,
    /// The request carries an `Idempotency-Key`.
    pub idempotency_key: bool,
    /// Retries already made for this request (0 after the first attempt).
    pub retries_done: u32,
    /// Time left before the route's deadline.
    pub remaining: Duration,
    /// The wall-clock time now, for `Retry-After` dates.
    pub now: SystemTime,
}

/// What to do with an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Retry after this delay (subject to the retry budget).
    Retry(Duration),
    /// Pass the outcome on as it is.
    Final(Why),
}

/// Why an outcome is passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No `retry_on` condition matches: a success, or a failure not configured for retry.
    NotRetriable,
    /// The request was sent and its method is not in `retriable_methods`, and it carries
    /// no `Idempotency-Key`.
    NotSafe,
    /// `max_retries` retries were already made.
    Exhausted,
    /// The response's `Retry-After` asks for longer than the route has left.
    RetryAfterTooLong,
    /// The backoff delay would not end before the route's deadline.
    NoTimeLeft,
}

impl Why {
    /// A label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NotRetriable => "not_retriable",
            Why::NotSafe => "not_safe",
            Why::Exhausted => "exhausted",
            Why::RetryAfterTooLong => "retry_after_too_long",
            Why::NoTimeLeft => "no_time_left",
        }
    }
}

/// Decides what to do with `outcome`. `random` is a uniformly random number that picks
/// the backoff delay.
pub fn decide(policy: &Policy, outcome: &Outcome, t: &Try<'_>, random: u64) -> Verdict {
    if !policy.retry_on.iter().any(|c| matches(policy, *c, outcome)) {
        return Verdict::Final(Why::NotRetriable);
    }
    if !never_sent(outcome)
        && !t.idempotency_key
        && !policy.retriable_methods.iter().any(|m| m == t.method)
    {
        return Verdict::Final(Why::NotSafe);
    }
    if t.retries_done >= policy.max_retries {
        return Verdict::Final(Why::Exhausted);
    }
    if let Some(wait) = retry_after(outcome, t.now) {
        return if wait < t.remaining {
            Verdict::Retry(wait)
        } else {
            Verdict::Final(Why::RetryAfterTooLong)
        };
    }
    let delay = backoff(policy, t.retries_done + 1, random);
    if delay < t.remaining {
        Verdict::Retry(delay)
    } else {
        Verdict::Final(Why::NoTimeLeft)
    }
}

/// Whether `outcome` meets condition `c`.
fn matches(policy: &Policy, c: Condition, outcome: &Outcome) -> bool {
    match (c, outcome) {
        (Condition::FiveXx, Outcome::Response(r)) => (500..=599).contains(&r.status()),
        (Condition::GatewayError, Outcome::Response(r)) => matches!(r.status(), 502..=504),
        // No response at all: weir answers the client 502, 503 or 504 itself.
        (Condition::FiveXx | Condition::GatewayError, Outcome::Error(_)) => true,
        (Condition::ConnectFailure, Outcome::Error(e)) => matches!(
            e,
            UpstreamError::ConnectFailed
                | UpstreamError::ConnectTimeout
                | UpstreamError::Overloaded
        ),
        (Condition::Reset, Outcome::Error(e)) => matches!(
            e,
            UpstreamError::Reset | UpstreamError::Timeout | UpstreamError::Protocol
        ),
        (Condition::Retriable4xx, Outcome::Response(r)) => r.status() == 409,
        (Condition::RetriableStatusCodes, Outcome::Response(r)) => {
            policy.retriable_status_codes.contains(&r.status())
        }
        _ => false,
    }
}

/// The request never left weir, so sending it again cannot repeat a side effect: the
/// connection (or its TLS handshake) failed, or weir's own connection limit was full.
pub fn never_sent(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Error(
            UpstreamError::ConnectFailed
                | UpstreamError::ConnectTimeout
                | UpstreamError::Overloaded
                | UpstreamError::Tls
        )
    )
}

/// The full-jitter delay before retry `n` (1 for the first retry): uniform in
/// [0, (2^n − 1) · base), the bound capped at `max_interval`, in whole milliseconds.
pub fn backoff(policy: &Policy, n: u32, random: u64) -> Duration {
    let base = policy.base_interval.as_millis() as u64;
    let max = policy.max_interval.as_millis() as u64;
    let factor = 1u64
        .checked_shl(n.min(63))
        .unwrap_or(u64::MAX)
        .saturating_sub(1);
    let bound = base.saturating_mul(factor).min(max);
    if bound == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(random % bound)
}

/// The wait a 429 or 503 asks for in `Retry-After`: delay-seconds, or an HTTP-date (a
/// date in the past means no wait). `None` for other outcomes, or an absent or invalid
/// header.
pub fn retry_after(outcome: &Outcome, now: SystemTime) -> Option<Duration> {
    let r = outcome.response()?;
    if r.status() != 429 && r.status() != 503 {
        return None;
    }
    let value = r.header_str("retry-after")?;
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A number too large for u64 seconds is "very long": longer than any route.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use weir_filter::Response;

    use crate::config::Config;

    fn policy(json: &str) -> Policy {
        let config: Config = weir_filter::parse_config("retry", json).unwrap();
        Policy::from_config(config).unwrap()
    }

    fn status(s: u16) -> Outcome {
        Outcome::Response(Response::new(s))
    }

    fn error(e: UpstreamError) -> Outcome {
        Outcome::Error(e)
    }

    const ALL_ERRORS: [UpstreamError; 7] = [
        UpstreamError::ConnectFailed,
        UpstreamError::ConnectTimeout,
        UpstreamError::Timeout,
        UpstreamError::Reset,
        UpstreamError::Tls,
        UpstreamError::Protocol,
        UpstreamError::Overloaded,
    ];

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn get() -> Try<'static> {
        Try {
            method: "GET",
            idempotency_key: false,
            retries_done: 0,
            remaining: Duration::from_secs(30),
            now: now(),
        }
    }

    fn retries(p: &Policy, outcome: &Outcome) -> bool {
        matches!(decide(p, outcome, &get(), 7), Verdict::Retry(_))
    }

    #[test]
    fn five_xx_is_any_5xx_or_no_response() {
        let p = policy("{}");
        for s in [500, 501, 502, 503, 504, 599] {
            assert!(retries(&p, &status(s)), "{s}");
        }
        for s in [200, 204, 304, 400, 404, 409, 429, 499] {
            assert!(!retries(&p, &status(s)), "{s}");
        }
        for e in ALL_ERRORS {
            assert!(retries(&p, &error(e)), "{e:?}");
        }
    }

    #[test]
    fn gateway_error_is_502_503_504_or_no_response() {
        let p = policy(r#"{"retry_on": ["gateway-error"]}"#);
        for s in [502, 503, 504] {
            assert!(retries(&p, &status(s)), "{s}");
        }
        for s in [500, 501, 505, 200, 409] {
            assert!(!retries(&p, &status(s)), "{s}");
        }
        for e in ALL_ERRORS {
            assert!(retries(&p, &error(e)), "{e:?}");
        }
    }

    #[test]
    fn connect_failure_is_only_a_connection_that_was_never_made() {
        let p = policy(r#"{"retry_on": ["connect-failure"]}"#);
        for e in ALL_ERRORS {
            let want = matches!(
                e,
                UpstreamError::ConnectFailed
                    | UpstreamError::ConnectTimeout
                    | UpstreamError::Overloaded
            );
            assert_eq!(retries(&p, &error(e)), want, "{e:?}");
        }
        assert!(!retries(&p, &status(503)));
    }

    #[test]
    fn reset_is_no_response_after_sending() {
        let p = policy(r#"{"retry_on": ["reset"]}"#);
        for e in ALL_ERRORS {
            let want = matches!(
                e,
                UpstreamError::Reset | UpstreamError::Timeout | UpstreamError::Protocol
            );
            assert_eq!(retries(&p, &error(e)), want, "{e:?}");
        }
        assert!(!retries(&p, &status(502)));
    }

    #[test]
    fn retriable_4xx_is_409_only() {
        let p = policy(r#"{"retry_on": ["retriable-4xx"]}"#);
        assert!(retries(&p, &status(409)));
        for s in [400, 404, 408, 429, 500, 503] {
            assert!(!retries(&p, &status(s)), "{s}");
        }
        assert!(!retries(&p, &error(UpstreamError::Reset)));
    }

    #[test]
    fn retriable_status_codes_are_the_listed_ones() {
        let p = policy(
            r#"{"retry_on": ["retriable-status-codes"], "retriable_status_codes": [418, 429]}"#,
        );
        assert!(retries(&p, &status(418)));
        assert!(retries(&p, &status(429)));
        assert!(!retries(&p, &status(503)));
        assert!(!retries(&p, &error(UpstreamError::ConnectFailed)));
    }

    #[test]
    fn methods_decide_once_the_request_was_sent() {
        let p = policy("{}");
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            let t = Try { method: m, ..get() };
            assert!(
                matches!(decide(&p, &status(503), &t, 0), Verdict::Retry(_)),
                "{m}"
            );
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            let t = Try { method: m, ..get() };
            assert_eq!(
                decide(&p, &status(503), &t, 0),
                Verdict::Final(Why::NotSafe),
                "{m}"
            );
            for e in [UpstreamError::Reset, UpstreamError::Timeout] {
                assert_eq!(
                    decide(&p, &error(e), &t, 0),
                    Verdict::Final(Why::NotSafe),
                    "{m} {e:?}"
                );
            }
            // Never sent: always safe.
            for e in [
                UpstreamError::ConnectFailed,
                UpstreamError::ConnectTimeout,
                UpstreamError::Overloaded,
                UpstreamError::Tls,
            ] {
                assert!(
                    matches!(decide(&p, &error(e), &t, 0), Verdict::Retry(_)),
                    "{m} {e:?}"
                );
            }
            // An Idempotency-Key makes any method safe.
            let keyed = Try {
                idempotency_key: true,
                ..t.clone()
            };
            assert!(matches!(
                decide(&p, &status(503), &keyed, 0),
                Verdict::Retry(_)
            ));
        }
        let p = policy(r#"{"retriable_methods": ["post"]}"#);
        let post = Try {
            method: "POST",
            ..get()
        };
        assert!(matches!(
            decide(&p, &status(503), &post, 0),
            Verdict::Retry(_)
        ));
        assert_eq!(
            decide(&p, &status(503), &get(), 0),
            Verdict::Final(Why::NotSafe)
        );
    }

    #[test]
    fn max_retries_counts_retries() {
        let p = policy(r#"{"max_retries": 2}"#);
        for done in 0..2 {
            let t = Try {
                retries_done: done,
                ..get()
            };
            assert!(matches!(decide(&p, &status(503), &t, 0), Verdict::Retry(_)));
        }
        let t = Try {
            retries_done: 2,
            ..get()
        };
        assert_eq!(
            decide(&p, &status(503), &t, 0),
            Verdict::Final(Why::Exhausted)
        );
        let p = policy(r#"{"max_retries": 0}"#);
        assert_eq!(
            decide(&p, &status(503), &get(), 0),
            Verdict::Final(Why::Exhausted)
        );
    }

    #[test]
    fn backoff_is_full_jitter_exponential_capped() {
        let p = policy("{}");
        // Bounds (2^n − 1) · 25 ms: 25, 75, 175, then the 250 ms cap.
        for (n, bound) in [(1, 25), (2, 75), (3, 175), (4, 250), (5, 250), (40, 250)] {
            assert_eq!(backoff(&p, n, 0), Duration::ZERO, "n={n}");
            assert_eq!(
                backoff(&p, n, bound - 1),
                Duration::from_millis(bound - 1),
                "n={n}"
            );
            assert_eq!(backoff(&p, n, bound), Duration::ZERO, "n={n}: wraps");
            assert_eq!(
                backoff(&p, n, u64::MAX),
                Duration::from_millis(u64::MAX % bound),
                "n={n}"
            );
        }
        // The delay is uniform: every value in [0, bound) is reachable.
        let mut seen = [false; 75];
        for r in 0..75 {
            seen[backoff(&p, 2, r).as_millis() as usize] = true;
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(
            backoff(&p, u32::MAX, 12345),
            Duration::from_millis(12345 % 250)
        );
    }

    #[test]
    fn backoff_that_passes_the_deadline_returns_the_response() {
        let p = policy(r#"{"base_interval": "100ms"}"#);
        let t = Try {
            remaining: Duration::from_millis(50),
            ..get()
        };
        assert_eq!(
            decide(&p, &status(503), &t, 60),
            Verdict::Final(Why::NoTimeLeft)
        );
        assert_eq!(
            decide(&p, &status(503), &t, 49),
            Verdict::Retry(Duration::from_millis(49))
        );
        let none_left = Try {
            remaining: Duration::ZERO,
            ..get()
        };
        assert_eq!(
            decide(&p, &status(503), &none_left, 0),
            Verdict::Final(Why::NoTimeLeft)
        );
    }

    fn with_retry_after(s: u16, value: &str) -> Outcome {
        Outcome::Response(Response::new(s).with_header("Retry-After", value))
    }

    #[test]
    fn retry_after_replaces_the_backoff_on_429_and_503() {
        let p = policy(
            r#"{"retry_on": ["5xx", "retriable-status-codes"], "retriable_status_codes": [429]}"#,
        );
        assert_eq!(
            decide(&p, &with_retry_after(503, "2"), &get(), 3),
            Verdict::Retry(Duration::from_secs(2))
        );
        assert_eq!(
            decide(&p, &with_retry_after(429, " 7 "), &get(), 3),
            Verdict::Retry(Duration::from_secs(7))
        );
        let date = httpdate::fmt_http_date(now() + Duration::from_secs(12));
        assert_eq!(
            decide(&p, &with_retry_after(503, &date), &get(), 3),
            Verdict::Retry(Duration::from_secs(12))
        );
        let past = httpdate::fmt_http_date(now() - Duration::from_secs(12));
        assert_eq!(
            decide(&p, &with_retry_after(503, &past), &get(), 3),
            Verdict::Retry(Duration::ZERO)
        );
        // Not 429/503, or not a valid value: the backoff.
        assert_eq!(
            decide(&p, &with_retry_after(502, "2"), &get(), 3),
            Verdict::Retry(Duration::from_millis(3))
        );
        for bad in ["soon", "-1", "1.5", ""] {
            assert_eq!(
                decide(&p, &with_retry_after(503, bad), &get(), 3),
                Verdict::Retry(Duration::from_millis(3)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn retry_after_longer_than_the_route_returns_the_response() {
        let p = policy("{}");
        let t = Try {
            remaining: Duration::from_secs(5),
            ..get()
        };
        assert_eq!(
            decide(&p, &with_retry_after(503, "5"), &t, 0),
            Verdict::Final(Why::RetryAfterTooLong)
        );
        assert_eq!(
            decide(&p, &with_retry_after(503, "99999999999999999999999"), &t, 0),
            Verdict::Final(Why::RetryAfterTooLong)
        );
        assert_eq!(
            decide(&p, &with_retry_after(503, "4"), &t, 0),
            Verdict::Retry(Duration::from_secs(4))
        );
    }

    #[test]
    fn retry_after_does_not_make_an_outcome_retriable() {
        // 429 is not in retry_on's default 5xx.
        let p = policy("{}");
        assert_eq!(
            decide(&p, &with_retry_after(429, "1"), &get(), 0),
            Verdict::Final(Why::NotRetriable)
        );
    }
}
