//! Building a request's spans from its record, after it was served.
//!
//! The tree, with the OpenTelemetry HTTP semantic conventions' names and attributes:
//!
//! ```text
//! GET payments                       server, parent: the client's traceparent
//! ├── retry on_request               internal: one per filter call
//! │   └── state incr                 internal: the filter's state calls
//! ├── GET                            client: one per upstream try
//! │   └── connect                    internal: a new connection's TCP connect…
//! │       └── tls handshake          internal: …and TLS handshake
//! ├── retry on_response
//! ├── retry delay                    internal: a wait, or the delay before a retry
//! ├── GET                            client: the second try
//! └── …
//! ```
//!
//! Nothing client-chosen that may hold a secret becomes an attribute: no header value,
//! no query string (`url.path`, and `url.full` without its query), no state key, no body.

use std::borrow::Cow;
use std::time::SystemTime;

use http::Method;
use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use tokio::time::Instant;

use super::Finished;
use crate::telemetry::METHODS;
use crate::wasm::{HostCall, HostCallKind};

/// One span under construction.
struct Builder<'a> {
    f: &'a Finished,
    scope: &'a InstrumentationScope,
    trace_id: TraceId,
    next_id: &'a mut dyn FnMut() -> u64,
    out: Vec<SpanData>,
}

/// The spans of request `f`, each with an id from `next_id` except the request span and
/// the upstream tries, whose ids weir already sent upstream.
pub fn build(
    f: &Finished,
    scope: &InstrumentationScope,
    next_id: &mut dyn FnMut() -> u64,
) -> Vec<SpanData> {
    let mut b = Builder {
        f,
        scope,
        trace_id: TraceId::from(f.ids.trace_id),
        next_id,
        out: Vec::with_capacity(span_count(f)),
    };
    b.request();
    b.out
}

/// How many spans `f` makes.
pub fn span_count(f: &Finished) -> usize {
    let t = &f.trace;
    1 + t.filters.len()
        + t.filters.iter().map(|c| c.host_calls.len()).sum::<usize>()
        + t.waits.len()
        + t.upstream.len()
        + t.upstream
            .iter()
            .filter_map(|u| u.connect)
            .map(|c| 1 + usize::from(c.tls.is_some()))
            .sum::<usize>()
}

/// The method's name as the conventions want it, and its own name when that is `_OTHER`.
fn method(m: &Method) -> (&'static str, Option<&str>) {
    // Any method but the standard nine is `_OTHER`, as the semantic conventions say, with
    // its own name in `http.request.method_original`.
    match METHODS.iter().find(|k| *k == m) {
        Some(k) => (static_method(k), None),
        None => ("_OTHER", Some(m.as_str())),
    }
}

fn static_method(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        _ => "CONNECT",
    }
}

/// `host[:port]` split, the port as a number when there is one.
fn host_port(authority: &str) -> (&str, Option<i64>) {
    match authority.rsplit_once(':') {
        // An IPv6 literal without a port ends in `]`.
        Some((host, port)) if !port.contains(']') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

/// The `host[:port]` of an `http://host[:port]` origin, and its port, the scheme's
/// default when none is written.
fn origin_host_port(origin: &str) -> (&str, Option<i64>) {
    let (scheme, authority) = origin.split_once("://").unwrap_or(("http", origin));
    let (host, port) = host_port(authority);
    let default = if scheme == "https" { 443 } else { 80 };
    (host, Some(port.unwrap_or(default)))
}

fn kv(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

/// A call's status: an error, with its kind in `error.type`, when it failed.
fn failed(attrs: &mut Vec<KeyValue>, error: Option<&'static str>) -> Status {
    match error {
        Some(e) => {
            attrs.push(kv("error.type", e));
            Status::error(e)
        }
        None => Status::Unset,
    }
}

impl Builder<'_> {
    /// The wall-clock time of `at`: the request's end, read once, less how long before
    /// the end `at` was.
    fn wall(&self, at: Instant) -> SystemTime {
        let before_end = self.f.ended.saturating_duration_since(at);
        self.f
            .wall_end
            .checked_sub(before_end)
            .unwrap_or(self.f.wall_end)
    }

    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: u64,
        parent: u64,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
        (start, end): (Instant, Instant),
        attributes: Vec<KeyValue>,
        status: Status,
        events: Vec<Event>,
    ) {
        let mut span_events = SpanEvents::default();
        span_events.events = events;
        let remote_parent = parent == 0;
        self.out.push(SpanData {
            span_context: SpanContext::new(
                self.trace_id,
                SpanId::from(id),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: if remote_parent {
                self.f.ids.parent.map_or(SpanId::INVALID, SpanId::from)
            } else {
                SpanId::from(parent)
            },
            parent_span_is_remote: remote_parent && self.f.ids.parent.is_some(),
            span_kind: kind,
            name: name.into(),
            start_time: self.wall(start),
            end_time: self.wall(end),
            attributes,
            dropped_attributes_count: 0,
            events: span_events,
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// The request's own span, then everything under it.
    fn request(&mut self) {
        let f = self.f;
        let (method, original) = method(&f.method);
        let name = match (&f.route, original) {
            (Some(route), None) => format!("{method} {route}"),
            (Some(route), Some(_)) => format!("HTTP {route}"),
            (None, None) => method.to_owned(),
            (None, Some(_)) => "HTTP".to_owned(),
        };
        let mut attrs = vec![
            kv("http.request.method", method),
            kv("url.path", f.path.clone()),
            kv("url.scheme", f.scheme),
            kv("http.response.status_code", i64::from(f.status)),
            kv("client.address", f.client.ip().to_string()),
            kv("network.protocol.name", "http"),
            kv("weir.request_id", f.request_id.clone()),
            kv("weir.attempts", i64::from(f.trace.attempts)),
        ];
        if let Some(original) = original {
            attrs.push(kv("http.request.method_original", original.to_owned()));
        }
        if let Some(version) = match f.version {
            http::Version::HTTP_10 => Some("1.0"),
            http::Version::HTTP_11 => Some("1.1"),
            http::Version::HTTP_2 => Some("2"),
            _ => None,
        } {
            attrs.push(kv("network.protocol.version", version));
        }
        if let Some(route) = &f.route {
            attrs.push(kv("http.route", route.clone()));
        }
        if let Some(host) = &f.host {
            let (address, port) = host_port(host);
            attrs.push(kv("server.address", address.to_owned()));
            if let Some(port) = port {
                attrs.push(kv("server.port", port));
            }
        }
        if let Some((name, _)) = &f.upstream {
            attrs.push(kv("weir.upstream", name.clone()));
        }
        for (key, value) in [
            ("weir.job", &f.job),
            ("weir.batch", &f.batch),
            ("weir.replay_of", &f.replay_of),
        ] {
            if let Some(v) = value {
                attrs.push(kv(key, v.clone()));
            }
        }
        // A server span is an error for 5xx only: a 4xx is the client's doing.
        let error = f
            .error
            .map(Cow::Borrowed)
            .or_else(|| (f.status >= 500).then(|| Cow::Owned(f.status.to_string())));
        let status = match &error {
            Some(e) if f.status >= 500 => Status::error(e.clone()),
            _ => Status::Unset,
        };
        if let Some(e) = error {
            attrs.push(kv("error.type", e));
        }
        let id = f.ids.span;
        self.push(
            id,
            0,
            SpanKind::Server,
            name,
            (f.started, f.ended),
            attrs,
            status,
            Vec::new(),
        );
        for call in &f.trace.filters {
            let call_id = (self.next_id)();
            let mut attrs = vec![
                kv("weir.filter.name", call.filter.clone()),
                kv("weir.filter.phase", call.phase),
                kv("weir.attempt", i64::from(call.attempt)),
            ];
            let status = failed(&mut attrs, call.error);
            self.push(
                call_id,
                id,
                SpanKind::Internal,
                format!("{} {}", call.filter, call.phase),
                (call.at, call.at + call.took),
                attrs,
                status,
                Vec::new(),
            );
            for host in &call.host_calls {
                self.host_call(host, call_id, &call.filter);
            }
        }
        for wait in &f.trace.waits {
            let wait_id = (self.next_id)();
            let name = match wait.kind {
                "retry" => format!("{} delay", wait.filter),
                _ => format!("{} wait", wait.filter),
            };
            self.push(
                wait_id,
                id,
                SpanKind::Internal,
                name,
                (wait.at, wait.at + wait.took),
                vec![
                    kv("weir.filter.name", wait.filter.clone()),
                    kv("weir.wait.kind", wait.kind),
                    kv("weir.attempt", i64::from(wait.attempt)),
                ],
                Status::Unset,
                Vec::new(),
            );
        }
        self.attempts(id, method);
    }

    /// A filter's state or outbound call, under its filter call's span.
    fn host_call(&mut self, call: &HostCall, parent: u64, filter: &str) {
        let id = (self.next_id)();
        let mut attrs = vec![kv("weir.filter.name", filter.to_owned())];
        let (kind, name) = match &call.what {
            HostCallKind::State(op) => {
                attrs.push(kv("weir.state.operation", *op));
                (SpanKind::Internal, Cow::Owned(format!("state {op}")))
            }
            HostCallKind::Outbound {
                upstream,
                origin,
                method,
                path,
                status,
            } => {
                attrs.push(kv("http.request.method", method.clone()));
                attrs.push(kv("url.full", format!("{origin}{path}")));
                attrs.push(kv("weir.upstream", upstream.clone()));
                let (address, port) = origin_host_port(origin);
                attrs.push(kv("server.address", address.to_owned()));
                if let Some(port) = port {
                    attrs.push(kv("server.port", port));
                }
                if let Some(s) = status {
                    attrs.push(kv("http.response.status_code", i64::from(*s)));
                }
                (SpanKind::Client, Cow::Owned(method.clone()))
            }
        };
        let status = failed(&mut attrs, call.error);
        self.push(
            id,
            parent,
            kind,
            name,
            (call.at, call.at + call.took),
            attrs,
            status,
            Vec::new(),
        );
    }

    /// Each upstream try, with its connection's spans under it.
    fn attempts(&mut self, parent: u64, method: &'static str) {
        let f = self.f;
        let Some((upstream, origin)) = &f.upstream else {
            return;
        };
        let (address, port) = origin_host_port(origin);
        for u in &f.trace.upstream {
            let (id, path) = match &u.span {
                Some((id, path)) => (*id, path.as_str()),
                None => ((self.next_id)(), ""),
            };
            let mut attrs = vec![
                kv("http.request.method", method),
                kv("url.full", format!("{origin}{path}")),
                kv("server.address", address.to_owned()),
                kv("weir.upstream", upstream.clone()),
                kv("weir.attempt", i64::from(u.attempt)),
            ];
            if let Some(port) = port {
                attrs.push(kv("server.port", port));
            }
            if u.attempt > 1 {
                attrs.push(kv("http.request.resend_count", i64::from(u.attempt - 1)));
            }
            let end = u.at + u.took;
            let mut events = Vec::new();
            // A client span is an error for any 4xx or 5xx, and for no response at all.
            let status = match u.outcome {
                Ok(code) => {
                    attrs.push(kv("http.response.status_code", i64::from(code)));
                    events.push(Event::new("response head", self.wall(end), Vec::new(), 0));
                    if code >= 400 {
                        attrs.push(kv("error.type", code.to_string()));
                        Status::error(code.to_string())
                    } else {
                        Status::Unset
                    }
                }
                Err(kind) => {
                    attrs.push(kv("error.type", kind));
                    Status::error(kind)
                }
            };
            self.push(
                id,
                parent,
                SpanKind::Client,
                method,
                (u.at, end),
                attrs,
                status,
                events,
            );
            if let Some(c) = u.connect {
                let connect_id = (self.next_id)();
                let tls = c.tls.unwrap_or_default();
                self.push(
                    connect_id,
                    id,
                    SpanKind::Internal,
                    "connect",
                    (c.at, c.at + c.tcp + tls),
                    vec![
                        kv("server.address", address.to_owned()),
                        kv("network.transport", "tcp"),
                    ],
                    Status::Unset,
                    Vec::new(),
                );
                if let Some(tls) = c.tls {
                    let tls_id = (self.next_id)();
                    let at = c.at + c.tcp;
                    self.push(
                        tls_id,
                        connect_id,
                        SpanKind::Internal,
                        "tls handshake",
                        (at, at + tls),
                        vec![kv("server.address", address.to_owned())],
                        Status::Unset,
                        Vec::new(),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::otlp::SpanIds;
    use crate::recent::{FilterTiming, Trace, UpstreamTiming, WaitTiming};
    use crate::upstream::ConnectTiming;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    /// A request that went through `auth` and `retry`, failed once upstream over a new
    /// TLS connection, waited, and succeeded on its second try.
    fn finished(method: Method, status: u16, error: Option<&'static str>) -> Finished {
        let t0 = Instant::now();
        let call = |filter: &str, phase, attempt, at: u32, host_calls| FilterTiming {
            filter: filter.to_owned(),
            phase,
            attempt,
            at: t0 + at * MS,
            took: MS,
            error: None,
            host_calls,
        };
        let state = HostCall {
            what: HostCallKind::State("window_add"),
            at: t0 + 2 * MS,
            took: Duration::from_micros(100),
            error: Some("unavailable"),
        };
        let outbound = HostCall {
            what: HostCallKind::Outbound {
                upstream: "oauth".into(),
                origin: "https://login.example.com".into(),
                method: "POST".into(),
                path: "/token".into(),
                status: Some(200),
            },
            at: t0 + 4 * MS,
            took: Duration::from_micros(300),
            error: None,
        };
        let trace = Trace {
            filters: vec![
                call("retry", "on_request", 1, 1, vec![state]),
                call("auth", "on_request", 1, 3, vec![outbound]),
                call("auth", "on_response", 1, 20, Vec::new()),
                call("retry", "on_response", 1, 22, Vec::new()),
                call("auth", "on_request", 2, 30, Vec::new()),
                call("auth", "on_response", 2, 40, Vec::new()),
                call("retry", "on_response", 2, 42, Vec::new()),
            ],
            upstream: vec![
                UpstreamTiming {
                    attempt: 1,
                    at: t0 + 5 * MS,
                    took: 14 * MS,
                    connect: Some(ConnectTiming {
                        at: t0 + 5 * MS,
                        tcp: MS,
                        tls: Some(2 * MS),
                    }),
                    outcome: Err("reset"),
                    span: Some((0xa1, "/v1/charges".into())),
                },
                UpstreamTiming {
                    attempt: 2,
                    at: t0 + 32 * MS,
                    took: 7 * MS,
                    connect: None,
                    outcome: Ok(200),
                    span: Some((0xa2, "/v1/charges".into())),
                },
            ],
            waits: vec![WaitTiming {
                filter: "retry".into(),
                kind: "retry",
                attempt: 1,
                at: t0 + 24 * MS,
                took: 5 * MS,
            }],
            attempts: 2,
            failures: Vec::new(),
        };
        Finished {
            ids: SpanIds {
                trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                parent: Some(0x00f0_67aa_0ba9_02b7),
                span: 0x5e,
            },
            started: t0,
            ended: t0 + 45 * MS,
            wall_end: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            method,
            route: Some("payments".into()),
            path: "/payments/v1/charges".into(),
            scheme: "http",
            host: Some("api.internal:8080".into()),
            client: "10.0.0.7:51234".parse().unwrap(),
            version: http::Version::HTTP_11,
            status,
            error,
            request_id: "req-1".into(),
            upstream: Some(("stripe".into(), "https://api.stripe.com".into())),
            trace,
            job: None,
            batch: None,
            replay_of: None,
        }
    }

    fn build_all(f: &Finished) -> Vec<SpanData> {
        let mut next = 0x1000u64;
        let scope = InstrumentationScope::builder("weir").build();
        build(f, &scope, &mut || {
            next += 1;
            next
        })
    }

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
        spans.iter().filter(|s| s.name == name).collect()
    }

    #[test]
    fn the_tree_has_a_span_per_call_try_wait_and_connection_step() {
        let f = finished(Method::POST, 200, None);
        let spans = build_all(&f);
        assert_eq!(spans.len(), span_count(&f));
        assert_eq!(spans.len(), 1 + 7 + 2 + 1 + 2 + 2);
        let trace_id = TraceId::from(f.ids.trace_id);
        assert!(spans.iter().all(|s| s.span_context.trace_id() == trace_id));

        let request = &spans[0];
        assert_eq!(request.name, "POST payments");
        assert_eq!(request.span_kind, SpanKind::Server);
        assert_eq!(request.span_context.span_id(), SpanId::from(0x5e));
        assert_eq!(request.parent_span_id, SpanId::from(0x00f0_67aa_0ba9_02b7));
        assert!(request.parent_span_is_remote);
        assert_eq!(request.status, Status::Unset);
        assert_eq!(request.end_time, f.wall_end);
        assert_eq!(request.start_time, f.wall_end - Duration::from_millis(45));
        for (key, want) in [
            ("http.request.method", "POST"),
            ("url.path", "/payments/v1/charges"),
            ("url.scheme", "http"),
            ("http.route", "payments"),
            ("http.response.status_code", "200"),
            ("server.address", "api.internal"),
            ("server.port", "8080"),
            ("client.address", "10.0.0.7"),
            ("network.protocol.version", "1.1"),
            ("weir.attempts", "2"),
        ] {
            assert_eq!(attr(request, key).as_deref(), Some(want), "{key}");
        }
        assert_eq!(attr(request, "error.type"), None);

        // Filter calls, tries and the wait hang under the request span.
        let root = request.span_context.span_id();
        for s in &spans[1..] {
            let under_root = s.parent_span_id == root;
            let tried = attr(s, "weir.upstream").as_deref() == Some("stripe");
            let top = s.name.contains(" on_") || tried || s.name.ends_with(" delay");
            assert_eq!(under_root, top, "{}", s.name);
            assert!(!s.parent_span_is_remote);
            assert!(s.start_time >= request.start_time && s.end_time <= request.end_time);
        }
        let calls = named(&spans, "auth on_request");
        assert_eq!(calls.len(), 2);
        assert_eq!(attr(calls[1], "weir.attempt").as_deref(), Some("2"));
        assert_eq!(
            attr(calls[1], "weir.filter.phase").as_deref(),
            Some("on_request")
        );

        // Host calls hang under the call that made them.
        let state = named(&spans, "state window_add")[0];
        let retry_call = named(&spans, "retry on_request")[0];
        assert_eq!(state.parent_span_id, retry_call.span_context.span_id());
        assert_eq!(attr(state, "error.type").as_deref(), Some("unavailable"));
        assert!(matches!(state.status, Status::Error { .. }));
        let token = spans
            .iter()
            .find(|s| {
                s.name == "POST"
                    && s.span_kind == SpanKind::Client
                    && attr(s, "weir.upstream").as_deref() == Some("oauth")
            })
            .expect("the outbound call");
        assert_eq!(token.parent_span_id, calls[0].span_context.span_id());
        assert_eq!(
            attr(token, "url.full").as_deref(),
            Some("https://login.example.com/token")
        );
        assert_eq!(attr(token, "server.port").as_deref(), Some("443"));

        // Each try keeps the id it sent upstream; the first failed on a new connection.
        let tries: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.parent_span_id == root && s.span_kind == SpanKind::Client)
            .collect();
        assert_eq!(tries.len(), 2);
        assert_eq!(tries[0].span_context.span_id(), SpanId::from(0xa1));
        assert_eq!(attr(tries[0], "error.type").as_deref(), Some("reset"));
        assert!(matches!(tries[0].status, Status::Error { .. }));
        assert_eq!(attr(tries[0], "http.request.resend_count"), None);
        assert_eq!(tries[1].span_context.span_id(), SpanId::from(0xa2));
        assert_eq!(
            attr(tries[1], "http.response.status_code").as_deref(),
            Some("200")
        );
        assert_eq!(
            attr(tries[1], "http.request.resend_count").as_deref(),
            Some("1")
        );
        assert_eq!(
            attr(tries[1], "url.full").as_deref(),
            Some("https://api.stripe.com/v1/charges")
        );
        assert_eq!(tries[1].events.len(), 1, "the response head");
        let connect = named(&spans, "connect")[0];
        assert_eq!(connect.parent_span_id, SpanId::from(0xa1));
        assert_eq!(
            connect.end_time.duration_since(connect.start_time).unwrap(),
            3 * MS
        );
        let tls = named(&spans, "tls handshake")[0];
        assert_eq!(tls.parent_span_id, connect.span_context.span_id());
        assert_eq!(tls.start_time, connect.start_time + MS);
        let wait = named(&spans, "retry delay")[0];
        assert_eq!(attr(wait, "weir.wait.kind").as_deref(), Some("retry"));
    }

    #[test]
    fn errors_and_odd_methods_follow_the_conventions() {
        // weir's own 504: an error of the request span, named by its code.
        let f = finished(Method::GET, 504, Some("timeout"));
        let spans = build_all(&f);
        assert_eq!(attr(&spans[0], "error.type").as_deref(), Some("timeout"));
        assert!(
            matches!(&spans[0].status, Status::Error { description } if description == "timeout")
        );
        // An upstream's 503 passed on: the status code is the error type.
        let spans = build_all(&finished(Method::GET, 503, None));
        assert_eq!(attr(&spans[0], "error.type").as_deref(), Some("503"));
        // A 4xx is the client's doing: no error on the server span.
        let spans = build_all(&finished(Method::GET, 404, None));
        assert_eq!(attr(&spans[0], "error.type"), None);
        assert_eq!(spans[0].status, Status::Unset);
        // An extension method is `_OTHER`, with its own name kept apart.
        let method = Method::from_bytes(b"PURGE").unwrap();
        let spans = build_all(&finished(method, 200, None));
        assert_eq!(spans[0].name, "HTTP payments");
        assert_eq!(
            attr(&spans[0], "http.request.method").as_deref(),
            Some("_OTHER")
        );
        assert_eq!(
            attr(&spans[0], "http.request.method_original").as_deref(),
            Some("PURGE")
        );
        // No route: the method alone; a new trace has no parent.
        let mut f = finished(Method::GET, 404, Some("no_route"));
        f.route = None;
        f.upstream = None;
        f.trace = Trace::default();
        f.ids.parent = None;
        let spans = build_all(&f);
        assert_eq!(spans.len(), 1);
        assert_eq!(spans[0].name, "GET");
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
        assert!(!spans[0].parent_span_is_remote);
        assert_eq!(attr(&spans[0], "http.route"), None);
    }

    #[test]
    fn hosts_and_ports_are_split() {
        assert_eq!(host_port("example.com:8443"), ("example.com", Some(8443)));
        assert_eq!(host_port("example.com"), ("example.com", None));
        assert_eq!(host_port("[::1]:80"), ("[::1]", Some(80)));
        assert_eq!(host_port("[::1]"), ("[::1]", None));
        assert_eq!(
            origin_host_port("https://a.example"),
            ("a.example", Some(443))
        );
        assert_eq!(
            origin_host_port("http://a.example"),
            ("a.example", Some(80))
        );
        assert_eq!(
            origin_host_port("http://a.example:81"),
            ("a.example", Some(81))
        );
    }
}
