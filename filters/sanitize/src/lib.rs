//! `sanitize`: weir's standard filter for header hygiene on egress traffic.
//!
//! weir sits between your services and the outside world. Requests leaving through it
//! carry headers that only make sense inside (session cookies, tracing baggage, the
//! addresses of internal hops), and responses coming back carry headers your services
//! have no use for (third-party cookies, server banners). This filter removes both, and
//! caps the size of request headers so that one client cannot send an upstream a
//! megabyte of them.
//!
//! 1. `on_request` checks the limits on the request as it reaches the filter (hop-by-hop
//!    headers, `Host` and `Content-Length` are already gone; earlier filters' edits are
//!    applied). The first header that breaks a limit gets the client a `431 Request
//!    Header Fields Too Large` with a JSON body, and the request never goes upstream.
//! 2. Otherwise it removes every request header that matches `request.strip` (plus
//!    `request.strip_extra`), or, in allowlist mode (`request.allow` set), every header
//!    that `request.allow` does not name, except the few that HTTP needs.
//! 3. `on_response` removes every response header that matches `response.strip` (plus
//!    `response.strip_extra`), whether the upstream or a later filter made the response.
//!
//! It never looks at bodies and never changes a header's value.
//!
//! # Config reference
//!
//! Every key is optional; an empty config applies the defaults below. Unknown keys are
//! errors.
//!
//! | key | type | default | meaning |
//! | --- | --- | --- | --- |
//! | `request.strip` | list of patterns | see below | request headers never sent upstream; replaces the default list (`[]` strips nothing) |
//! | `request.strip_extra` | list of patterns | `[]` | more request headers to strip, on top of `request.strip` |
//! | `request.allow` | list of patterns | unset | allowlist mode: only these headers, and the always-kept ones, go upstream |
//! | `response.strip` | list of patterns | `["server", "set-cookie", "x-powered-by"]` | response headers never sent to the client; replaces the default list |
//! | `response.strip_extra` | list of patterns | `[]` | more response headers to strip, on top of `response.strip` |
//! | `limits.max_headers` | integer ≥ 1 | `100` | the most request headers (each value of a repeated name counts) |
//! | `limits.max_header_bytes` | integer ≥ 1 | `32768` (32 KiB) | the most bytes of all request header names and values together |
//! | `limits.max_value_bytes` | integer ≥ 1 | `8192` (8 KiB) | the most bytes in one request header value |
//!
//! `strip_extra` exists because weir merges a route's `config` into the filter's table by
//! table, and a list given at the route replaces the whole list: a route that adds a
//! name with `strip_extra` keeps the defaults without restating them.
//!
//! ## Patterns
//!
//! A pattern is a header name, matched case-insensitively, or a prefix ending in `*`:
//! `"x-internal-*"` matches `x-internal-user` and `X-Internal-Tenant`. `*` may appear
//! only at the end, after at least one character.
//!
//! ## The default request strip list
//!
//! `cookie`, `baggage`, `forwarded`, `x-real-ip`, `x-forwarded-*`, `x-internal-*`. Each is
//! there because it describes the inside of your network to whoever is outside:
//!
//! - `cookie`: your services' own session cookies; a third-party API has no business
//!   seeing them, and an egress call that needs credentials sends them as
//!   `authorization` or an API key.
//! - `baggage`: W3C Baggage is free-form key-value context (tenant, user id, feature
//!   flags) meant for your own services. weir still sends its own `traceparent`, so
//!   tracing across the hop keeps working.
//! - `forwarded`, `x-forwarded-*`, `x-real-ip`: the addresses, hosts and schemes of the
//!   hops a request took inside your network.
//! - `x-internal-*`: the conventional prefix for headers that must not leave.
//!
//! Left out on purpose: `authorization` and API-key headers (egress calls need them),
//! `user-agent` and `accept*` (content negotiation), `via` (some upstreams use it to
//! detect loops) and `tracestate` (it travels with `traceparent`). Add any of them with
//! `strip_extra`.
//!
//! ## Allowlist mode
//!
//! With `request.allow` set (even to `[]`), only headers it matches go upstream, plus
//! `content-type` and `content-encoding`, which the upstream needs to read the body.
//! `request.allow` cannot be combined with `request.strip` or `request.strip_extra`:
//! the allowlist already drops everything it does not name.
//!
//! ## The default response strip list
//!
//! `server` and `x-powered-by` name the upstream's software; your services do not need
//! them. `set-cookie` is stripped because this filter strips `cookie` from requests by
//! default: a cookie a third party sets could never go back to it, and an HTTP client
//! with a shared cookie jar would otherwise keep one service's third-party session for
//! every caller. Set `response.strip` without `set-cookie` if a route needs cookies.
//!
//! ## What a filter cannot strip
//!
//! weir itself sets `x-request-id` and `traceparent` on every upstream request, and
//! `x-request-id` on every response to the client, after the filters have run. Naming
//! them in a strip list would silently do nothing, so the config is rejected instead.
//! Hop-by-hop headers (`connection`, `te`, `transfer-encoding`, …), `host` and
//! `content-length` never reach a filter; weir handles them.
//!
//! ## Limits
//!
//! A header's size is the length of its name plus the length of its value, in bytes.
//! The limits apply to the request as the filter receives it, before stripping, so a
//! client cannot hide a thousand cookies behind the strip list. They do not count the
//! headers weir sets itself (`x-request-id`, `traceparent`): weir bounds those, and a
//! client that sent 100 headers must not be refused for one weir added. The check stops at the
//! first header that breaks a limit, and the client gets:
//!
//! ```text
//! HTTP/1.1 431 Request Header Fields Too Large
//! content-type: application/json
//!
//! {"error":"headers_too_large","message":"header \"x-big\" has a 9000-byte value; limits.max_value_bytes is 8192"}
//! ```
//!
//! The other two messages read `header "x-h-101" is header number 101;
//! limits.max_headers is 100` and `header "x-pad" brings the headers to 33000 bytes;
//! limits.max_header_bytes is 32768`. weir's listener has its own, coarser
//! `listen.max_header_bytes` for the whole request head; this filter sets a limit per
//! route.
//!
//! ## Config errors
//!
//! weir checks the config when it loads it (`weir check` and every reload) and rejects
//! it, naming the key, when a pattern is empty, has a character HTTP does not allow in a
//! name, or has `*` anywhere but at the end; when a strip list names `x-request-id` or
//! `traceparent`; when `request.allow` is combined with a request strip key; or when a
//! limit is 0.
//!
//! # Example
//!
//! ```toml
//! [filters.sanitize]                 # built in: no `wasm` path
//! config = { request = { strip_extra = ["x-debug-*"] }, limits = { max_headers = 50 } }
//!
//! [[routes]]
//! name = "partner"
//! match = { path_prefix = "/partner/" }
//! upstream = "partner"
//! # Only the API key and the content headers go to this partner; its cookies come back.
//! filters = [{ use = "sanitize", config = { request = { allow = ["x-api-key", "accept"] }, response = { strip = ["server"] } } }]
//! ```

// The SDK keeps all the unsafe ABI glue in its own crate; a filter needs none.
#![forbid(unsafe_code)]

use serde::Deserialize;
use weir_filter::{
    FieldsExt, Filter, Info, Outcome, Phases, Request, RequestAction, RequestEdit, RequestInfo,
    Response, ResponseAction, ResponseEdit, serde_json,
};

/// The request headers stripped when `request.strip` is not set.
pub const DEFAULT_REQUEST_STRIP: &[&str] = &[
    "cookie",
    "baggage",
    "forwarded",
    "x-real-ip",
    "x-forwarded-*",
    "x-internal-*",
];

/// The response headers stripped when `response.strip` is not set.
pub const DEFAULT_RESPONSE_STRIP: &[&str] = &["server", "set-cookie", "x-powered-by"];

/// The request headers that go upstream in allowlist mode whatever `request.allow` says:
/// without them the upstream cannot read the body.
pub const ALWAYS_ALLOWED: &[&str] = &["content-type", "content-encoding"];

/// Request headers weir sets after the filters, so stripping them would do nothing.
const HOST_SET_REQUEST: &[&str] = &["x-request-id", "traceparent"];

/// Response headers weir sets after the filters.
const HOST_SET_RESPONSE: &[&str] = &["x-request-id"];

/// The filter's config, as documented in the crate docs.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// What may go upstream.
    pub request: RequestConfig,
    /// What may go back to the client.
    pub response: ResponseConfig,
    /// Caps on the request headers.
    pub limits: Limits,
}

/// The `request` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestConfig {
    /// Replaces [`DEFAULT_REQUEST_STRIP`].
    pub strip: Option<Vec<String>>,
    /// Added to the strip list.
    pub strip_extra: Vec<String>,
    /// Allowlist mode, when set.
    pub allow: Option<Vec<String>>,
}

/// The `response` table.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResponseConfig {
    /// Replaces [`DEFAULT_RESPONSE_STRIP`].
    pub strip: Option<Vec<String>>,
    /// Added to the strip list.
    pub strip_extra: Vec<String>,
}

/// The `limits` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The most request headers.
    pub max_headers: u32,
    /// The most bytes of all request header names and values together.
    pub max_header_bytes: u64,
    /// The most bytes in one request header value.
    pub max_value_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 100,
            max_header_bytes: 32 << 10,
            max_value_bytes: 8 << 10,
        }
    }
}

/// The filter: the checked patterns and limits, built once at init.
#[derive(Debug)]
pub struct Sanitize {
    request: RequestRule,
    response: Patterns,
    limits: Limits,
}

/// What happens to request headers.
#[derive(Debug)]
enum RequestRule {
    /// Remove what matches.
    Strip(Patterns),
    /// Keep only what matches (and [`ALWAYS_ALLOWED`]).
    Allow(Patterns),
}

impl Filter for Sanitize {
    type Config = Config;
    const NAME: &'static str = "sanitize";

    fn new(config: Config) -> Result<Self, String> {
        let Config {
            request,
            response,
            limits,
        } = config;
        let request = match request.allow {
            Some(allow) => {
                if request.strip.is_some() || !request.strip_extra.is_empty() {
                    return Err(
                        "`request.allow` cannot be combined with `request.strip` or \
                         `request.strip_extra`: the allowlist already drops every header it \
                         does not name"
                            .into(),
                    );
                }
                let mut patterns = Patterns::parse("request.allow", &allow, &[])?;
                patterns.extend(Patterns::parse("", ALWAYS_ALLOWED, &[])?);
                RequestRule::Allow(patterns)
            }
            None => RequestRule::Strip(strip_list(
                "request",
                request.strip,
                &request.strip_extra,
                DEFAULT_REQUEST_STRIP,
                HOST_SET_REQUEST,
            )?),
        };
        let response = strip_list(
            "response",
            response.strip,
            &response.strip_extra,
            DEFAULT_RESPONSE_STRIP,
            HOST_SET_RESPONSE,
        )?;
        limits.validate()?;
        Ok(Sanitize {
            request,
            response,
            limits,
        })
    }

    fn info(&self) -> Info {
        Info {
            // The limits always apply to requests; with an empty response strip list
            // `on_response` could never remove anything.
            phases: if self.response.is_empty() {
                Phases::REQUEST
            } else {
                Phases::BOTH
            },
            ..Info::default()
        }
    }

    fn on_request(&mut self, _: &RequestInfo, req: &Request) -> RequestAction {
        // The limits need every header's size, so read them all at once, in place.
        let headers = req.header_block();
        if let Some(message) = self.limits.check(headers) {
            let body = serde_json::json!({ "error": "headers_too_large", "message": message });
            return RequestAction::Respond(Response::json(431, &body));
        }
        let drop = |name: &str| match &self.request {
            RequestRule::Strip(p) => p.matches(name),
            RequestRule::Allow(p) => !p.matches(name),
        };
        let mut edit = RequestEdit::new();
        edit.remove_headers = names_where(headers.fields().map(|(n, _)| n), drop);
        if edit.is_empty() {
            RequestAction::proceed()
        } else {
            RequestAction::proceed_with_edit(edit)
        }
    }

    fn on_response(
        &mut self,
        _: &RequestInfo,
        _: &Request,
        _: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        // With no response there are no headers; weir's own error replies carry none of
        // the upstream's.
        let Outcome::Response(resp) = outcome else {
            return ResponseAction::proceed();
        };
        let mut edit = ResponseEdit::new();
        // Only the names matter here: no header values are copied from weir.
        let names = resp.header_names();
        edit.remove_headers = names_where(names.iter().map(String::as_str), |n| {
            self.response.matches(n)
        });
        if edit.is_empty() {
            ResponseAction::proceed()
        } else {
            ResponseAction::proceed_with_edit(edit)
        }
    }
}

weir_filter::export_filter!(Sanitize);

/// The header names in `header_names` for which `drop` holds, each once, lowercase, in
/// order of first appearance. The host removes names, not entries, so a pattern becomes
/// the names it matched.
fn names_where<'a>(
    header_names: impl IntoIterator<Item = &'a str>,
    drop: impl Fn(&str) -> bool,
) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in header_names {
        if drop(name) && !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_ascii_lowercase());
        }
    }
    names
}

/// One side's strip list: `strip` (or `defaults`) plus `extra`, checked against the names
/// weir sets after the filters. `side` is `"request"` or `"response"`.
fn strip_list(
    side: &str,
    strip: Option<Vec<String>>,
    extra: &[String],
    defaults: &[&str],
    host_set: &[&str],
) -> Result<Patterns, String> {
    let mut patterns = match strip {
        Some(strip) => Patterns::parse(&format!("{side}.strip"), &strip, host_set)?,
        None => Patterns::parse("", defaults, &[])?,
    };
    patterns.extend(Patterns::parse(
        &format!("{side}.strip_extra"),
        extra,
        host_set,
    )?);
    Ok(patterns)
}

// === impl Limits ===

impl Limits {
    fn validate(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_headers", u64::from(self.max_headers)),
            ("max_header_bytes", self.max_header_bytes),
            ("max_value_bytes", self.max_value_bytes),
        ] {
            if value == 0 {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        Ok(())
    }

    /// Why `headers` break a limit, naming the limit and the first header that breaks
    /// it; `None` if they are within every limit.
    fn check(&self, headers: &(impl FieldsExt + ?Sized)) -> Option<String> {
        let mut total = 0u64;
        let counted = headers
            .fields()
            .filter(|(name, _)| !HOST_SET_REQUEST.contains(name));
        for (i, (name, value)) in counted.enumerate() {
            let value_len = value.len() as u64;
            if value_len > self.max_value_bytes {
                return Some(format!(
                    "header {name:?} has a {value_len}-byte value; limits.max_value_bytes is {}",
                    self.max_value_bytes
                ));
            }
            let number = i + 1;
            if number > self.max_headers as usize {
                return Some(format!(
                    "header {name:?} is header number {number}; limits.max_headers is {}",
                    self.max_headers
                ));
            }
            total += name.len() as u64 + value_len;
            if total > self.max_header_bytes {
                return Some(format!(
                    "header {name:?} brings the headers to {total} bytes; \
                     limits.max_header_bytes is {}",
                    self.max_header_bytes
                ));
            }
        }
        None
    }
}

// === impl Patterns ===

/// Header names and name prefixes, lowercase.
#[derive(Debug, Default, PartialEq, Eq)]
struct Patterns {
    exact: Vec<String>,
    prefixes: Vec<String>,
}

impl Patterns {
    /// Checks and lowercases `list`, the value of config key `key`. A name in `reserved`
    /// is an error: weir sets it after the filters, so stripping it would do nothing.
    fn parse<S: AsRef<str>>(key: &str, list: &[S], reserved: &[&str]) -> Result<Self, String> {
        let mut patterns = Patterns::default();
        for pattern in list {
            let pattern = pattern.as_ref();
            let (name, is_prefix) = match pattern.strip_suffix('*') {
                Some(prefix) => (prefix, true),
                None => (pattern, false),
            };
            if pattern.is_empty() {
                return Err(format!("{key}: a header name is empty"));
            }
            if is_prefix && name.is_empty() {
                return Err(format!(
                    "{key}: pattern \"*\" needs at least one character before the `*`"
                ));
            }
            if name.contains('*') {
                return Err(format!(
                    "{key}: pattern {pattern:?} has a `*` before its end; `*` may only end a \
                     pattern"
                ));
            }
            if let Some(c) = name.chars().find(|&c| !is_token_char(c)) {
                return Err(format!(
                    "{key}: header name {pattern:?} contains {c:?}, which HTTP does not allow \
                     in a name"
                ));
            }
            let name = name.to_ascii_lowercase();
            if !is_prefix && reserved.contains(&name.as_str()) {
                return Err(format!(
                    "{key}: {pattern:?} cannot be stripped: weir sets it after the filters"
                ));
            }
            let list = if is_prefix {
                &mut patterns.prefixes
            } else {
                &mut patterns.exact
            };
            if !list.contains(&name) {
                list.push(name);
            }
        }
        Ok(patterns)
    }

    /// Whether no name can match.
    fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }

    fn extend(&mut self, other: Patterns) {
        for name in other.exact {
            if !self.exact.contains(&name) {
                self.exact.push(name);
            }
        }
        for prefix in other.prefixes {
            if !self.prefixes.contains(&prefix) {
                self.prefixes.push(prefix);
            }
        }
    }

    /// Whether header `name` (any case) matches a name or a prefix.
    fn matches(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e.eq_ignore_ascii_case(name))
            || self.prefixes.iter().any(|p| {
                name.len() >= p.len()
                    && name.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            })
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_filter::{UpstreamError, build_filter};

    fn build(json: &str) -> Result<Sanitize, String> {
        build_filter::<Sanitize>(json)
    }

    fn info() -> RequestInfo {
        RequestInfo::new("r1")
            .with_route("api")
            .with_attempt(1)
            .with_remaining_ms(1000)
            .with_client_addr("127.0.0.1:5000")
    }

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn request(headers: &[(&str, &str)]) -> Request {
        request_with(fields(headers))
    }

    /// A `GET /` with these headers, in order.
    fn request_with(headers: Vec<(String, Vec<u8>)>) -> Request {
        headers.into_iter().fold(
            Request::new("GET", "/").with_upstream("https://api.example.com"),
            |req, (name, value)| req.with_header(name, value),
        )
    }

    /// The request header names `f` removes from a request with these headers.
    fn removed(f: &mut Sanitize, headers: &[(&str, &str)]) -> Vec<String> {
        match f.on_request(&info(), &request(headers)) {
            RequestAction::Continue((None, None)) => Vec::new(),
            RequestAction::Continue((Some(edit), None)) => {
                assert!(edit.set_headers.is_empty(), "{edit:?}");
                assert!(!edit.remove_headers.is_empty(), "an empty edit: {edit:?}");
                edit.remove_headers
            }
            other => panic!("expected the request to continue, got {other:?}"),
        }
    }

    /// The response header names `f` removes from a response with these headers.
    fn removed_from_response(f: &mut Sanitize, headers: &[(&str, &str)]) -> Vec<String> {
        let outcome = Outcome::Response(
            fields(headers)
                .into_iter()
                .fold(Response::new(200), |r, (name, value)| {
                    r.with_header(name, value)
                }),
        );
        match f.on_response(&info(), &request(&[]), None, &outcome) {
            ResponseAction::Continue(None) => Vec::new(),
            ResponseAction::Continue(Some(edit)) => {
                assert!(edit.set_headers.is_empty(), "{edit:?}");
                edit.remove_headers
            }
            other => panic!("expected the response to continue, got {other:?}"),
        }
    }

    /// The 431 message for a request with these headers.
    fn rejection(f: &mut Sanitize, headers: Vec<(String, Vec<u8>)>) -> String {
        let req = request_with(headers);
        let RequestAction::Respond(r) = f.on_request(&info(), &req) else {
            panic!("expected a 431");
        };
        assert_eq!(r.status(), 431);
        assert_eq!(
            r.header_str("content-type").as_deref(),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(r.body().unwrap()).unwrap();
        assert_eq!(body["error"], "headers_too_large");
        assert_eq!(body.as_object().unwrap().len(), 2, "{body}");
        body["message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn defaults_strip_internal_request_headers_and_keep_the_rest() {
        let mut f = build("").unwrap();
        let got = removed(
            &mut f,
            &[
                ("accept", "*/*"),
                ("cookie", "session=1"),
                ("authorization", "Bearer t"),
                ("baggage", "tenant=acme"),
                ("x-forwarded-for", "10.0.0.7"),
                ("x-forwarded-proto", "http"),
                ("forwarded", "for=10.0.0.7"),
                ("x-real-ip", "10.0.0.7"),
                ("x-internal-user", "alice"),
                ("cookie", "other=2"),
                ("user-agent", "svc/1"),
                ("x-request-id", "r1"),
                ("traceparent", "00-..."),
            ],
        );
        assert_eq!(
            got,
            [
                "cookie",
                "baggage",
                "x-forwarded-for",
                "x-forwarded-proto",
                "forwarded",
                "x-real-ip",
                "x-internal-user"
            ]
        );
    }

    #[test]
    fn a_clean_request_and_response_pass_without_an_edit() {
        let mut f = build("{}").unwrap();
        assert_eq!(
            f.on_request(&info(), &request(&[("accept", "*/*")])),
            RequestAction::proceed()
        );
        assert!(removed_from_response(&mut f, &[("content-type", "text/plain")]).is_empty());
    }

    #[test]
    fn defaults_strip_server_banners_and_cookies_from_responses() {
        let mut f = build("{}").unwrap();
        let got = removed_from_response(
            &mut f,
            &[
                ("content-type", "text/plain"),
                ("server", "nginx"),
                ("set-cookie", "a=1"),
                ("x-powered-by", "PHP"),
                ("set-cookie", "b=2"),
                ("etag", "\"v1\""),
            ],
        );
        assert_eq!(got, ["server", "set-cookie", "x-powered-by"]);
    }

    #[test]
    fn strip_extra_adds_to_the_defaults_and_strip_replaces_them() {
        let mut f = build(r#"{"request": {"strip_extra": ["X-Debug", "x-trace-*"]}}"#).unwrap();
        assert_eq!(
            removed(
                &mut f,
                &[
                    ("cookie", "a"),
                    ("x-debug", "1"),
                    ("x-trace-span", "2"),
                    ("x-tracer", "3")
                ]
            ),
            ["cookie", "x-debug", "x-trace-span"]
        );

        let mut f = build(r#"{"request": {"strip": ["x-debug"]}}"#).unwrap();
        assert_eq!(
            removed(&mut f, &[("cookie", "a"), ("x-debug", "1")]),
            ["x-debug"]
        );

        let mut f = build(r#"{"request": {"strip": []}}"#).unwrap();
        assert!(removed(&mut f, &[("cookie", "a"), ("baggage", "b")]).is_empty());

        let mut f =
            build(r#"{"response": {"strip": ["server"], "strip_extra": ["via"]}}"#).unwrap();
        assert_eq!(
            removed_from_response(
                &mut f,
                &[("set-cookie", "a=1"), ("server", "x"), ("via", "1.1 p")]
            ),
            ["server", "via"]
        );
    }

    #[test]
    fn names_and_prefixes_match_in_any_case() {
        let f = build(r#"{"request": {"strip": ["X-Secret", "X-Team-*"]}}"#).unwrap();
        let RequestRule::Strip(p) = &f.request else {
            panic!("strip mode")
        };
        for name in ["x-secret", "X-SECRET", "x-team-", "x-team-id", "X-TEAM-ID"] {
            assert!(p.matches(name), "{name}");
        }
        for name in ["x-secrets", "x-secre", "x-team", "x-teams"] {
            assert!(!p.matches(name), "{name}");
        }
    }

    #[test]
    fn allowlist_keeps_only_what_it_names_and_the_content_headers() {
        let mut f = build(r#"{"request": {"allow": ["Accept", "x-api-*"]}}"#).unwrap();
        let got = removed(
            &mut f,
            &[
                ("accept", "*/*"),
                ("x-api-key", "k"),
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
                ("authorization", "Bearer t"),
                ("user-agent", "svc/1"),
                ("cookie", "a"),
                ("x-api", "no"),
            ],
        );
        assert_eq!(got, ["authorization", "user-agent", "cookie", "x-api"]);

        // An empty allowlist still lets the body be read.
        let mut f = build(r#"{"request": {"allow": []}}"#).unwrap();
        assert_eq!(
            removed(&mut f, &[("content-type", "text/plain"), ("accept", "*/*")]),
            ["accept"]
        );
    }

    #[test]
    fn allowlist_mode_still_strips_responses() {
        let mut f = build(r#"{"request": {"allow": ["accept"]}}"#).unwrap();
        assert_eq!(
            removed_from_response(&mut f, &[("server", "nginx")]),
            ["server"]
        );
    }

    #[test]
    fn the_response_phase_is_skipped_only_when_nothing_can_be_stripped() {
        for json in [
            "{}",
            r#"{"response": {"strip": ["server"]}}"#,
            r#"{"response": {"strip": [], "strip_extra": ["via"]}}"#,
            r#"{"request": {"allow": []}}"#,
        ] {
            assert_eq!(build(json).unwrap().info().phases, Phases::BOTH, "{json}");
        }
        let mut f = build(r#"{"response": {"strip": []}}"#).unwrap();
        assert_eq!(f.info().phases, Phases::REQUEST);
        // What the skipped phase would have done: nothing.
        assert!(
            removed_from_response(&mut f, &[("server", "nginx"), ("set-cookie", "a=1")]).is_empty()
        );
        let mut f = build(r#"{"request": {"allow": []}, "response": {"strip": []}}"#).unwrap();
        assert_eq!(f.info().phases, Phases::REQUEST);
        assert_eq!(removed(&mut f, &[("accept", "*/*")]), ["accept"]);
    }

    #[test]
    fn no_edit_when_the_upstream_failed() {
        let mut f = build("{}").unwrap();
        let outcome = Outcome::Error(UpstreamError::ConnectFailed);
        assert_eq!(
            f.on_response(&info(), &request(&[]), None, &outcome),
            ResponseAction::proceed()
        );
    }

    fn many(n: usize) -> Vec<(String, Vec<u8>)> {
        (1..=n)
            .map(|i| (format!("x-h-{i}"), b"v".to_vec()))
            .collect()
    }

    #[test]
    fn header_count_limit() {
        let mut f = build("{}").unwrap();
        assert!(matches!(
            f.on_request(&info(), &request_with(many(100))),
            RequestAction::Continue(_)
        ));
        assert_eq!(
            rejection(&mut f, many(101)),
            r#"header "x-h-101" is header number 101; limits.max_headers is 100"#
        );
        let mut f = build(r#"{"limits": {"max_headers": 2}}"#).unwrap();
        assert_eq!(
            rejection(&mut f, many(3)),
            r#"header "x-h-3" is header number 3; limits.max_headers is 2"#
        );
    }

    #[test]
    fn total_bytes_limit_counts_names_and_values() {
        let mut f = build(r#"{"limits": {"max_header_bytes": 10}}"#).unwrap();
        // "ab" + "cdefgh" = 8 bytes, then "x" + "y" = 10: exactly at the limit.
        let ok = fields(&[("ab", "cdefgh"), ("x", "y")]);
        assert!(matches!(
            f.on_request(&info(), &request_with(ok)),
            RequestAction::Continue(_)
        ));
        let over = fields(&[("ab", "cdefgh"), ("x", "y"), ("z", "")]);
        assert_eq!(
            rejection(&mut f, over),
            r#"header "z" brings the headers to 11 bytes; limits.max_header_bytes is 10"#
        );
    }

    #[test]
    fn value_limit_names_the_header() {
        let mut f = build("{}").unwrap();
        let at = vec![("x-big".to_string(), vec![b'a'; 8192])];
        assert!(matches!(
            f.on_request(&info(), &request_with(at)),
            RequestAction::Continue(_)
        ));
        let over = vec![
            ("accept".to_string(), b"*/*".to_vec()),
            ("x-big".to_string(), vec![b'a'; 8193]),
        ];
        assert_eq!(
            rejection(&mut f, over),
            r#"header "x-big" has a 8193-byte value; limits.max_value_bytes is 8192"#
        );
    }

    #[test]
    fn limits_apply_before_stripping() {
        let mut f = build(r#"{"limits": {"max_headers": 1}}"#).unwrap();
        let two_cookies = fields(&[("cookie", "a"), ("cookie", "b")]);
        assert_eq!(
            rejection(&mut f, two_cookies),
            r#"header "cookie" is header number 2; limits.max_headers is 1"#
        );
    }

    #[test]
    fn the_headers_weir_sets_are_not_counted() {
        let mut f = build(r#"{"limits": {"max_headers": 1, "max_header_bytes": 10}}"#).unwrap();
        let req = request(&[
            ("x-request-id", "0123456789abcdef"),
            (
                "traceparent",
                "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01",
            ),
            ("accept", "*/*"),
        ]);
        assert!(matches!(
            f.on_request(&info(), &req),
            RequestAction::Continue(_)
        ));
        let two = fields(&[("x-request-id", "r"), ("accept", "*/*"), ("x-a", "1")]);
        assert_eq!(
            rejection(&mut f, two),
            r#"header "x-a" is header number 2; limits.max_headers is 1"#
        );
    }

    #[test]
    fn config_errors_name_the_key() {
        let cases = [
            (
                r#"{"requests": {}}"#,
                "sanitize: unknown field `requests`, expected one of `request`, `response`, `limits`",
            ),
            (
                r#"{"request": {"strip_prefixes": []}}"#,
                "sanitize: unknown field `strip_prefixes`, expected one of `strip`, `strip_extra`, `allow`",
            ),
            (
                r#"{"response": {"allow": []}}"#,
                "sanitize: unknown field `allow`, expected `strip` or `strip_extra`",
            ),
            (
                r#"{"limits": {"max_headers": -1}}"#,
                "sanitize: invalid value: integer `-1`, expected u32",
            ),
            (
                r#"{"request": {"strip": [""]}}"#,
                "sanitize: request.strip: a header name is empty",
            ),
            (
                r#"{"request": {"strip_extra": ["x a"]}}"#,
                r#"sanitize: request.strip_extra: header name "x a" contains ' ', which HTTP does not allow in a name"#,
            ),
            (
                r#"{"request": {"allow": ["x:y"]}}"#,
                r#"sanitize: request.allow: header name "x:y" contains ':', which HTTP does not allow in a name"#,
            ),
            (
                r#"{"response": {"strip": ["*"]}}"#,
                r#"sanitize: response.strip: pattern "*" needs at least one character before the `*`"#,
            ),
            (
                r#"{"response": {"strip_extra": ["x-*-id"]}}"#,
                r#"sanitize: response.strip_extra: pattern "x-*-id" has a `*` before its end; `*` may only end a pattern"#,
            ),
            (
                r#"{"request": {"strip_extra": ["X-Request-Id"]}}"#,
                r#"sanitize: request.strip_extra: "X-Request-Id" cannot be stripped: weir sets it after the filters"#,
            ),
            (
                r#"{"request": {"strip": ["traceparent"]}}"#,
                r#"sanitize: request.strip: "traceparent" cannot be stripped: weir sets it after the filters"#,
            ),
            (
                r#"{"response": {"strip": ["x-request-id"]}}"#,
                r#"sanitize: response.strip: "x-request-id" cannot be stripped: weir sets it after the filters"#,
            ),
            (
                r#"{"request": {"allow": ["accept"], "strip_extra": ["x-a"]}}"#,
                "sanitize: `request.allow` cannot be combined with `request.strip` or `request.strip_extra`: the allowlist already drops every header it does not name",
            ),
            (
                r#"{"request": {"allow": [], "strip": []}}"#,
                "sanitize: `request.allow` cannot be combined with `request.strip` or `request.strip_extra`: the allowlist already drops every header it does not name",
            ),
            (
                r#"{"limits": {"max_headers": 0}}"#,
                "sanitize: limits.max_headers must be at least 1",
            ),
            (
                r#"{"limits": {"max_header_bytes": 0}}"#,
                "sanitize: limits.max_header_bytes must be at least 1",
            ),
            (
                r#"{"limits": {"max_value_bytes": 0}}"#,
                "sanitize: limits.max_value_bytes must be at least 1",
            ),
        ];
        for (json, want) in cases {
            assert_eq!(build(json).unwrap_err(), want, "config {json}");
        }
    }

    #[test]
    fn host_set_names_may_be_allowed_and_matched_by_a_prefix() {
        // Allowing them is harmless (weir sends them anyway); a prefix that happens to
        // cover one is the operator's explicit choice.
        assert!(build(r#"{"request": {"allow": ["x-request-id", "traceparent"]}}"#).is_ok());
        assert!(build(r#"{"request": {"strip_extra": ["x-request-*"]}}"#).is_ok());
    }

    #[test]
    fn the_defaults_parse_and_the_documented_example_builds() {
        let f = build("{}").unwrap();
        assert_eq!(f.limits, Limits::default());
        let RequestRule::Strip(p) = &f.request else {
            panic!("strip mode by default")
        };
        assert_eq!(p.exact, ["cookie", "baggage", "forwarded", "x-real-ip"]);
        assert_eq!(p.prefixes, ["x-forwarded-", "x-internal-"]);
        build(r#"{"request": {"strip_extra": ["x-debug-*"]}, "limits": {"max_headers": 50}}"#)
            .unwrap();
        build(
            r#"{"request": {"allow": ["x-api-key", "accept"]}, "response": {"strip": ["server"]}}"#,
        )
        .unwrap();
    }
}
