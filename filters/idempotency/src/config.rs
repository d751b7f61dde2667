//! The filter's config: methods, tenant, durations and sizes, checked while parsing.

use std::time::Duration;

use serde::Deserialize;
use weir_filter::serde_json::{self, Value};

/// The methods the filter applies to when the config leaves `methods` out: the
/// non-idempotent methods the IETF draft names.
pub const DEFAULT_METHODS: [&str; 2] = ["POST", "PATCH"];

/// The filter's config as written, as documented in the crate docs. Values stay JSON
/// here so that [`Config::validate`] can name the key in every error, type errors
/// included.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The methods the filter adds keys to and deduplicates.
    pub methods: Option<Value>,
    /// Whether to add an `Idempotency-Key` to requests that have none.
    pub generate_key: Option<Value>,
    /// Where the tenant comes from: `{ header = "x-tenant" }`.
    pub tenant: Option<Value>,
    /// How long a stored response is replayed.
    pub expiry: Option<Value>,
    /// The largest response (headers and body) that is stored.
    pub max_response_bytes: Option<Value>,
    /// What a request gets when the state store fails: `"reject"` or `"allow"`.
    pub on_state_error: Option<Value>,
}

/// Where a request's tenant comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tenant {
    /// No tenant: every client of a route shares its keys.
    None,
    /// The value of this request header (lowercase name); requests without it form one
    /// tenant of their own.
    Header(String),
}

/// The checked config the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// `methods`, upper case.
    pub methods: Vec<String>,
    /// `generate_key`.
    pub generate_key: bool,
    /// `tenant`.
    pub tenant: Tenant,
    /// `expiry`.
    pub expiry: Duration,
    /// `max_response_bytes`.
    pub max_response_bytes: u64,
    /// `on_state_error = "allow"`: send requests unchecked while the store fails
    /// (the default, `"reject"`, answers 503).
    pub on_state_error_allow: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            methods: DEFAULT_METHODS.map(str::to_owned).to_vec(),
            generate_key: true,
            tenant: Tenant::None,
            expiry: Duration::from_secs(24 * 3600),
            max_response_bytes: 1 << 20,
            on_state_error_allow: false,
        }
    }
}

/// `tenant` as written: only a header is possible today.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantConfig {
    header: String,
}

/// Prefixes an error with the key it is about.
fn key(k: &'static str) -> impl Fn(String) -> String {
    move |e| format!("{k}: {e}")
}

impl Config {
    /// Parses every value; an error names the key.
    pub fn validate(self) -> Result<Settings, String> {
        let d = Settings::default();
        let methods = match self.methods {
            None => d.methods,
            Some(v) => methods(v).map_err(key("methods"))?,
        };
        let generate_key = match self.generate_key {
            None => d.generate_key,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                return Err(format!("generate_key: expected true or false, got {other}"));
            }
        };
        let tenant = match self.tenant {
            None => d.tenant,
            Some(v) => tenant(v).map_err(key("tenant"))?,
        };
        let expiry = match self.expiry {
            None => d.expiry,
            Some(v) => duration_value(&v).map_err(key("expiry"))?,
        };
        if expiry.is_zero() {
            return Err("expiry: must be more than 0".into());
        }
        let max_response_bytes = match self.max_response_bytes {
            None => d.max_response_bytes,
            Some(v) => size_value(&v).map_err(key("max_response_bytes"))?,
        };
        if max_response_bytes == 0 {
            return Err("max_response_bytes: must be more than 0".into());
        }
        let on_state_error_allow = match self.on_state_error {
            None => d.on_state_error_allow,
            Some(Value::String(s)) if s == "reject" => false,
            Some(Value::String(s)) if s == "allow" => true,
            Some(other) => {
                return Err(format!(
                    "on_state_error: expected \"reject\" or \"allow\", got {other}"
                ));
            }
        };
        Ok(Settings {
            methods,
            generate_key,
            tenant,
            expiry,
            max_response_bytes,
            on_state_error_allow,
        })
    }
}

fn methods(v: Value) -> Result<Vec<String>, String> {
    let names: Vec<String> = serde_json::from_value(v)
        .map_err(|_| "expected a list of method names, e.g. [\"POST\", \"PATCH\"]".to_owned())?;
    if names.is_empty() {
        return Err("must name at least one method".into());
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("{name:?} is not a method name"));
        }
        let upper = name.to_ascii_uppercase();
        if !out.contains(&upper) {
            out.push(upper);
        }
    }
    Ok(out)
}

fn tenant(v: Value) -> Result<Tenant, String> {
    let t: TenantConfig = serde_json::from_value(v).map_err(|e| {
        format!(
            "{e}; write {{ header = \"x-tenant\" }} (client-certificate tenants need a host \
             field that weir does not pass to filters yet)"
        )
    })?;
    let name = t.header.trim();
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("{:?} is not a header name", t.header));
    }
    Ok(Tenant::Header(name.to_ascii_lowercase()))
}

/// A `tchar` of RFC 9110, the characters of a method or header name.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a duration such as `"30s"`; see [`weir_filter::units::parse_duration`].
pub fn duration(text: &str) -> Result<Duration, String> {
    weir_filter::units::parse_duration(text)
}

fn duration_value(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(text) => duration(text),
        other => Err(format!(
            "expected a duration string such as \"24h\", got {other}"
        )),
    }
}

/// Parses a size such as `"1MiB"`; see [`weir_filter::units::parse_size`].
pub fn size(text: &str) -> Result<u64, String> {
    weir_filter::units::parse_size(text)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Settings, String> {
        weir_filter::parse_config::<Config>("idempotency", json)?.validate()
    }

    #[test]
    fn defaults() {
        let d = parse("{}").unwrap();
        assert_eq!(d, Settings::default());
        assert_eq!(d.methods, ["POST", "PATCH"]);
        assert!(d.generate_key);
        assert_eq!(d.tenant, Tenant::None);
        assert_eq!(d.expiry, Duration::from_secs(86_400));
        assert_eq!(d.max_response_bytes, 1 << 20);
    }

    #[test]
    fn every_key() {
        let s = parse(
            r#"{"methods": ["post", "PUT", "POST"], "generate_key": false,
                "tenant": {"header": "X-Tenant"}, "expiry": "1s",
                "max_response_bytes": "64KiB"}"#,
        )
        .unwrap();
        assert_eq!(s.methods, ["POST", "PUT"]);
        assert!(!s.generate_key);
        assert_eq!(s.tenant, Tenant::Header("x-tenant".into()));
        assert_eq!(s.expiry, Duration::from_secs(1));
        assert_eq!(s.max_response_bytes, 64 * 1024);
        assert_eq!(
            parse(r#"{"max_response_bytes": 5000}"#)
                .unwrap()
                .max_response_bytes,
            5000
        );
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(size("2MB"), Ok(2_000_000));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (r#"{"methods": "POST"}"#, "methods: expected a list"),
            (r#"{"methods": []}"#, "methods: must name at least one"),
            (
                r#"{"methods": ["PO ST"]}"#,
                "methods: \"PO ST\" is not a method",
            ),
            (
                r#"{"generate_key": "yes"}"#,
                "generate_key: expected true or false",
            ),
            (r#"{"tenant": "x-tenant"}"#, "tenant: invalid type"),
            (
                r#"{"tenant": {"header": "x tenant"}}"#,
                "tenant: \"x tenant\" is not a header",
            ),
            (
                r#"{"tenant": {"client_cert": true}}"#,
                "tenant: unknown field `client_cert`",
            ),
            (
                r#"{"expiry": "a day"}"#,
                "expiry: invalid duration \"a day\"",
            ),
            (r#"{"expiry": 60}"#, "expiry: expected a duration string"),
            (r#"{"expiry": "0s"}"#, "expiry: must be more than 0"),
            (
                r#"{"max_response_bytes": "1 lightyear"}"#,
                "max_response_bytes: invalid size",
            ),
            (
                r#"{"max_response_bytes": 0}"#,
                "max_response_bytes: must be more than 0",
            ),
            (
                r#"{"max_response_bytes": -1}"#,
                "max_response_bytes: expected a whole number",
            ),
            (r#"{"ttl": "1s"}"#, "idempotency: unknown field `ttl`"),
        ];
        for (json, want) in cases {
            let e = parse(json).unwrap_err();
            assert!(e.starts_with(want), "{json}: {e}");
        }
        let e = parse(r#"{"tenant": {"client_cert": true}}"#).unwrap_err();
        assert!(
            e.contains("client-certificate tenants need a host field"),
            "{e}"
        );
    }
}
