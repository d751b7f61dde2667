//! Traces over OTLP end to end: a real weir exports to an OTLP/HTTP receiver on loopback
//! (the scripted upstream, which records each export), and the test decodes the protobuf
//! it got with `opentelemetry-proto`'s messages. A retried request through a
//! three-filter chain (`headers`, `retry`, `auth`) must come out as one trace: the
//! client's trace id, the request span under the client's span, a span per filter call
//! and per upstream try with the right parents, names and semantic-convention
//! attributes, each try's span the parent the upstream saw in its `traceparent`, and no
//! secret anywhere in what was exported.

use std::collections::HashMap;
use std::time::Instant;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

use crate::support::WAIT;
use crate::support::client::client;
use crate::support::upstream::{Recorded, Reply, Upstream};
use crate::support::weir::Weir;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
/// The `auth` filter's API key, from the environment; it goes upstream in the query.
const API_KEY: &str = "sekret-otlp-key-71c0ffee";
/// The collector's token, from the environment: only the collector may see it.
const COLLECTOR_TOKEN: &str = "sekret-collector-3d9e55aa";
/// What the client sends in a redacted header and its own query.
const CLIENT_SECRET: &str = "sekret-client-0b5e1f2c";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: &AnyValue) -> String {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attrs(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                kv.value.as_ref().map(value).unwrap_or_default(),
            )
        })
        .collect()
}

/// The spans the receiver got so far, with the `service.name` each came under.
fn exported(collector: &Upstream) -> Vec<(String, Span)> {
    let mut out = Vec::new();
    for export in collector.requests() {
        let decoded = ExportTraceServiceRequest::decode(&export.body[..])
            .unwrap_or_else(|e| panic!("the export is not an OTLP protobuf request: {e}"));
        for rs in decoded.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .map(|r| attrs(&r.attributes))
                .and_then(|a| a.get("service.name").cloned())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push((service.clone(), span));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn a_retried_request_is_one_trace_with_a_span_per_filter_call_and_try() {
    let collector =
        Upstream::start(|_, _| Reply::ok().header("content-type", "application/x-protobuf")).await;
    // The first try fails, the second succeeds.
    let up = Upstream::builder()
        .replies([
            Reply::new(503).header("retry-after", "0"),
            Reply::ok().body("done"),
        ])
        .start()
        .await;
    let weir = Weir::builder(format!(
        r#"[listen]
addr = "127.0.0.1:0"

[telemetry.otlp]
endpoint = "{collector}/v1/traces"
headers = {{ authorization = {{ env = "WEIR_TEST_OTLP_TOKEN" }} }}
service_name = "weir-e2e"

[upstreams.api]
url = "{api}"

[[routes]]
name = "api"
upstream = "api"
filters = [
  {{ use = "headers", config = {{ request = {{ set = {{ "x-team" = "billing" }} }} }} }},
  {{ use = "retry", config = {{ max_retries = 2 }} }},
  {{ use = "auth", config = {{ api_key = {{ query = "api_key", value = {{ env = "WEIR_TEST_OTLP_KEY" }} }} }} }},
]
"#,
        collector = collector.url(),
        api = up.url(),
    ))
    .env("WEIR_TEST_OTLP_TOKEN", COLLECTOR_TOKEN)
    .env("WEIR_TEST_OTLP_KEY", API_KEY)
    // Another service's exporter setting in weir's environment: never sent.
    .env("OTEL_EXPORTER_OTLP_HEADERS", "x-other-service=its-own-key")
    .start()
    .await;

    let resp = client()
        .get(weir.url(&format!("/items/1?token={CLIENT_SECRET}")))
        .header("traceparent", format!("00-{TRACE_ID}-{CLIENT_SPAN}-01"))
        .header("x-request-id", "otlp-e2e-1")
        .header("authorization", format!("Bearer {CLIENT_SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "done");
    let tries: Vec<Recorded> = up.requests();
    assert_eq!(tries.len(), 2);
    // The key went upstream, in the query: the spans must leave it out.
    assert!(tries[0].path.contains(API_KEY), "{}", tries[0].path);

    // Exported once the request is answered, off its path: wait for the request span.
    let started = Instant::now();
    let spans = loop {
        let spans = exported(&collector);
        if spans.iter().any(|(_, s)| s.kind == SpanKind::Server as i32) {
            break spans;
        }
        assert!(started.elapsed() < WAIT, "no request span was exported");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };

    // What went to the collector: protobuf, with the configured header, and no secret
    // but that header's.
    for export in collector.requests() {
        assert_eq!(
            (export.method.as_str(), export.path.as_str()),
            ("POST", "/v1/traces")
        );
        assert_eq!(
            export.header_str("content-type"),
            Some("application/x-protobuf")
        );
        assert_eq!(export.header_str("authorization"), Some(COLLECTOR_TOKEN));
        assert_eq!(export.header_str("x-other-service"), None);
        for secret in [API_KEY, COLLECTOR_TOKEN, CLIENT_SECRET] {
            assert!(
                !export
                    .body
                    .windows(secret.len())
                    .any(|w| w == secret.as_bytes()),
                "{secret} was exported"
            );
        }
    }

    // One trace, the client's.
    for (service, s) in &spans {
        assert_eq!(hex(&s.trace_id), TRACE_ID, "{}", s.name);
        assert_eq!(service, "weir-e2e");
    }
    let by_id: HashMap<Vec<u8>, &Span> =
        spans.iter().map(|(_, s)| (s.span_id.clone(), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique");

    // The request span: under the client's span, named after the method and route.
    let servers: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    assert_eq!(servers.len(), 1);
    let request = servers[0];
    assert_eq!(request.name, "GET api");
    assert_eq!(hex(&request.parent_span_id), CLIENT_SPAN);
    let a = attrs(&request.attributes);
    for (key, want) in [
        ("http.request.method", "GET"),
        ("url.path", "/items/1"),
        ("url.scheme", "http"),
        ("http.route", "api"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("weir.request_id", "otlp-e2e-1"),
        ("weir.attempts", "2"),
        ("weir.upstream", "api"),
    ] {
        assert_eq!(a.get(key).map(String::as_str), Some(want), "{key}: {a:?}");
    }
    assert_eq!(a.get("server.port"), Some(&weir.addr().port().to_string()));
    assert!(!a.contains_key("error.type"), "{a:?}");

    // Under it, in time order: each filter call and each try, and the retry's delay.
    // `headers` (request changes only) and `auth` (a static key) ask for no response
    // phase, so weir makes no `on_response` call, and no span, for them.
    let mut children: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id == request.span_id)
        .collect();
    children.sort_by_key(|s| s.start_time_unix_nano);
    let walk: Vec<(String, String)> = children
        .iter()
        .map(|s| {
            let a = attrs(&s.attributes);
            (
                s.name.clone(),
                a.get("weir.attempt").cloned().unwrap_or_default(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("headers on_request", "1"),
        ("retry on_request", "1"),
        ("auth on_request", "1"),
        ("GET", "1"),
        ("retry on_response", "1"),
        ("retry delay", "1"),
        ("auth on_request", "2"),
        ("GET", "2"),
        ("retry on_response", "2"),
    ]
    .iter()
    .map(|(n, a)| (n.to_string(), a.to_string()))
    .collect();
    assert_eq!(walk, want);
    for s in &children {
        assert!(
            s.start_time_unix_nano >= request.start_time_unix_nano,
            "{}",
            s.name
        );
        assert!(
            s.end_time_unix_nano <= request.end_time_unix_nano,
            "{}",
            s.name
        );
        let a = attrs(&s.attributes);
        if s.name.contains(" on_") {
            assert_eq!(s.kind, SpanKind::Internal as i32);
            let (filter, phase) = s.name.split_once(' ').unwrap();
            assert_eq!(a.get("weir.filter.name").map(String::as_str), Some(filter));
            assert_eq!(a.get("weir.filter.phase").map(String::as_str), Some(phase));
        }
    }

    // Each try: a client span whose id is the parent the upstream saw.
    let attempts: Vec<&&Span> = children.iter().filter(|s| s.name == "GET").collect();
    for (i, (s, seen)) in attempts.iter().zip(&tries).enumerate() {
        assert_eq!(s.kind, SpanKind::Client as i32);
        let a = attrs(&s.attributes);
        let status = if i == 0 { "503" } else { "200" };
        assert_eq!(
            a.get("http.response.status_code").map(String::as_str),
            Some(status)
        );
        assert_eq!(
            a.get("http.request.method").map(String::as_str),
            Some("GET")
        );
        assert_eq!(a.get("url.full"), Some(&format!("{}/items/1", up.url())));
        assert_eq!(
            a.get("server.address").map(String::as_str),
            Some("127.0.0.1")
        );
        assert_eq!(a.get("weir.upstream").map(String::as_str), Some("api"));
        let resend = (i > 0).then(|| i.to_string());
        assert_eq!(a.get("http.request.resend_count"), resend.as_ref());
        assert_eq!(
            a.get("error.type").map(String::as_str),
            (i == 0).then_some("503")
        );
        let traceparent = seen
            .header_str("traceparent")
            .expect("a traceparent upstream");
        assert_eq!(
            traceparent,
            format!("00-{TRACE_ID}-{}-01", hex(&s.span_id)),
            "try {i}"
        );
    }
    // The first try opened the connection: its connect span hangs under it.
    let connect: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name == "connect")
        .collect();
    assert!(!connect.is_empty());
    assert_eq!(connect[0].parent_span_id, attempts[0].span_id);

    // The retry filter's state calls (its retry budget) hang under its calls.
    let state: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.name.starts_with("state "))
        .collect();
    assert!(!state.is_empty(), "no state call was exported");
    for s in state {
        let parent = by_id.get(&s.parent_span_id).expect("its filter call");
        assert!(
            parent.name.starts_with("retry on_"),
            "{} under {}",
            s.name,
            parent.name
        );
    }
}
