//! The config as the operator writes it, and the checked [`Settings`] the breaker runs on.

use serde::Deserialize;

use crate::key::KeySource;

/// The most calls a count-based window keeps: the whole window is rewritten in `state`
/// on every completed call.
pub const MAX_COUNT_WINDOW: u32 = 1000;

/// The most one-second buckets a time-based window keeps (ten minutes).
pub const MAX_TIME_WINDOW: u32 = 600;

/// The filter's config, as documented in the crate docs. Durations are strings such as
/// `"250ms"` or `"60s"`, checked by [`Config::validate`] so that errors name the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `"count"` (the last `window_size` calls) or `"time"` (the last `window_size` seconds).
    pub window_type: String,
    /// Calls (count window) or one-second buckets (time window).
    pub window_size: u32,
    /// Calls that must be in the window before the rates are looked at.
    pub minimum_calls: u32,
    /// Percentage of failed calls at or above which the breaker opens.
    pub failure_rate_threshold: f64,
    /// Percentage of slow calls at or above which the breaker opens.
    pub slow_call_rate_threshold: f64,
    /// A call that takes longer than this is slow.
    pub slow_call_duration: String,
    /// How long the breaker stays open before it lets probes through.
    pub wait_in_open: String,
    /// How many probes the half-open breaker lets through.
    pub permitted_calls_in_half_open: u32,
    /// Statuses that count as failures; `None` means every 5xx.
    pub failure_statuses: Option<Vec<u16>>,
    /// What names the breaker; `None` means the upstream origin.
    pub key: Option<KeyConfig>,
    /// A breaker's record is dropped from `state` this long after its last update.
    pub idle_ttl: String,
    /// When the state store fails: `"allow"` the call through, or `"reject"` it (503).
    pub on_state_error: String,
}

/// `key = { header = "x-tenant" }` or `key = { regex = "…" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// Take the key from this request header.
    pub header: Option<String>,
    /// Take the key from this regex's match over upstream + path and query.
    pub regex: Option<String>,
}

impl Default for Config {
    /// resilience4j's defaults.
    fn default() -> Self {
        Config {
            window_type: "count".to_owned(),
            window_size: 100,
            minimum_calls: 100,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: "60s".to_owned(),
            wait_in_open: "60s".to_owned(),
            permitted_calls_in_half_open: 10,
            failure_statuses: None,
            key: None,
            idle_ttl: "1h".to_owned(),
            on_state_error: "allow".to_owned(),
        }
    }
}

/// The sliding window, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last N calls.
    Count(u32),
    /// The calls of the last N one-second buckets.
    Time(u32),
}

/// Which calls are failures besides upstream errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureStatuses {
    /// 500 to 599.
    Any5xx,
    /// Exactly these.
    List(Vec<u16>),
}

impl FailureStatuses {
    /// Whether a response with `status` is a failed call.
    pub fn is_failure(&self, status: u16) -> bool {
        match self {
            FailureStatuses::Any5xx => (500..600).contains(&status),
            FailureStatuses::List(list) => list.contains(&status),
        }
    }
}

/// The checked config the state machine runs on. Times are in milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The sliding window.
    pub window: Window,
    /// Calls needed before the rates count (already capped at a count window's size).
    pub minimum_calls: u32,
    /// Failure rate in percent that opens the breaker.
    pub failure_rate_threshold: f64,
    /// Slow-call rate in percent that opens the breaker.
    pub slow_call_rate_threshold: f64,
    /// A call taking longer than this many milliseconds is slow.
    pub slow_call_ms: u64,
    /// Milliseconds in open before half-open.
    pub wait_in_open_ms: u64,
    /// Probes in half-open.
    pub permitted_in_half_open: u32,
    /// Which statuses are failures.
    pub failure_statuses: FailureStatuses,
    /// Milliseconds a record lives after its last update (see [`Settings::record_ttl_ms`]).
    pub idle_ttl_ms: u64,
    /// `on_state_error = "reject"`: a call the store cannot check gets 503 instead of
    /// going through.
    pub reject_on_state_error: bool,
}

impl Settings {
    /// The TTL written with every record: long enough that an open breaker outlives its
    /// wait and a time window its buckets, even with no traffic in between.
    pub fn record_ttl_ms(&self) -> u64 {
        let window_ms = match self.window {
            Window::Count(_) => 0,
            Window::Time(secs) => u64::from(secs) * 1000,
        };
        self.idle_ttl_ms
            .max(window_ms)
            .saturating_add(self.wait_in_open_ms)
    }
}

impl Config {
    /// Checks every key; an error names the key and the problem.
    pub fn validate(self) -> Result<(Settings, KeySource), String> {
        let window = match self.window_type.as_str() {
            "count" => {
                check_range("window_size", self.window_size, 1, MAX_COUNT_WINDOW)?;
                Window::Count(self.window_size)
            }
            "time" => {
                check_range("window_size", self.window_size, 1, MAX_TIME_WINDOW)?;
                Window::Time(self.window_size)
            }
            other => {
                return Err(format!(
                    "window_type: expected \"count\" or \"time\", got {other:?}"
                ));
            }
        };
        if self.minimum_calls == 0 {
            return Err("minimum_calls: must be at least 1".to_owned());
        }
        // As resilience4j: a count window can never hold more calls than its size.
        let minimum_calls = match window {
            Window::Count(size) => self.minimum_calls.min(size),
            Window::Time(_) => self.minimum_calls,
        };
        check_percent("failure_rate_threshold", self.failure_rate_threshold)?;
        check_percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        let slow_call_ms = duration("slow_call_duration", &self.slow_call_duration)?;
        let wait_in_open_ms = duration("wait_in_open", &self.wait_in_open)?;
        let idle_ttl_ms = duration("idle_ttl", &self.idle_ttl)?;
        if idle_ttl_ms < 1000 {
            return Err(format!(
                "idle_ttl: must be at least 1s, got {:?}",
                self.idle_ttl
            ));
        }
        check_range(
            "permitted_calls_in_half_open",
            self.permitted_calls_in_half_open,
            1,
            MAX_COUNT_WINDOW,
        )?;
        let failure_statuses = match self.failure_statuses {
            None => FailureStatuses::Any5xx,
            Some(list) => {
                if let Some(bad) = list.iter().find(|s| !(100..=999).contains(*s)) {
                    return Err(format!(
                        "failure_statuses: {bad} is not an HTTP status (100 to 999)"
                    ));
                }
                FailureStatuses::List(list)
            }
        };
        let key = KeySource::from_config(self.key)?;
        let reject_on_state_error = match self.on_state_error.as_str() {
            "allow" => false,
            "reject" => true,
            other => {
                return Err(format!(
                    "on_state_error: expected \"allow\" or \"reject\", got {other:?}"
                ));
            }
        };
        Ok((
            Settings {
                window,
                minimum_calls,
                failure_rate_threshold: self.failure_rate_threshold,
                slow_call_rate_threshold: self.slow_call_rate_threshold,
                slow_call_ms,
                wait_in_open_ms,
                permitted_in_half_open: self.permitted_calls_in_half_open,
                failure_statuses,
                idle_ttl_ms,
                reject_on_state_error,
            },
            key,
        ))
    }
}

fn check_range(key: &str, value: u32, min: u32, max: u32) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key}: must be from {min} to {max}, got {value}"))
    }
}

fn check_percent(key: &str, value: f64) -> Result<(), String> {
    // A threshold of 0 would open on the first recorded call, success or not.
    if value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(format!(
            "{key}: must be a percentage above 0 and at most 100, got {value}"
        ))
    }
}

/// Parses a duration (see [`weir_filter::units::parse_duration`]) into milliseconds; the
/// value must be at least 1 ms. `key` names the config key in the error.
pub fn duration(key: &str, text: &str) -> Result<u64, String> {
    let d = weir_filter::units::parse_duration(text).map_err(|e| format!("{key}: {e}"))?;
    let ms = u64::try_from(d.as_millis()).map_err(|_| format!("{key}: {text:?} is too long"))?;
    if ms == 0 {
        return Err(format!("{key}: must be at least 1ms, got {text:?}"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(json: &str) -> Result<Settings, String> {
        weir_filter::parse_config::<Config>("breaker", json)?
            .validate()
            .map(|(s, _)| s)
    }

    #[test]
    fn defaults_are_resilience4j_defaults() {
        let s = settings("{}").unwrap();
        assert_eq!(
            s,
            Settings {
                window: Window::Count(100),
                minimum_calls: 100,
                failure_rate_threshold: 50.0,
                slow_call_rate_threshold: 100.0,
                slow_call_ms: 60_000,
                wait_in_open_ms: 60_000,
                permitted_in_half_open: 10,
                failure_statuses: FailureStatuses::Any5xx,
                idle_ttl_ms: 3_600_000,
                reject_on_state_error: false,
            }
        );
        assert_eq!(s.record_ttl_ms(), 3_660_000);
    }

    #[test]
    fn durations() {
        assert_eq!(duration("k", "250ms"), Ok(250));
        assert_eq!(duration("k", "2s"), Ok(2000));
        assert_eq!(duration("k", "1m"), Ok(60_000));
        assert_eq!(duration("k", "1h"), Ok(3_600_000));
        for bad in ["", "5", "s", "2 s", "-1s", "2w", "99999999999999999999h"] {
            let err = duration("wait_in_open", bad).unwrap_err();
            assert!(
                err.starts_with("wait_in_open: invalid duration"),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            duration("wait_in_open", "0s"),
            Err("wait_in_open: must be at least 1ms, got \"0s\"".into())
        );
    }

    #[test]
    fn minimum_calls_is_capped_by_a_count_window_only() {
        let s = settings(r#"{"window_size": 5}"#).unwrap();
        assert_eq!(s.minimum_calls, 5);
        let s = settings(r#"{"window_type": "time", "window_size": 5}"#).unwrap();
        assert_eq!((s.window, s.minimum_calls), (Window::Time(5), 100));
        assert_eq!(s.record_ttl_ms(), 3_660_000);
        let s =
            settings(r#"{"window_type": "time", "window_size": 600, "idle_ttl": "1s"}"#).unwrap();
        assert_eq!(s.record_ttl_ms(), 600_000 + 60_000);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                r#"{"window_type": "sliding"}"#,
                r#"window_type: expected "count" or "time", got "sliding""#,
            ),
            (
                r#"{"window_size": 0}"#,
                "window_size: must be from 1 to 1000, got 0",
            ),
            (
                r#"{"window_type": "time", "window_size": 601}"#,
                "window_size: must be from 1 to 600, got 601",
            ),
            (
                r#"{"minimum_calls": 0}"#,
                "minimum_calls: must be at least 1",
            ),
            (
                r#"{"failure_rate_threshold": 0}"#,
                "failure_rate_threshold: must be a percentage above 0 and at most 100, got 0",
            ),
            (
                r#"{"slow_call_rate_threshold": 100.5}"#,
                "slow_call_rate_threshold: must be a percentage above 0 and at most 100, got 100.5",
            ),
            (
                r#"{"permitted_calls_in_half_open": 0}"#,
                "permitted_calls_in_half_open: must be from 1 to 1000, got 0",
            ),
            (
                r#"{"failure_statuses": [500, 42]}"#,
                "failure_statuses: 42 is not an HTTP status (100 to 999)",
            ),
            (
                r#"{"idle_ttl": "500ms"}"#,
                r#"idle_ttl: must be at least 1s, got "500ms""#,
            ),
        ];
        for (json, want) in cases {
            assert_eq!(settings(json), Err(want.to_owned()), "{json}");
        }
        for key in ["slow_call_duration", "wait_in_open", "idle_ttl"] {
            let err = settings(&format!(r#"{{"{key}": "soon"}}"#)).unwrap_err();
            assert!(
                err.starts_with(&format!("{key}: invalid duration \"soon\"")),
                "{err}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = weir_filter::parse_config::<Config>("breaker", r#"{"window": 5}"#).unwrap_err();
        assert!(err.starts_with("breaker: unknown field `window`"), "{err}");
        let err = weir_filter::parse_config::<Config>("breaker", r#"{"key": {"cookie": "a"}}"#)
            .unwrap_err();
        assert!(err.contains("unknown field `cookie`"), "{err}");
    }

    #[test]
    fn failure_statuses() {
        let s = settings("{}").unwrap();
        assert!(s.failure_statuses.is_failure(500));
        assert!(s.failure_statuses.is_failure(599));
        assert!(!s.failure_statuses.is_failure(499));
        assert!(!s.failure_statuses.is_failure(600));
        let s = settings(r#"{"failure_statuses": [429, 503]}"#).unwrap();
        assert!(s.failure_statuses.is_failure(429));
        assert!(s.failure_statuses.is_failure(503));
        assert!(!s.failure_statuses.is_failure(500));
    }
}
