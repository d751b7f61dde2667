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
use crate::wasm::{HostCall, HostCallKind};

/// The standard methods (RFC 9110 §9 and PATCH); any other is `_OTHER`, as the semantic
/// conventions say, with its own name in `http.request.method_original`.
const KNOWN_METHODS: [Method; 9] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
    Method::PATCH,
    Method::TRACE,
    Method::CONNECT,
];

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
    match KNOWN_METHODS.iter().find(|k| *k == m) {
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
            let status = match call.error {
                Some(e) => {
                    attrs.push(kv("error.type", e));
                    Status::error(e)
                }
                None => Status::Unset,
            };
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
        let status = match call.error {
            Some(e) => {
                attrs.push(kv("error.type", e));
                Status::error(e)
            }
            None => Status::Unset,
        };
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
