//! The filter's config: durations and sizes as strings, checked while parsing.

use std::time::Duration;

use serde::Deserialize;
use weir_filter::serde_json::Value;

/// The filter's config as written, as documented in the crate docs. Values stay JSON
/// here so that [`Config::validate`] can name the key in every error, type errors
/// included (serde's own messages do not say which field they are about).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Freshness for storable responses that carry no freshness information.
    pub default_ttl: Option<Value>,
    /// The largest entry (headers and body, as stored) the cache keeps.
    pub max_entry_bytes: Option<Value>,
    /// The most bytes this cache keeps in the state store, over all entries.
    pub max_total_bytes: Option<Value>,
    /// How long past its freshness an entry with a validator is kept for revalidation.
    pub revalidation_window: Option<Value>,
}

/// The checked config the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `default_ttl`; `None` when off.
    pub default_ttl: Option<Duration>,
    /// `max_entry_bytes`.
    pub max_entry_bytes: u64,
    /// `max_total_bytes`.
    pub max_total_bytes: u64,
    /// `revalidation_window`.
    pub revalidation_window: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            default_ttl: None,
            max_entry_bytes: 1 << 20,
            max_total_bytes: 64 << 20,
            revalidation_window: Duration::from_secs(3600),
        }
    }
}

/// Prefixes an error with the key it is about.
fn key(k: &'static str) -> impl Fn(String) -> String {
    move |e| format!("{k}: {e}")
}

impl Config {
    /// Parses every value and checks them against each other; an error names the key.
    pub fn validate(self) -> Result<Settings, String> {
        let d = Settings::default();
        let default_ttl = match self.default_ttl {
            None => None,
            Some(v) => {
                let ttl = duration_value(&v).map_err(key("default_ttl"))?;
                if ttl.is_zero() {
                    return Err(
                        "default_ttl: must be more than 0 (leave it out to turn it off)".into(),
                    );
                }
                Some(ttl)
            }
        };
        let size = |v: Option<Value>, k: &'static str, default: u64| match v {
            None => Ok(default),
            Some(v) => size_value(&v).map_err(key(k)),
        };
        let max_entry_bytes = size(self.max_entry_bytes, "max_entry_bytes", d.max_entry_bytes)?;
        let max_total_bytes = size(self.max_total_bytes, "max_total_bytes", d.max_total_bytes)?;
        let revalidation_window = match self.revalidation_window {
            None => d.revalidation_window,
            Some(v) => duration_value(&v).map_err(key("revalidation_window"))?,
        };
        if max_entry_bytes == 0 {
            return Err("max_entry_bytes: must be more than 0".into());
        }
        if max_entry_bytes > max_total_bytes {
            return Err(format!(
                "max_entry_bytes: {max_entry_bytes} bytes is more than max_total_bytes \
                 ({max_total_bytes} bytes)"
            ));
        }
        Ok(Settings {
            default_ttl,
            max_entry_bytes,
            max_total_bytes,
            revalidation_window,
        })
    }
}

/// Parses a duration such as `"30s"`; see [`weir_filter::units::parse_duration`].
pub fn duration(text: &str) -> Result<Duration, String> {
    weir_filter::units::parse_duration(text)
}

/// A duration value: a string such as `"30s"`.
fn duration_value(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(text) => duration(text),
        other => Err(format!(
            "expected a duration string such as \"30s\", got {other}"
        )),
    }
}

/// A size value: a number of bytes, or a string such as `"1MiB"`.
fn size_value(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("expected a whole number of bytes, got {n}")),
        Value::String(text) => size(text),
        other => Err(format!(
            "expected a size such as \"1MiB\" or a number of bytes, got {other}"
        )),
    }
}

/// Parses a size such as `"1MiB"`; see [`weir_filter::units::parse_size`].
pub fn size(text: &str) -> Result<u64, String> {
    weir_filter::units::parse_size(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        weir_filter::parse_config::<Config>("cache", json)?.validate()
    }

    #[test]
    fn defaults() {
        assert_eq!(parse("{}").unwrap(), Settings::default());
        let d = Settings::default();
        assert_eq!(d.default_ttl, None);
        assert_eq!(d.max_entry_bytes, 1 << 20);
        assert_eq!(d.max_total_bytes, 64 << 20);
        assert_eq!(d.revalidation_window, Duration::from_secs(3600));
    }

    #[test]
    fn durations_and_sizes() {
        let c = parse(
            r#"{"default_ttl": "90s", "max_entry_bytes": "512KiB", "max_total_bytes": 10000000,
                "revalidation_window": "2h"}"#,
        )
        .unwrap();
        assert_eq!(c.default_ttl, Some(Duration::from_secs(90)));
        assert_eq!(c.max_entry_bytes, 512 * 1024);
        assert_eq!(c.max_total_bytes, 10_000_000);
        assert_eq!(c.revalidation_window, Duration::from_secs(7200));
        for (text, ms) in [("250ms", 250), ("5m", 300_000), ("1d", 86_400_000)] {
            assert_eq!(duration(text), Ok(Duration::from_millis(ms)));
        }
        assert_eq!(size("2MB"), Ok(2_000_000));
        assert_eq!(size("3GiB"), Ok(3 << 30));
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(r#"{"default_ttl": "ten minutes"}"#).unwrap_err();
        assert!(
            e.starts_with("default_ttl: invalid duration \"ten minutes\""),
            "{e}"
        );
        let e = parse(r#"{"default_ttl": "0s"}"#).unwrap_err();
        assert!(e.starts_with("default_ttl: must be more than 0"), "{e}");
        let e = parse(r#"{"revalidation_window": "5 weeks"}"#).unwrap_err();
        assert!(
            e.starts_with("revalidation_window: invalid duration"),
            "{e}"
        );
        let e = parse(r#"{"max_total_bytes": "1 lightyear"}"#).unwrap_err();
        assert!(
            e.starts_with("max_total_bytes: invalid size \"1 lightyear\""),
            "{e}"
        );
        let e = parse(r#"{"max_entry_bytes": "2MiB", "max_total_bytes": "1MiB"}"#).unwrap_err();
        assert!(
            e.starts_with("max_entry_bytes: 2097152 bytes is more than"),
            "{e}"
        );
        let e = parse(r#"{"max_entry_bytes": 0}"#).unwrap_err();
        assert!(e.starts_with("max_entry_bytes: must be more than 0"), "{e}");
        let e = parse(r#"{"revalidation_window": 60}"#).unwrap_err();
        assert!(
            e.starts_with("revalidation_window: expected a duration string"),
            "{e}"
        );
        let e = parse(r#"{"max_entry_bytes": -1}"#).unwrap_err();
        assert!(
            e.starts_with("max_entry_bytes: expected a whole number"),
            "{e}"
        );
        let e = parse(r#"{"ttl": "1s"}"#).unwrap_err();
        assert!(e.contains("unknown field `ttl`"), "{e}");
    }
}
