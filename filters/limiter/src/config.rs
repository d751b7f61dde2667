//! The config as the operator writes it, and its validation into [`Settings`].
//!
//! Durations and the key are parsed here rather than by serde so that every error names
//! the config key it is about (serde's `try_from` errors do not).

use std::time::Duration;

use serde::Deserialize;
use weir_filter::serde_json::Value;

use crate::bucket::{NS_PER_SEC, Policy, Queue};

/// The filter's config, as documented in the crate docs.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Tokens added per `per`.
    pub rate: u64,
    /// The refill period, e.g. `"1s"`; whole seconds. Default `"1s"`.
    #[serde(default)]
    pub per: Option<String>,
    /// The bucket's capacity. Default: `rate`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// What a bucket belongs to: `"route"`, `"client"` or `{ header = "NAME" }`.
    #[serde(default)]
    pub key: Option<Value>,
    /// What happens without a token: reject at once, or queue.
    #[serde(default)]
    pub mode: Mode,
    /// Queue mode: the longest a request waits for its token. Default `"1s"`.
    #[serde(default)]
    pub max_wait: Option<String>,
    /// Queue mode: the most requests waiting per key. Default 100.
    #[serde(default)]
    pub max_queue: Option<u64>,
    /// What a request gets when the state store fails: pass (`"allow"`) or 503.
    #[serde(default)]
    pub on_state_error: OnStateError,
}

/// What the filter does when the state store fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStateError {
    /// Fail open: the request passes, without `RateLimit` headers.
    #[default]
    Allow,
    /// Fail closed: 503 `state_unavailable`.
    Reject,
}

/// What the filter does with a request that finds the bucket empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer 429 at once.
    #[default]
    Reject,
    /// Reserve the next token and wait for it, within `max_wait` and `max_queue`.
    Queue,
}

/// What a bucket belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// One bucket for the whole route.
    Route,
    /// One bucket per client IP address (without the port).
    Client,
    /// One bucket per value of this request header (lowercase name); requests without
    /// it share one bucket.
    Header(String),
}

/// The config after validation: what the filter runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The bucket's numbers.
    pub policy: Policy,
    /// What a bucket belongs to.
    pub key: Key,
    /// Queue mode's bounds; `None` in reject mode.
    pub queue: Option<Queue>,
    /// `on_state_error`.
    pub on_state_error: OnStateError,
}

/// The default `per`, and the default `max_wait`.
const ONE_SECOND: Duration = Duration::from_secs(1);
/// The longest `per`.
const MAX_PER: Duration = Duration::from_secs(24 * 3600);
/// The longest `max_wait`: a wait is sent to the host in milliseconds, and no route
/// deadline is longer than this in practice.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The fastest rate: one token per microsecond. The token interval is kept in whole
/// nanoseconds, so this keeps its rounding error under 0.1 %.
const MIN_INTERVAL_NS: u64 = 1_000;
/// The longest an empty bucket may take to fill again.
const MAX_REFILL_NS: u128 = 365 * 24 * 3600 * NS_PER_SEC as u128;
/// The default `max_queue`.
const DEFAULT_MAX_QUEUE: u64 = 100;

impl Config {
    /// Checks every value and works out the bucket's numbers. Errors name the key.
    pub fn validate(self) -> Result<Settings, String> {
        if self.rate == 0 {
            return Err("rate must be at least 1".into());
        }
        let per = match &self.per {
            Some(text) => parse_duration("per", text)?,
            None => ONE_SECOND,
        };
        if per.subsec_nanos() != 0 || per < ONE_SECOND || per > MAX_PER {
            return Err(format!(
                "per must be a whole number of seconds from 1s to 24h (the RateLimit-Policy \
                 window is in whole seconds), not {:?}",
                self.per.as_deref().unwrap_or_default()
            ));
        }
        let per_ns = per.as_secs() * NS_PER_SEC;
        let interval = per_ns / self.rate;
        if interval < MIN_INTERVAL_NS {
            return Err(format!(
                "rate {} per {}s is faster than the limit of one token per microsecond",
                self.rate,
                per.as_secs()
            ));
        }
        let burst = self.burst.unwrap_or(self.rate);
        if burst == 0 {
            return Err("burst must be at least 1".into());
        }
        if u128::from(burst) * u128::from(interval) > MAX_REFILL_NS {
            return Err(format!(
                "burst {burst} would take more than a year to refill at this rate"
            ));
        }
        let key = match self.key {
            None => Key::Route,
            Some(v) => parse_key(v)?,
        };
        let queue = match self.mode {
            Mode::Reject => {
                if self.max_wait.is_some() {
                    return Err("max_wait applies only to mode = \"queue\"".into());
                }
                if self.max_queue.is_some() {
                    return Err("max_queue applies only to mode = \"queue\"".into());
                }
                None
            }
            Mode::Queue => {
                let max_wait = match &self.max_wait {
                    Some(text) => parse_duration("max_wait", text)?,
                    None => ONE_SECOND,
                };
                if max_wait < Duration::from_millis(1) || max_wait > MAX_WAIT {
                    return Err(format!(
                        "max_wait must be from 1ms to 1h, not {:?}",
                        self.max_wait.as_deref().unwrap_or_default()
                    ));
                }
                let max_queue = self.max_queue.unwrap_or(DEFAULT_MAX_QUEUE);
                if max_queue == 0 {
                    return Err("max_queue must be at least 1 (or use mode = \"reject\")".into());
                }
                Some(Queue {
                    max_wait: max_wait.as_nanos() as u64,
                    max_queue,
                })
            }
        };
        Ok(Settings {
            policy: Policy {
                interval,
                burst,
                quota: self.rate,
                window_secs: per.as_secs(),
            },
            key,
            queue,
            on_state_error: self.on_state_error,
        })
    }
}

/// Parses `"250ms"`, `"2s"`, `"1m"` or `"1h"`: a whole number and a unit. `name` is the
/// config key, for the error.
pub fn parse_duration(name: &str, text: &str) -> Result<Duration, String> {
    weir_filter::units::parse_duration(text).map_err(|e| format!("{name}: {e}"))
}

/// Parses the `key` value: `"route"`, `"client"` or `{ header = "NAME" }`.
fn parse_key(value: Value) -> Result<Key, String> {
    const EXPECTED: &str = "expected \"route\", \"client\" or { header = \"NAME\" }";
    match value {
        Value::String(s) if s == "route" => Ok(Key::Route),
        Value::String(s) if s == "client" => Ok(Key::Client),
        Value::Object(map) => {
            let mut entries = map.into_iter();
            match (entries.next(), entries.next()) {
                (Some((k, Value::String(name))), None) if k == "header" => {
                    let valid = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
                    if !valid {
                        return Err(format!("key: invalid header name {name:?}"));
                    }
                    Ok(Key::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!("key: {EXPECTED}")),
            }
        }
        other => Err(format!("key: {EXPECTED}, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_filter::parse_config;

    fn settings(json: &str) -> Result<Settings, String> {
        parse_config::<Config>("limiter", json)?.validate()
    }

    #[test]
    fn defaults() {
        let s = settings(r#"{"rate": 20}"#).unwrap();
        assert_eq!(
            s,
            Settings {
                policy: Policy {
                    interval: 50_000_000,
                    burst: 20,
                    quota: 20,
                    window_secs: 1
                },
                key: Key::Route,
                queue: None,
                on_state_error: OnStateError::Allow,
            }
        );
        let s = settings(r#"{"rate": 5, "mode": "queue"}"#).unwrap();
        assert_eq!(
            s.queue,
            Some(Queue {
                max_wait: 1_000_000_000,
                max_queue: 100
            })
        );
    }

    #[test]
    fn every_key() {
        let s = settings(
            r#"{"rate": 3, "per": "1m", "burst": 7, "key": {"header": "X-Api-Key"},
                "mode": "queue", "max_wait": "250ms", "max_queue": 4}"#,
        )
        .unwrap();
        assert_eq!(s.policy.interval, 20 * NS_PER_SEC);
        assert_eq!(s.policy.burst, 7);
        assert_eq!(s.policy.quota, 3);
        assert_eq!(s.policy.window_secs, 60);
        assert_eq!(s.key, Key::Header("x-api-key".into()));
        assert_eq!(
            s.queue,
            Some(Queue {
                max_wait: 250_000_000,
                max_queue: 4
            })
        );
        assert_eq!(
            settings(r#"{"rate": 1, "key": "client"}"#).unwrap().key,
            Key::Client
        );
        assert_eq!(
            settings(r#"{"rate": 1, "key": "route"}"#).unwrap().key,
            Key::Route
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("x", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("x", "2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("x", "1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("x", "1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "-1s", "2 s", "3w", "99999999999999999999s"] {
            let err = parse_duration("max_wait", bad).unwrap_err();
            assert!(
                err.starts_with("max_wait: invalid duration"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{}"#, "limiter: missing field `rate`"),
            (r#"{"rate": 0}"#, "rate must be at least 1"),
            (r#"{"rate": 1, "burst": 0}"#, "burst must be at least 1"),
            (
                r#"{"rate": 1, "per": "500ms"}"#,
                "per must be a whole number of seconds",
            ),
            (
                r#"{"rate": 1, "per": "1500ms"}"#,
                "per must be a whole number of seconds",
            ),
            (
                r#"{"rate": 1, "per": "25h"}"#,
                "per must be a whole number of seconds",
            ),
            (
                r#"{"rate": 1, "per": "soon"}"#,
                "per: invalid duration \"soon\"",
            ),
            (r#"{"rate": 2000000}"#, "rate 2000000 per 1s is faster than"),
            (
                r#"{"rate": 1, "per": "24h", "burst": 400}"#,
                "burst 400 would take more than a year",
            ),
            (r#"{"rate": 1, "key": "tenant"}"#, "key: expected"),
            (r#"{"rate": 1, "key": {"cookie": "a"}}"#, "key: expected"),
            (
                r#"{"rate": 1, "key": {"header": "a b"}}"#,
                "key: invalid header name",
            ),
            (
                r#"{"rate": 1, "key": {"header": ""}}"#,
                "key: invalid header name",
            ),
            (r#"{"rate": 1, "mode": "drop"}"#, "unknown variant `drop`"),
            (
                r#"{"rate": 1, "on_state_error": "maybe"}"#,
                "unknown variant `maybe`, expected `allow` or `reject`",
            ),
            (
                r#"{"rate": 1, "max_wait": "1s"}"#,
                "max_wait applies only to mode",
            ),
            (
                r#"{"rate": 1, "max_queue": 3}"#,
                "max_queue applies only to mode",
            ),
            (
                r#"{"rate": 1, "mode": "queue", "max_queue": 0}"#,
                "max_queue must be at least 1",
            ),
            (
                r#"{"rate": 1, "mode": "queue", "max_wait": "0ms"}"#,
                "max_wait must be from 1ms to 1h",
            ),
            (
                r#"{"rate": 1, "mode": "queue", "max_wait": "2h"}"#,
                "max_wait must be from 1ms to 1h",
            ),
            (r#"{"rate": 1, "rates": 2}"#, "unknown field `rates`"),
        ];
        for (json, want) in cases {
            let err = settings(json).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
    }
}
