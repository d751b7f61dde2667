//! The config as the operator writes it, and the checked [`Policy`] built from it.

use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use weir_filter::serde_json::{self, Value};

/// The most retries a request can get: weir makes at most 10 attempts per request.
pub const MAX_RETRIES_LIMIT: u32 = 9;

/// `retriable_methods` when the config leaves it out: the idempotent methods of RFC 9110.
pub const IDEMPOTENT_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// The config, key for key as in the crate docs. Each value stays raw JSON here so that
/// an error, a wrong type included, can name its key: [`Policy::from_config`] checks and
/// converts everything. Unknown keys are refused by serde.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Retries after the first attempt: an integer.
    pub max_retries: Option<Value>,
    /// The conditions that make an outcome retriable: a list of names.
    pub retry_on: Option<Value>,
    /// The statuses `retriable-status-codes` retries: a list of integers.
    pub retriable_status_codes: Option<Value>,
    /// The methods retried after the request was sent: a list of names.
    pub retriable_methods: Option<Value>,
    /// The backoff's base interval: a duration string.
    pub base_interval: Option<Value>,
    /// The backoff's cap: a duration string.
    pub max_interval: Option<Value>,
    /// How long one try may wait for the response head: a duration string.
    pub per_try_timeout: Option<Value>,
    /// Concurrent retries as a percentage of active requests: a number.
    pub budget_percent: Option<Value>,
    /// Concurrent retries always allowed, whatever the percentage gives: an integer.
    pub min_retry_concurrency: Option<Value>,
}

/// The value of `key` as a `T`, or `None` if absent; a wrong type is an error naming `key`.
fn field<T: DeserializeOwned>(key: &str, value: Option<Value>) -> Result<Option<T>, String> {
    value
        .map(|v| serde_json::from_value(v).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

/// One `retry_on` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// `5xx`: any 5xx response, or no response at all.
    FiveXx,
    /// `gateway-error`: 502, 503, 504, or no response at all.
    GatewayError,
    /// `connect-failure`: the connection could not be made (or weir's own connection limit
    /// was full); the request was never sent.
    ConnectFailure,
    /// `reset`: the request was sent but no response head came back.
    Reset,
    /// `retriable-4xx`: 409 Conflict.
    Retriable4xx,
    /// `retriable-status-codes`: a status in `retriable_status_codes`.
    RetriableStatusCodes,
}

impl Condition {
    const ALL: [(&'static str, Condition); 6] = [
        ("5xx", Condition::FiveXx),
        ("gateway-error", Condition::GatewayError),
        ("connect-failure", Condition::ConnectFailure),
        ("reset", Condition::Reset),
        ("retriable-4xx", Condition::Retriable4xx),
        ("retriable-status-codes", Condition::RetriableStatusCodes),
    ];

    fn parse(s: &str) -> Result<Condition, String> {
        Condition::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, c)| *c)
            .ok_or_else(|| {
                let names: Vec<&str> = Condition::ALL.iter().map(|(n, _)| *n).collect();
                format!(
                    "retry_on: unknown condition {s:?} (expected one of {})",
                    names.join(", ")
                )
            })
    }
}

/// The checked config: what the filter decides with.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Retries after the first attempt, at most [`MAX_RETRIES_LIMIT`].
    pub max_retries: u32,
    /// At least one condition, no duplicates.
    pub retry_on: Vec<Condition>,
    /// Statuses for [`Condition::RetriableStatusCodes`].
    pub retriable_status_codes: Vec<u16>,
    /// Upper-case method names.
    pub retriable_methods: Vec<String>,
    /// At least 1 ms.
    pub base_interval: Duration,
    /// At least `base_interval`.
    pub max_interval: Duration,
    /// At least 1 ms, if set.
    pub per_try_timeout: Option<Duration>,
    /// 0 to 100.
    pub budget_percent: f64,
    /// Concurrent retries always allowed.
    pub min_retry_concurrency: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::from_config(Config::default()).expect("the defaults are valid")
    }
}

impl Policy {
    /// Checks `config` and fills in the defaults. Every error starts with the key it is
    /// about.
    pub fn from_config(config: Config) -> Result<Policy, String> {
        let max_retries: u32 = field("max_retries", config.max_retries)?.unwrap_or(1);
        if max_retries > MAX_RETRIES_LIMIT {
            return Err(format!(
                "max_retries: {max_retries} is more than {MAX_RETRIES_LIMIT} (weir makes at most {} attempts per request)",
                MAX_RETRIES_LIMIT + 1
            ));
        }

        let names: Vec<String> =
            field("retry_on", config.retry_on)?.unwrap_or_else(|| vec!["5xx".to_owned()]);
        if names.is_empty() {
            return Err("retry_on: must name at least one condition".into());
        }
        let mut retry_on = Vec::new();
        for name in &names {
            let c = Condition::parse(name)?;
            if retry_on.contains(&c) {
                return Err(format!("retry_on: {name:?} is listed twice"));
            }
            retry_on.push(c);
        }

        let retriable_status_codes: Vec<u16> =
            field("retriable_status_codes", config.retriable_status_codes)?.unwrap_or_default();
        let wants_codes = retry_on.contains(&Condition::RetriableStatusCodes);
        if wants_codes && retriable_status_codes.is_empty() {
            return Err(
                "retriable_status_codes: must list at least one status when retry_on includes \"retriable-status-codes\"".into(),
            );
        }
        if !wants_codes && !retriable_status_codes.is_empty() {
            return Err(
                "retriable_status_codes: has no effect unless retry_on includes \"retriable-status-codes\"".into(),
            );
        }
        if let Some(bad) = retriable_status_codes
            .iter()
            .find(|s| !(100..=599).contains(*s))
        {
            return Err(format!(
                "retriable_status_codes: {bad} is not an HTTP status (100 to 599)"
            ));
        }

        let retriable_methods =
            match field::<Vec<String>>("retriable_methods", config.retriable_methods)? {
                None => IDEMPOTENT_METHODS.iter().map(|m| (*m).to_owned()).collect(),
                Some(methods) => {
                    let mut out: Vec<String> = Vec::new();
                    for m in methods {
                        if m.is_empty() || !m.bytes().all(is_token_char) {
                            return Err(format!("retriable_methods: {m:?} is not a method name"));
                        }
                        let m = m.to_ascii_uppercase();
                        if !out.contains(&m) {
                            out.push(m);
                        }
                    }
                    out
                }
            };

        let base_interval = duration(
            "base_interval",
            config.base_interval,
            Duration::from_millis(25),
        )?;
        // Envoy's default: ten times the base interval.
        let max_interval = duration("max_interval", config.max_interval, base_interval * 10)?;
        if max_interval < base_interval {
            return Err(format!(
                "max_interval: {} ms is less than base_interval ({} ms)",
                max_interval.as_millis(),
                base_interval.as_millis()
            ));
        }
        let per_try_timeout = match config.per_try_timeout {
            None => None,
            v => Some(duration("per_try_timeout", v, Duration::ZERO)?),
        };

        let budget_percent: f64 = field("budget_percent", config.budget_percent)?.unwrap_or(20.0);
        if !(0.0..=100.0).contains(&budget_percent) {
            return Err(format!(
                "budget_percent: {budget_percent} is not between 0 and 100"
            ));
        }
        let min_retry_concurrency: u32 =
            field("min_retry_concurrency", config.min_retry_concurrency)?.unwrap_or(3);

        Ok(Policy {
            max_retries,
            retry_on,
            retriable_status_codes,
            retriable_methods,
            base_interval,
            max_interval,
            per_try_timeout,
            budget_percent,
            min_retry_concurrency,
        })
    }
}

/// `text` as a duration of at least 1 ms (the unit retry delays are counted in), or
/// `default` if absent.
fn duration(key: &str, value: Option<Value>, default: Duration) -> Result<Duration, String> {
    let Some(text) = field::<String>(key, value)? else {
        return Ok(default);
    };
    let text = text.as_str();
    let d = parse_duration(text).ok_or_else(|| {
        format!(
            "{key}: invalid duration {text:?}: expected a number and a unit, like \"250ms\", \"2s\", \"1m\" or \"1h\""
        )
    })?;
    if d < Duration::from_millis(1) {
        return Err(format!("{key}: {text:?} is less than 1ms"));
    }
    if d.as_millis() > u128::from(u32::MAX) {
        return Err(format!("{key}: {text:?} is too long"));
    }
    Ok(d)
}

/// `"250ms"`, `"2s"`, `"1.5m"`, `"1h"`: the same forms as weir's own durations.
pub fn parse_duration(text: &str) -> Option<Duration> {
    weir_filter::units::parse_duration(text).ok()
}

/// A `tchar` of RFC 9110, the characters of a method name.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Result<Policy, String> {
        let config: Config = weir_filter::parse_config("retry", json)?;
        Policy::from_config(config)
    }

    #[test]
    fn defaults_follow_envoy() {
        let p = policy("{}").unwrap();
        assert_eq!(p.max_retries, 1);
        assert_eq!(p.retry_on, [Condition::FiveXx]);
        assert!(p.retriable_status_codes.is_empty());
        assert_eq!(p.retriable_methods, IDEMPOTENT_METHODS);
        assert_eq!(p.base_interval, Duration::from_millis(25));
        assert_eq!(p.max_interval, Duration::from_millis(250));
        assert_eq!(p.per_try_timeout, None);
        assert_eq!(p.budget_percent, 20.0);
        assert_eq!(p.min_retry_concurrency, 3);
        assert_eq!(Policy::default(), p);
    }

    #[test]
    fn parses_every_key() {
        let p = policy(
            r#"{"max_retries": 3, "retry_on": ["gateway-error", "retriable-status-codes", "reset"],
                "retriable_status_codes": [429, 418], "retriable_methods": ["get", "POST"],
                "base_interval": "10ms", "max_interval": "1s", "per_try_timeout": "1.5s",
                "budget_percent": 50, "min_retry_concurrency": 1}"#,
        )
        .unwrap();
        assert_eq!(p.max_retries, 3);
        assert_eq!(
            p.retry_on,
            [
                Condition::GatewayError,
                Condition::RetriableStatusCodes,
                Condition::Reset
            ]
        );
        assert_eq!(p.retriable_status_codes, [429, 418]);
        assert_eq!(p.retriable_methods, ["GET", "POST"]);
        assert_eq!(p.base_interval, Duration::from_millis(10));
        assert_eq!(p.max_interval, Duration::from_secs(1));
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(p.budget_percent, 50.0);
        assert_eq!(p.min_retry_concurrency, 1);
    }

    #[test]
    fn max_interval_defaults_to_ten_times_base() {
        let p = policy(r#"{"base_interval": "100ms"}"#).unwrap();
        assert_eq!(p.max_interval, Duration::from_secs(1));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"max_retries": 10}"#, "max_retries: 10 is more than 9"),
            (
                r#"{"max_retries": -1}"#,
                "max_retries: invalid value: integer `-1`",
            ),
            (
                r#"{"max_retries": "2"}"#,
                "max_retries: invalid type: string",
            ),
            (r#"{"retry_on": "5xx"}"#, "retry_on: invalid type: string"),
            (
                r#"{"base_interval": 25}"#,
                "base_interval: invalid type: integer",
            ),
            (
                r#"{"budget_percent": "20%"}"#,
                "budget_percent: invalid type",
            ),
            (
                r#"{"min_retry_concurrency": 1.5}"#,
                "min_retry_concurrency: invalid type",
            ),
            (r#"{"retry_on": []}"#, "retry_on: must name at least one"),
            (
                r#"{"retry_on": ["5XX"]}"#,
                "retry_on: unknown condition \"5XX\"",
            ),
            (
                r#"{"retry_on": ["reset", "reset"]}"#,
                "retry_on: \"reset\" is listed twice",
            ),
            (
                r#"{"retry_on": ["retriable-status-codes"]}"#,
                "retriable_status_codes: must list at least one",
            ),
            (
                r#"{"retriable_status_codes": [429]}"#,
                "retriable_status_codes: has no effect",
            ),
            (
                r#"{"retry_on": ["retriable-status-codes"], "retriable_status_codes": [1000]}"#,
                "retriable_status_codes: 1000 is not an HTTP status",
            ),
            (
                r#"{"retriable_methods": ["GET IT"]}"#,
                "retriable_methods: \"GET IT\" is not a method name",
            ),
            (
                r#"{"base_interval": "25"}"#,
                "base_interval: invalid duration \"25\"",
            ),
            (
                r#"{"base_interval": "0ms"}"#,
                "base_interval: \"0ms\" is less than 1ms",
            ),
            (
                r#"{"max_interval": "fast"}"#,
                "max_interval: invalid duration",
            ),
            (
                r#"{"base_interval": "1s", "max_interval": "500ms"}"#,
                "max_interval: 500 ms is less than base_interval (1000 ms)",
            ),
            (
                r#"{"per_try_timeout": "2 weeks"}"#,
                "per_try_timeout: invalid duration",
            ),
            (
                r#"{"per_try_timeout": "2000h"}"#,
                "per_try_timeout: \"2000h\" is too long",
            ),
            (
                r#"{"budget_percent": 120}"#,
                "budget_percent: 120 is not between 0 and 100",
            ),
            (
                r#"{"budget_percent": -1}"#,
                "budget_percent: -1 is not between 0 and 100",
            ),
            (r#"{"retries": 2}"#, "retry: unknown field `retries`"),
        ];
        for (json, want) in cases {
            let err = policy(json).unwrap_err();
            assert!(err.contains(want), "{json}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5w"), None);
    }
}
