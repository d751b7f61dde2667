//! The wasm cost of weir's filters, in process: no sockets, no HTTP parsing, no upstream.
//!
//! Each benchmark calls the built-in filters through the same pools, limits and host
//! interfaces as `weir run` (via [`weir::authoring::harness`]), so what it measures is one guest
//! call: checking an instance out, copying the request into the guest, running it, and
//! copying the answer back.
//!
//! 1. `cargo bench -p weir --bench filters` (criterion's defaults), or add `-- --quick`
//!    for a fast, rougher run.
//! 2. `cargo test -p weir --benches` runs each benchmark once, as a smoke test.
//!
//! The groups:
//!
//! - `phase/<filter>/on_request` (and `phase/headers/on_response`): one call of one phase
//!   of one standard filter, configured as in `bench/configs/`.
//! - `chain/five`: one request through headers, retry, limiter, breaker and cache (miss)
//!   and back, through the host's own chain walk (`weir::chain`, as the harness runs it):
//!   five `on-request` calls in order, edits applied, the scripted upstream, then five
//!   `on-response` calls in reverse with each filter's memo.
//!
//! The harness's clock is virtual and moves only when told to. The limiter's bucket would
//! run dry after `burst` calls, so the limiter benchmarks move the clock on by 1 ms per
//! call, which refills it (its rate is 1,000,000 per second).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use weir::authoring::harness::{
    Harness, info, request, response, with_header, with_response_header,
};
use weir::builtin;
use weir::wasm::{Outcome, Request, RequestAction, ResponseAction};

/// The five filters of the full chain, in route order, with their configs.
fn chain_filters() -> [(&'static str, Value); 5] {
    [
        ("headers", headers_config()),
        ("retry", json!({})),
        ("limiter", limiter_config()),
        ("breaker", json!({})),
        // No `default_ttl`, and the upstream response carries no freshness: every request
        // is a miss that looks the key up and stores nothing.
        ("cache", json!({})),
    ]
}

fn headers_config() -> Value {
    json!({
        "request": { "set": { "x-api-key": "bench-secret" }, "remove": ["cookie"] },
        "response": { "set": { "x-served-by": "weir" }, "remove": ["server"] },
    })
}

/// A limit that never bites: the bench measures the admit path.
fn limiter_config() -> Value {
    json!({ "rate": 1_000_000, "burst": 1_000_000 })
}

/// A request like the one `wrk` sends in `bench/run.sh`, as weir hands it to filters.
fn client_request() -> Request {
    let req = request("GET", "/bench");
    let req = with_header(req, "host", "127.0.0.1:18084");
    let req = with_header(req, "user-agent", "wrk");
    with_header(req, "cookie", "session=abc")
}

/// The benchmark upstream's answer (`bench/upstream`): small, not cacheable.
fn upstream_outcome() -> Outcome {
    let mut resp = response(200);
    resp = with_response_header(resp, "content-type", "text/plain");
    resp = with_response_header(resp, "content-length", "13");
    resp = with_response_header(resp, "server", "bench-upstream");
    Outcome::Response(resp)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

async fn load(name: &str, config: Value) -> Harness {
    Harness::builtin(name, config)
        .await
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A filter's memo from `on-request`, or a panic if it did not let the request through.
fn memo_of(name: &str, action: RequestAction) -> Option<Vec<u8>> {
    match action {
        RequestAction::Continue((_, memo)) => memo,
        other => panic!("{name}: expected continue, got {other:?}"),
    }
}

fn phases(c: &mut Criterion) {
    let rt = runtime();
    let req = client_request();
    let outcome = upstream_outcome();
    let ri = info("bench-request", 1);

    let mut group = c.benchmark_group("phase");

    // `headers` is the one filter measured in both phases: it edits in both.
    let headers = rt.block_on(load("headers", headers_config()));
    let memo = memo_of(
        "headers",
        rt.block_on(headers.on_request(&ri, &req)).unwrap(),
    );
    group.bench_function("headers/on_request", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(headers.on_request(&ri, &req).await.unwrap()) })
    });
    group.bench_function("headers/on_response", |b| {
        b.to_async(&rt).iter(|| async {
            let action = headers
                .on_response(&ri, &req, memo.as_deref(), &outcome)
                .await
                .unwrap();
            assert!(matches!(action, ResponseAction::Continue(_)));
            black_box(action)
        })
    });

    for (name, config) in chain_filters().into_iter().skip(1) {
        let h = rt.block_on(load(name, config));
        // Every path measured is the one a healthy request takes: continue.
        memo_of(name, rt.block_on(h.on_request(&ri, &req)).unwrap());
        let tick = if name == "limiter" {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        group.bench_function(format!("{name}/on_request"), |b| {
            b.to_async(&rt).iter(|| async {
                h.advance(tick);
                let action = h.on_request(&ri, &req).await.unwrap();
                assert!(matches!(action, RequestAction::Continue(_)), "{action:?}");
                black_box(action)
            })
        });
    }
    group.finish();
}

/// Five filters sharing one runtime and state store, in one route's chain.
struct FiveChain {
    harness: Harness,
}

impl FiveChain {
    async fn load() -> FiveChain {
        let mut filters = chain_filters().into_iter();
        let (first, config) = filters.next().expect("five filters");
        let mut harness = load(first, config).await;
        for (name, config) in filters {
            let wasm = builtin::lookup(name).expect("a built-in filter").wasm;
            harness = harness
                .then(wasm, config)
                .await
                .unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        FiveChain { harness }
    }

    /// One request through the chain and back: the host's own walk, against a scripted
    /// upstream that answers `upstream`.
    async fn exchange(&self, client: &Request, upstream: &Outcome) -> Outcome {
        self.harness.advance(Duration::from_millis(1));
        self.harness
            .exchange("bench-request", client.clone(), 1, |_, _| upstream.clone())
            .await
            .expect("the chain runs")
            .outcome
    }
}

fn chain(c: &mut Criterion) {
    let rt = runtime();
    let five = rt.block_on(FiveChain::load());
    let req = client_request();
    let upstream = upstream_outcome();
    // Check once that the chain does what the bench claims: a cache miss that passed
    // every filter, with the headers filter's edits.
    match rt.block_on(five.exchange(&req, &upstream)) {
        Outcome::Response(r) => {
            let h = |n: &str| weir::authoring::harness::header(&r.headers, n);
            assert_eq!(h("x-weir-cache").as_deref(), Some("miss"));
            assert_eq!(h("x-served-by").as_deref(), Some("weir"));
            assert_eq!(h("server"), None);
        }
        other => panic!("expected a response, got {other:?}"),
    }
    let mut group = c.benchmark_group("chain");
    group.bench_function("five", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(five.exchange(&req, &upstream).await) })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short by default: the calls take microseconds, and 2-core machines are the target.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = phases, chain
}
criterion_main!(benches);
