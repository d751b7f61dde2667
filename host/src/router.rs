//! The route table: which route takes a request, and building routes (with their filter
//! pools) from a validated config.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, request::Parts};

use crate::builtin;
use crate::chain::Chain;
use crate::config::{Config, ConfigError, FilterSource, RouteMatch, Secret, merge_json};
use crate::error::ProxyError;
use crate::path::{self, EscapedPaths, PathError};
use crate::telemetry::{RouteMetrics, Telemetry};
use crate::upstream::{Upstream, UpstreamPool};
use crate::wasm::{Loaded, Outbound, Runtime};

/// One route, ready to serve.
pub struct Route {
    /// The route's name.
    pub name: String,
    matcher: Matcher,
    /// The prefix removed before forwarding, if `strip_prefix` is set.
    pub strip: Option<String>,
    escaped_paths: EscapedPaths,
    /// Where requests go; for a fan-out route, its first (primary) target.
    pub upstream: Arc<Upstream>,
    /// Every target of a fan-out route, the primary first, and its mode.
    pub fanout: Option<(Vec<Arc<Upstream>>, crate::config::FanoutMode)>,
    /// The deadline for the whole request.
    pub timeout: Duration,
    /// The filter chain.
    pub chain: Chain,
    /// The route's series and `/status` statistics.
    pub metrics: RouteMetrics,
    /// When requests become jobs ([`crate::jobs`]); never when `None`.
    pub async_mode: Option<crate::config::AsyncMode>,
    /// Read the whole request body before the chain runs (`buffer_request`).
    pub buffer_request: bool,
}

struct Matcher {
    host: Option<HostMatch>,
    path_prefix: Option<String>,
    methods: Option<Vec<Method>>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

enum HostMatch {
    Exact(String),
    /// `*.example.com`: stored as `.example.com`.
    Suffix(String),
}

impl Matcher {
    fn new(m: &RouteMatch) -> Matcher {
        Matcher {
            host: m.host.as_ref().map(|h| {
                let h = h.to_ascii_lowercase();
                match h.strip_prefix('*') {
                    Some(suffix) => HostMatch::Suffix(suffix.to_owned()),
                    None => HostMatch::Exact(h),
                }
            }),
            path_prefix: m.path_prefix.clone(),
            methods: m.methods.as_ref().map(|ms| {
                ms.iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect()
            }),
            headers: m
                .headers
                .iter()
                .filter_map(|(n, v)| {
                    Some((
                        HeaderName::from_bytes(n.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
        }
    }

    fn matches(&self, parts: &Parts) -> bool {
        if let Some(p) = &self.path_prefix
            && !parts.uri.path().starts_with(p.as_str())
        {
            return false;
        }
        if let Some(ms) = &self.methods
            && !ms.contains(&parts.method)
        {
            return false;
        }
        if let Some(h) = &self.host {
            let Some(host) = request_host(parts) else {
                return false;
            };
            let ok = match h {
                HostMatch::Exact(e) => host.eq_ignore_ascii_case(e),
                HostMatch::Suffix(s) => {
                    host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s)
                }
            };
            if !ok {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(n, v)| parts.headers.get_all(n).iter().any(|got| got == v))
    }
}

/// The host the client asked for, without the port: the request target's authority when
/// it has one (HTTP/2's `:authority`, or an HTTP/1.1 absolute-form target, where RFC 9112
/// §3.2.2 says to ignore `Host`), else the `Host` header.
fn request_host(parts: &Parts) -> Option<&str> {
    let raw = match parts.uri.host() {
        Some(h) => h,
        None => parts.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    // Strip a port, minding IPv6 literals like "[::1]:8080".
    Some(match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    })
}

/// `uri` with its path replaced by `path` (which came from `uri`'s own, so it parses).
fn with_path(uri: &http::Uri, path: &str) -> Result<http::Uri, ProxyError> {
    let path_and_query = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("invalid path {path:?}: {e}")))?,
    );
    http::Uri::from_parts(parts)
        .map_err(|e| ProxyError::BadRequest(format!("invalid path {path:?}: {e}")))
}

impl Route {
    /// The path and query to send upstream: the prefix removed when `strip_prefix` is set.
    pub fn upstream_path(&self, uri: &http::Uri) -> String {
        let path = uri.path();
        let rest = match &self.strip {
            Some(prefix) => path.strip_prefix(prefix.as_str()).unwrap_or(path),
            None => path,
        };
        path_and_query(rest, uri.query())
    }
}

/// `rest` (with a `/` put before it if it has none) and `query`, in a buffer of exactly
/// their length: the upstream URI takes it over as it is (`Upstream::uri_owned`), and
/// one with spare room would cost a second allocation.
fn path_and_query(rest: &str, query: Option<&str>) -> String {
    let slash = !rest.starts_with('/');
    let mut out =
        String::with_capacity(usize::from(slash) + rest.len() + query.map_or(0, |q| q.len() + 1));
    if slash {
        out.push('/');
    }
    out.push_str(rest);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// The routes of one config, in order, and the upstream client they share.
pub struct Router {
    routes: Vec<Route>,
    /// Some route takes async requests: only then does a request's `Prefer` get read.
    any_async: bool,
    /// The shared upstream client.
    pub upstreams: Arc<UpstreamPool>,
}

/// The `Host` rules of RFC 9112 §3.2 for a request read off a client connection: more
/// than one `Host` line, or a value that is not a host and optional port, is refused
/// whatever the version; an HTTP/1.1 request must have one (HTTP/1.0 may omit it, and
/// HTTP/2 carries `:authority` instead). An empty `Host` is allowed, as the RFC allows it.
pub fn check_host(parts: &Parts) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => Err(ProxyError::BadRequest(
            "more than one Host header".to_owned(),
        )),
        (Some(host), None) => {
            if host.is_empty() || is_host_and_port(host.as_bytes()) {
                Ok(())
            } else {
                Err(ProxyError::BadRequest(format!(
                    "invalid Host header {:?}",
                    String::from_utf8_lossy(host.as_bytes())
                )))
            }
        }
        (None, _) if parts.version == http::Version::HTTP_11 => Err(ProxyError::BadRequest(
            "HTTP/1.1 request without a Host header".to_owned(),
        )),
        (None, _) => Ok(()),
    }
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2): an authority without userinfo, whose port,
/// if any, is digits.
fn is_host_and_port(value: &[u8]) -> bool {
    is_plain_host_and_port(value) || is_parsed_host_and_port(value)
}

/// The usual `Host`, a DNS name or IPv4 address and maybe a port: checked with one scan
/// and no parse. Every value it takes, [`is_parsed_host_and_port`] takes too.
fn is_plain_host_and_port(value: &[u8]) -> bool {
    let (host, port) = match value.iter().rposition(|&b| b == b':') {
        Some(at) => (&value[..at], Some(&value[at + 1..])),
        None => (value, None),
    };
    !host.is_empty()
        && host
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
        && port.is_none_or(|p| p.iter().all(u8::is_ascii_digit))
}

/// Any other `Host`: what `http` parses as an authority, without userinfo, with a port
/// that is digits.
fn is_parsed_host_and_port(value: &[u8]) -> bool {
    if value.contains(&b'@') {
        return false;
    }
    let Ok(authority) = http::uri::Authority::try_from(value) else {
        return false;
    };
    // Without userinfo the authority starts with its host.
    let rest = &authority.as_str()[authority.host().len()..];
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()))
}

impl Router {
    /// The first route that matches.
    pub fn find(&self, parts: &Parts) -> Option<&Route> {
        self.routes.iter().find(|r| r.matcher.matches(parts))
    }

    /// Normalises the request's path in place (see [`crate::path`]), finds the first route
    /// that matches the normalised request, and applies that route's `escaped_paths`.
    /// Everything after this (`strip_prefix`, the upstream request, `/requests`) sees the
    /// normalised path. The query is left as it came.
    pub fn route(&self, parts: &mut Parts) -> Result<&Route, ProxyError> {
        let normal = path::normalise(parts.uri.path())?;
        let escaped = normal.escaped;
        // A borrowed path is the request's own, already normal.
        if let std::borrow::Cow::Owned(path) = normal.path
            && path != parts.uri.path()
        {
            parts.uri = with_path(&parts.uri, &path)?;
        }
        match (escaped, self.find(parts)) {
            (Some(what), Some(route)) if route.escaped_paths == EscapedPaths::Reject => {
                Err(PathError::Refused {
                    what,
                    route: route.name.clone(),
                }
                .into())
            }
            // No route to say otherwise: the default, "reject", applies.
            (Some(what), None) => Err(PathError::RefusedWithoutRoute {
                what,
                path: parts.uri.path().to_owned(),
            }
            .into()),
            (_, Some(route)) => Ok(route),
            (None, None) => Err(ProxyError::NoRoute {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
            }),
        }
    }

    /// The longest timeout of any route: what bounds a batch call's answer.
    pub fn longest_timeout(&self) -> Duration {
        self.routes
            .iter()
            .map(|r| r.timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Whether some route takes async requests.
    pub fn any_async(&self) -> bool {
        self.any_async
    }

    /// Every route, in order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Loads every component the config names (once each), initialises a pool per
    /// (route, filter), and builds the routes. Every problem is returned, not just the
    /// first.
    pub async fn build(
        config: &Config,
        runtime: &Arc<Runtime>,
        telemetry: &Telemetry,
    ) -> Result<Router, Vec<ConfigError>> {
        let raw = &config.raw;
        let mut errors = Vec::new();
        let upstream_cfgs: Vec<_> = raw
            .upstreams
            .iter()
            .map(|(n, u)| (n.clone(), u.get_ref().clone()))
            .collect();
        let upstreams = match UpstreamPool::new(&upstream_cfgs, telemetry.upstreams.clone()) {
            Ok(u) => Some(Arc::new(u)),
            Err(e) => {
                let span = raw.upstreams.get(e.upstream()).map(|u| u.span());
                errors.push(config.error_at(span, e.to_string()));
                None
            }
        };

        let mut loaded: HashMap<FilterSource, Option<Arc<Loaded>>> = HashMap::new();
        // Each filter's own `config`, its secrets resolved; `None` if one is missing.
        let mut filter_configs: HashMap<&str, Option<serde_json::Value>> = HashMap::new();
        let base = config.path.parent().unwrap_or(Path::new("."));
        let mut routes = Vec::new();
        for route in &raw.routes {
            let r = route.get_ref();
            let mut pools = Vec::new();
            for f in &r.filters {
                let use_ = f.get_ref();
                let source = config.filter_source(&use_.name);
                // Load errors point at the filter's `wasm` key, or at its first use.
                let span = config
                    .key_span(&["filters", &use_.name, "wasm"])
                    .unwrap_or_else(|| f.span());
                let component = loaded
                    .entry(source.clone())
                    .or_insert_with(|| {
                        let result = match &source {
                            FilterSource::File(path) => runtime.load_file(path),
                            FilterSource::Builtin(name) => {
                                let b = builtin::lookup(name).expect("validated built-in name");
                                runtime.load(&format!("built-in filter `{name}`"), b.wasm)
                            }
                        };
                        result
                            .map_err(|e| errors.push(config.error_at(Some(span), e.to_string())))
                            .ok()
                    })
                    .clone();
                let Some(component) = component else { continue };
                let settings = config.filter_settings(&use_.name);
                // Secrets are resolved in each part before the merge, so a route can
                // replace a `{ env = … }` with a `{ file = … }` wholesale.
                let name = use_.name.as_str();
                let own = filter_configs.entry(name).or_insert_with(|| {
                    let mut cfg = settings
                        .config
                        .clone()
                        .unwrap_or_else(|| serde_json::json!({}));
                    let span = config
                        .key_span(&["filters", name, "config"])
                        .or_else(|| raw.filters.get(name).map(|t| t.span()));
                    let problems = resolve_secrets(&mut cfg, base);
                    for p in &problems {
                        errors.push(config.error_at(span.clone(), format!("filter `{name}`: {p}")));
                    }
                    problems.is_empty().then_some(cfg)
                });
                let mut over = use_.config.clone();
                let problems = over
                    .as_mut()
                    .map_or_else(Vec::new, |o| resolve_secrets(o, base));
                for p in &problems {
                    let message = format!("filter `{name}`: {p}");
                    errors.push(config.error_at(Some(f.span()), message));
                }
                let (Some(mut cfg), true) = (own.clone(), problems.is_empty()) else {
                    continue;
                };
                if let Some(over) = &over {
                    merge_json(&mut cfg, over);
                }
                let outbound = match (&upstreams, settings.outbound.is_empty()) {
                    (Some(pool), false) => Some(Arc::new(Outbound::new(
                        pool.clone(),
                        settings.outbound.clone(),
                        raw.listen.max_body_bytes.0,
                    ))),
                    _ => None,
                };
                match runtime
                    .pool(
                        component,
                        &use_.name,
                        &r.name,
                        cfg.to_string(),
                        &settings,
                        outbound,
                        raw.listen.max_body_bytes.0,
                    )
                    .await
                {
                    Ok(p) => pools.push(p),
                    Err(e) => errors.push(config.error_at(Some(f.span()), e.to_string())),
                }
            }
            let Some(pool) = &upstreams else { continue };
            let names: Vec<&String> = match (&r.upstream, &r.fanout) {
                (Some(u), _) => vec![u.get_ref()],
                (None, Some(f)) => f.targets.iter().map(|t| t.get_ref()).collect(),
                (None, None) => continue,
            };
            let Some(targets) = names
                .iter()
                .map(|n| pool.get(n).cloned())
                .collect::<Option<Vec<Arc<Upstream>>>>()
            else {
                continue;
            };
            let upstream = targets[0].clone();
            let fanout = r.fanout.as_ref().map(|f| (targets, f.mode));
            let async_mode = match &fanout {
                Some((_, crate::config::FanoutMode::Async)) => {
                    Some(crate::config::AsyncMode::Always)
                }
                _ => r.async_jobs.map(|a| a.mode),
            };
            routes.push(Route {
                name: r.name.clone(),
                matcher: Matcher::new(&r.matcher),
                strip: if r.strip_prefix {
                    r.matcher.path_prefix.clone()
                } else {
                    None
                },
                escaped_paths: r.escaped_paths,
                upstream,
                fanout,
                timeout: r.timeout.0,
                chain: Chain::new(pools).with_compression(r.compression),
                metrics: telemetry.route(&r.name),
                async_mode,
                buffer_request: r.buffer_request,
            });
        }
        match upstreams {
            Some(upstreams) if errors.is_empty() => Ok(Router {
                any_async: routes.iter().any(|r| r.async_mode.is_some()),
                routes,
                upstreams,
            }),
            _ => Err(errors),
        }
    }
}

/// Replaces every object of exactly the form `{ "env": "NAME" }` or `{ "file": "path" }`
/// in a filter's config by the secret it names: the variable's value, or the file's
/// contents without trailing newlines (relative paths from `base`, the config file's
/// directory). Filters run in a sandbox with neither environment nor files, so weir reads
/// their secrets for them. Returns one message per secret that cannot be read, naming its
/// place in the config but never a value.
fn resolve_secrets(value: &mut serde_json::Value, base: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    resolve_at(value, base, &mut String::new(), &mut problems);
    problems
}

fn resolve_at(
    value: &mut serde_json::Value,
    base: &Path,
    at: &mut String,
    problems: &mut Vec<String>,
) {
    use serde_json::Value;
    let secret = match &*value {
        Value::Object(map) if map.len() == 1 => match map.iter().next() {
            Some((k, Value::String(env))) if k == "env" => Some(Secret::Env { env: env.clone() }),
            Some((k, Value::String(file))) if k == "file" => Some(Secret::File {
                file: base.join(file),
            }),
            _ => None,
        },
        _ => None,
    };
    if let Some(secret) = secret {
        match secret.resolve() {
            Ok(v) => *value = Value::String(v),
            Err(e) => problems.push(format!("config `{at}`: {e}")),
        }
        return;
    }
    let len = at.len();
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if !at.is_empty() {
                    at.push('.');
                }
                at.push_str(k);
                resolve_at(v, base, at, problems);
                at.truncate(len);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                at.push_str(&format!("[{i}]"));
                resolve_at(v, base, at, problems);
                at.truncate(len);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_filter_configs_are_resolved_anywhere_in_the_tree() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret.txt"), "from-file\n\n").unwrap();
        // A variable cargo sets for every test process (setting one needs `unsafe`).
        let var = "CARGO_MANIFEST_DIR";
        let mut cfg = serde_json::json!({
            "bearer": { "token": { "env": var } },
            "list": [{ "file": "secret.txt" }, "plain"],
            "not_a_secret": { "env": "X", "other": 1 },
            "number": { "env": 5 },
        });
        assert!(resolve_secrets(&mut cfg, dir.path()).is_empty());
        assert_eq!(
            cfg,
            serde_json::json!({
                "bearer": { "token": env!("CARGO_MANIFEST_DIR") },
                "list": ["from-file", "plain"],
                "not_a_secret": { "env": "X", "other": 1 },
                "number": { "env": 5 },
            })
        );
    }

    #[test]
    fn a_missing_secret_names_its_place_and_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = serde_json::json!({
            "oauth2": { "client_secret": { "file": "nope.txt" } },
            "headers": { "x-a": { "env": "WEIR_ROUTER_TEST_SURELY_UNSET_41C9" } },
        });
        let mut problems = resolve_secrets(&mut cfg, dir.path());
        problems.sort();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(
            problems[0],
            "config `headers.x-a`: environment variable WEIR_ROUTER_TEST_SURELY_UNSET_41C9 is not set"
        );
        assert!(
            problems[1].starts_with(&format!(
                "config `oauth2.client_secret`: cannot read {}: ",
                dir.path().join("nope.txt").display()
            )),
            "{}",
            problems[1]
        );
    }

    #[test]
    fn the_upstream_path_fills_its_buffer_exactly() {
        for (rest, query, want) in [
            ("/a/b", None, "/a/b"),
            ("a/b", None, "/a/b"),
            ("", None, "/"),
            ("/a", Some("x=1"), "/a?x=1"),
            ("a", Some(""), "/a?"),
        ] {
            let got = path_and_query(rest, query);
            assert_eq!(got, want);
            assert_eq!(got.capacity(), got.len(), "{want}");
        }
    }

    fn parts(method: &str, uri: &str, host: &str) -> Parts {
        let (p, _) = http::Request::builder()
            .method(method)
            .uri(uri)
            .header("host", host)
            .header("x-tenant", "a")
            .body(())
            .unwrap()
            .into_parts();
        p
    }

    fn matcher(toml_text: &str) -> Matcher {
        let m: RouteMatch = toml::from_str(toml_text).unwrap();
        Matcher::new(&m)
    }

    #[test]
    fn path_method_host_and_header_all_must_match() {
        let m = matcher(
            "host = \"*.example.com\"\npath_prefix = \"/pay/\"\nmethods = [\"POST\"]\nheaders = { x-tenant = \"a\" }",
        );
        assert!(m.matches(&parts("POST", "/pay/x", "api.example.com:8080")));
        assert!(!m.matches(&parts("GET", "/pay/x", "api.example.com")));
        assert!(!m.matches(&parts("POST", "/other", "api.example.com")));
        assert!(!m.matches(&parts("POST", "/pay/x", "example.com")));
        let m = matcher("headers = { x-tenant = \"b\" }");
        assert!(!m.matches(&parts("GET", "/", "h")));
        assert!(matcher("").matches(&parts("GET", "/", "h")));
    }

    #[test]
    fn host_rules_depend_on_the_version_and_the_count() {
        let with = |version: http::Version, hosts: &[&str]| {
            let mut req = http::Request::builder().version(version).uri("/x");
            for h in hosts {
                req = req.header("host", *h);
            }
            let (p, _) = req.body(()).unwrap().into_parts();
            check_host(&p).map_err(|e| e.to_string())
        };
        use http::Version;
        assert_eq!(with(Version::HTTP_11, &["a.example:80"]), Ok(()));
        assert_eq!(with(Version::HTTP_11, &["[::1]:8080"]), Ok(()));
        assert_eq!(with(Version::HTTP_11, &[""]), Ok(()));
        assert_eq!(with(Version::HTTP_10, &[]), Ok(()));
        assert_eq!(with(Version::HTTP_2, &[]), Ok(()));
        assert_eq!(
            with(Version::HTTP_11, &[]),
            Err("bad request: HTTP/1.1 request without a Host header".into())
        );
        for version in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert_eq!(
                with(version, &["a", "a"]),
                Err("bad request: more than one Host header".into())
            );
        }
        for bad in ["a b", "u@a.example", "a, b", "a:x", "a/b"] {
            assert!(with(Version::HTTP_11, &[bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_quick_host_check_takes_nothing_the_parse_refuses() {
        let alphabet = b"a9.-:@[]_/ %";
        let mut value = Vec::new();
        // Every string of up to four characters of the alphabet.
        let mut taken = 0;
        for n in 0..=4u32 {
            for mut i in 0..alphabet.len().pow(n) {
                value.clear();
                for _ in 0..n {
                    value.push(alphabet[i % alphabet.len()]);
                    i /= alphabet.len();
                }
                if is_plain_host_and_port(&value) {
                    taken += 1;
                    assert!(
                        is_parsed_host_and_port(&value),
                        "{:?}",
                        String::from_utf8_lossy(&value)
                    );
                }
            }
        }
        assert!(taken > 100, "the quick check took only {taken} values");
        for usual in [
            "api.example.com",
            "127.0.0.1:8080",
            "localhost:",
            "x-y.z:443",
        ] {
            assert!(is_plain_host_and_port(usual.as_bytes()), "{usual}");
        }
    }

    #[test]
    fn host_port_is_ignored_including_ipv6() {
        let p = parts("GET", "/", "[::1]:8080");
        assert_eq!(request_host(&p), Some("[::1]"));
        let p = parts("GET", "/", "Example.COM:80");
        assert!(matcher("host = \"example.com\"").matches(&p));
    }
}
