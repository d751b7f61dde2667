//! The config as the operator writes it, and its validation into [`Settings`].
//!
//! Each section is parsed on its own so that every error names the section it is about,
//! and no error ever repeats a value: the values here are credentials, and init errors
//! end up on the operator's terminal and in weir's log.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use weir_filter::serde_json::{self, Map, Value};

use crate::encode::{base64, percent_encode};
use crate::oauth2::{ClientAuth, OAuth2};

/// The sections, each parsed on its own (see [`Settings::from_json`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Sections {
    #[serde(default)]
    bearer: Option<Value>,
    #[serde(default)]
    basic: Option<Value>,
    #[serde(default)]
    api_key: Option<Value>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default)]
    oauth2: Option<Value>,
}

/// `bearer = { token = <secret> }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bearer {
    token: String,
}

/// `basic = { username, password = <secret> }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Basic {
    username: String,
    password: String,
}

/// `api_key = { header = "x-api-key", value = <secret> }` or `{ query = "key", value }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKey {
    #[serde(default)]
    header: Option<String>,
    #[serde(default)]
    query: Option<String>,
    value: String,
}

/// `oauth2 = { upstream, client_id, client_secret = <secret>, … }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuth2Config {
    upstream: String,
    #[serde(default)]
    token_path: Option<String>,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    client_auth: ClientAuth,
    #[serde(default)]
    refresh_before: Option<String>,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    reissue_upstream: Option<String>,
}

/// The config after validation: what the filter runs on.
///
/// No `Debug`: it holds credentials.
pub struct Settings {
    /// Headers set on every request (lowercase names), in a fixed order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The API key query parameter, already percent-encoded: (name, value).
    pub query: Option<(String, String)>,
    /// The OAuth2 client credentials flow, if configured.
    pub oauth2: Option<OAuth2>,
}

/// The default `token_path`.
const DEFAULT_TOKEN_PATH: &str = "/oauth/token";
/// The default `refresh_before`.
const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(30);
/// The default `timeout` of a token request.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// weir's cap on an outbound call.
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

impl Settings {
    /// Parses and checks the JSON config weir passed to `init`. Errors name the section
    /// and key, never a value.
    pub fn from_json(config: Value) -> Result<Settings, String> {
        let sections: Sections = from_value("", config)?;
        // Who sets each header, to refuse two sections setting the same one.
        let mut owners: Vec<(String, &'static str)> = Vec::new();
        let mut headers = Vec::new();
        let mut set = |name: String, value: Vec<u8>, owner: &'static str| {
            if let Some((_, first)) = owners.iter().find(|(n, _)| *n == name) {
                return Err(format!(
                    "header `{name}` is set by both `{first}` and `{owner}`; keep one"
                ));
            }
            owners.push((name.clone(), owner));
            headers.push((name, value));
            Ok(())
        };

        if let Some(v) = sections.bearer {
            let b: Bearer = from_value("bearer", v)?;
            check_value("bearer.token", &b.token)?;
            set(
                "authorization".into(),
                format!("Bearer {}", b.token).into_bytes(),
                "bearer",
            )?;
        }
        if let Some(v) = sections.basic {
            let b: Basic = from_value("basic", v)?;
            // RFC 7617 §2: a user-id containing a colon cannot be sent.
            if b.username.contains(':') {
                return Err("basic.username must not contain `:` (RFC 7617)".into());
            }
            check_value("basic.username", &b.username)?;
            check_value("basic.password", &b.password)?;
            let credentials = base64(format!("{}:{}", b.username, b.password).as_bytes());
            set(
                "authorization".into(),
                format!("Basic {credentials}").into_bytes(),
                "basic",
            )?;
        }
        let mut query = None;
        if let Some(v) = sections.api_key {
            let k: ApiKey = from_value("api_key", v)?;
            check_value("api_key.value", &k.value)?;
            match (k.header, k.query) {
                (Some(h), None) => {
                    let name = header_name("api_key.header", &h)?;
                    set(name, k.value.into_bytes(), "api_key")?;
                }
                (None, Some(q)) => {
                    if q.is_empty() {
                        return Err("api_key.query must not be empty".into());
                    }
                    query = Some((percent_encode(&q), percent_encode(&k.value)));
                }
                _ => return Err("api_key: set exactly one of `header` or `query`".into()),
            }
        }
        if let Some(v) = sections.headers {
            let map: BTreeMap<String, String> = from_value("headers", v)?;
            for (name, value) in map {
                let key = format!("headers.{name}");
                let name = header_name(&key, &name)?;
                check_value(&key, &value)?;
                set(name, value.into_bytes(), "headers")?;
            }
        }
        let oauth2 = match sections.oauth2 {
            Some(v) => {
                // The token goes in `Authorization` on each request, so claim it now.
                set("authorization".into(), Vec::new(), "oauth2")?;
                headers.retain(|(n, _)| n != "authorization");
                Some(oauth2(from_value("oauth2", v)?)?)
            }
            None => None,
        };
        if headers.is_empty() && query.is_none() && oauth2.is_none() {
            return Err(
                "nothing to add: configure at least one of `bearer`, `basic`, `api_key`, \
                 `headers` or `oauth2`"
                    .into(),
            );
        }
        Ok(Settings {
            headers,
            query,
            oauth2,
        })
    }
}

fn oauth2(c: OAuth2Config) -> Result<OAuth2, String> {
    if c.upstream.is_empty() {
        return Err(
            "oauth2.upstream must name an upstream listed in this filter's `outbound`".into(),
        );
    }
    let token_path = c
        .token_path
        .unwrap_or_else(|| DEFAULT_TOKEN_PATH.to_owned());
    if !token_path.starts_with('/') || token_path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(format!(
            "oauth2.token_path must be a path starting with `/`, not {token_path:?}"
        ));
    }
    if c.client_id.is_empty() {
        return Err("oauth2.client_id must not be empty".into());
    }
    if c.client_secret.is_empty() {
        return Err("oauth2.client_secret must not be empty".into());
    }
    let refresh_before = match &c.refresh_before {
        Some(text) => parse_duration("oauth2.refresh_before", text)?,
        None => DEFAULT_REFRESH_BEFORE,
    };
    let timeout = match &c.timeout {
        Some(text) => parse_duration("oauth2.timeout", text)?,
        None => DEFAULT_TIMEOUT,
    };
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(format!(
            "oauth2.timeout must be from 1ms to 30s, not {:?}",
            c.timeout.as_deref().unwrap_or_default()
        ));
    }
    if c.reissue_upstream.as_deref() == Some("") {
        return Err("oauth2.reissue_upstream must name an upstream (or be left out)".into());
    }
    Ok(OAuth2::new(
        c.upstream,
        token_path,
        c.client_id,
        c.client_secret,
        c.scope,
        c.audience,
        c.client_auth,
        refresh_before,
        timeout,
        c.reissue_upstream,
    ))
}

/// Deserialises one section; an error is prefixed with the section and scrubbed of values.
fn from_value<T: DeserializeOwned>(section: &str, value: Value) -> Result<T, String> {
    // A section written as a bare value (`bearer = "…"`) would be echoed by serde.
    if !section.is_empty() && !value.is_object() {
        return Err(format!("{section} must be a table"));
    }
    let value = if value.is_null() {
        Value::Object(Map::new())
    } else {
        value
    };
    serde_json::from_value(value).map_err(|e| {
        let message = scrub(&e.to_string());
        if section.is_empty() {
            message
        } else {
            format!("{section}: {message}")
        }
    })
}

/// Removes the quoted strings serde puts in "invalid type: string \"…\"" and "invalid
/// value" messages: such a string may be a credential.
pub fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find("string \"") {
        out.push_str(&rest[..i + "string".len()]);
        let quoted = &rest[i + "string \"".len()..];
        // Skip to the closing quote; serde escapes quotes inside with a backslash.
        let mut escaped = false;
        let mut end = quoted.len();
        for (j, c) in quoted.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = j + 1;
                    break;
                }
                _ => escaped = false,
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}

/// Checks that a configured value can go in a header, without repeating it.
fn check_value(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{key} must not be empty"));
    }
    // RFC 9110 §5.5: no control characters (tab aside), no leading or trailing space.
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "{key} contains a control character (a stray newline?), which a header cannot carry"
        ));
    }
    if value.starts_with([' ', '\t']) || value.ends_with([' ', '\t']) {
        return Err(format!("{key} has leading or trailing whitespace"));
    }
    Ok(())
}

/// Validates and lowercases a header name.
fn header_name(key: &str, name: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !valid {
        return Err(format!("{key}: invalid header name {name:?}"));
    }
    let lower = name.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "host" | "content-length" | "transfer-encoding" | "connection"
    ) {
        return Err(format!("{key}: weir sets `{lower}` itself"));
    }
    Ok(lower)
}

/// Parses `"250ms"`, `"2s"`, `"1m"` or `"1h"`: a whole number and a unit. `name` is the
/// config key, for the error.
pub fn parse_duration(name: &str, text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{name}: invalid duration {text:?} (use a whole number with ms, s, m or h, \
             e.g. \"250ms\" or \"30s\")"
        )
    };
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_filter::serde_json::json;

    fn settings(config: Value) -> Result<Settings, String> {
        Settings::from_json(config)
    }

    fn header<'a>(s: &'a Settings, name: &str) -> Option<&'a str> {
        s.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn static_modes() {
        let s = settings(json!({"bearer": {"token": "t0k"}})).unwrap();
        assert_eq!(header(&s, "authorization"), Some("Bearer t0k"));

        // RFC 7617 §2's example.
        let s =
            settings(json!({"basic": {"username": "Aladdin", "password": "open sesame"}})).unwrap();
        assert_eq!(
            header(&s, "authorization"),
            Some("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==")
        );

        let s = settings(json!({
            "api_key": {"header": "X-Api-Key", "value": "k1"},
            "headers": {"X-Tenant": "acme", "x-signature": "s1"},
        }))
        .unwrap();
        assert_eq!(
            s.headers,
            vec![
                ("x-api-key".to_owned(), b"k1".to_vec()),
                // `headers` in the order of its keys as written (sorted, byte-wise).
                ("x-tenant".to_owned(), b"acme".to_vec()),
                ("x-signature".to_owned(), b"s1".to_vec()),
            ]
        );
        assert!(s.query.is_none() && s.oauth2.is_none());

        let s = settings(json!({"api_key": {"query": "api key", "value": "a&b=c d"}})).unwrap();
        assert_eq!(
            s.query,
            Some(("api%20key".to_owned(), "a%26b%3Dc%20d".to_owned()))
        );
        assert!(s.headers.is_empty());
    }

    #[test]
    fn oauth2_defaults() {
        let s = settings(json!({"oauth2": {
            "upstream": "oauth", "client_id": "id", "client_secret": "sec"
        }}))
        .unwrap();
        assert!(
            s.headers.is_empty(),
            "oauth2 sets authorization per request"
        );
        let o = s.oauth2.unwrap();
        assert_eq!(o.token_path(), "/oauth/token");
        assert_eq!(o.refresh_before(), Duration::from_secs(30));
        assert_eq!(o.timeout(), Duration::from_secs(10));
        assert_eq!(o.client_auth(), ClientAuth::Basic);
        assert_eq!(o.reissue_upstream(), None);
    }

    #[test]
    fn errors_name_the_key_and_never_the_value() {
        let secret = "hunter2-SECRET";
        let cases = [
            (json!({}), "nothing to add"),
            (json!({"bearer": {}}), "bearer: missing field `token`"),
            (json!({"bearer": secret}), "bearer must be a table"),
            (json!({"bearer": {"token": 5}}), "bearer: invalid type"),
            (
                json!({"bearer": {"token": ""}}),
                "bearer.token must not be empty",
            ),
            (
                json!({"bearer": {"token": format!("{secret}\n")}}),
                "bearer.token contains a control character",
            ),
            (
                json!({"bearer": {"token": format!(" {secret}")}}),
                "bearer.token has leading or trailing whitespace",
            ),
            (
                json!({"bearer": {"token": {"env": "TOKEN"}}}),
                "bearer: invalid type: map, expected a string",
            ),
            (
                json!({"bearer": {"token": secret, "extra": 1}}),
                "bearer: unknown field `extra`",
            ),
            (
                json!({"basic": {"username": "a:b", "password": secret}}),
                "basic.username must not contain `:`",
            ),
            (
                json!({"api_key": {"value": secret}}),
                "api_key: set exactly one of `header` or `query`",
            ),
            (
                json!({"api_key": {"header": "x", "query": "y", "value": secret}}),
                "api_key: set exactly one",
            ),
            (
                json!({"api_key": {"header": "bad name", "value": secret}}),
                "api_key.header: invalid header name \"bad name\"",
            ),
            (
                json!({"api_key": {"header": "Host", "value": secret}}),
                "api_key.header: weir sets `host` itself",
            ),
            (
                json!({"headers": {"x-a": ["list"]}}),
                "headers: invalid type: sequence",
            ),
            (
                json!({"bearer": {"token": secret}, "basic": {"username": "u", "password": secret}}),
                "header `authorization` is set by both `bearer` and `basic`",
            ),
            (
                json!({"bearer": {"token": secret}, "headers": {"Authorization": secret}}),
                "header `authorization` is set by both `bearer` and `headers`",
            ),
            (
                json!({"bearer": {"token": secret},
                       "oauth2": {"upstream": "o", "client_id": "i", "client_secret": secret}}),
                "header `authorization` is set by both `bearer` and `oauth2`",
            ),
            (
                json!({"oauth2": {"upstream": "", "client_id": "i", "client_secret": secret}}),
                "oauth2.upstream must name an upstream",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "i", "client_secret": ""}}),
                "oauth2.client_secret must not be empty",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "", "client_secret": secret}}),
                "oauth2.client_id must not be empty",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "i", "client_secret": secret,
                                  "token_path": "token"}}),
                "oauth2.token_path must be a path starting with `/`",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "i", "client_secret": secret,
                                  "refresh_before": "soon"}}),
                "oauth2.refresh_before: invalid duration \"soon\"",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "i", "client_secret": secret,
                                  "timeout": "1m"}}),
                "oauth2.timeout must be from 1ms to 30s",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "i", "client_secret": secret,
                                  "client_auth": "jwt"}}),
                "oauth2: unknown variant `jwt`, expected `basic` or `body`",
            ),
            (
                json!({"oauth2": {"upstream": "o", "client_id": "i", "client_secret": secret,
                                  "reissue_upstream": ""}}),
                "oauth2.reissue_upstream must name an upstream",
            ),
            (json!({"token": secret}), "unknown field `token`"),
        ];
        for (config, want) in cases {
            let shown = config.to_string();
            let err = match settings(config) {
                Ok(_) => panic!("{shown}: accepted"),
                Err(e) => e,
            };
            assert!(err.contains(want), "{shown}: {err}");
            assert!(
                !err.contains("hunter2"),
                "{shown}: the error shows the secret: {err}"
            );
        }
    }

    #[test]
    fn scrub_removes_quoted_strings_only() {
        assert_eq!(
            scrub(r#"invalid type: string "s3cr\"et", expected u64"#),
            "invalid type: string, expected u64"
        );
        assert_eq!(
            scrub(r#"invalid value: string "a", expected x or string "b""#),
            "invalid value: string, expected x or string"
        );
        assert_eq!(scrub("missing field `token`"), "missing field `token`");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("x", "0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("x", "250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("x", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("x", "1h"), Ok(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "1.5s", "-1s", "3d", "99999999999999999999s"] {
            assert!(parse_duration("x", bad).is_err(), "{bad}");
        }
    }
}
