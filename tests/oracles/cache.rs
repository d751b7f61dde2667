//! cache: an RFC 9111 shared cache with RFC 5861 stale serving (ORACLES.md, "cache").
//!
//! Every sequence runs in the harness on its virtual clock, which the guest sees as its
//! wall clock and the state store uses for TTLs. Each test first moves the clock to a
//! whole second, so `Date` headers are exact and ages are checked to the second.

use std::time::Duration;

use serde_json::json;
use weir::authoring::harness::{Exchange, Harness, header, info, request, with_header};
use weir::wasm::{Outcome, Request, RequestAction, Response, ResponseAction, UpstreamError};

async fn cache(config: serde_json::Value) -> Harness {
    let h = Harness::builtin("cache", config)
        .await
        .expect("valid cache config");
    let into_second = h.clock().wall().subsec_nanos();
    if into_second > 0 {
        h.advance(Duration::from_nanos(1_000_000_000 - u64::from(into_second)));
    }
    h
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The harness's wall clock, in whole seconds since the epoch.
fn now(h: &Harness) -> u64 {
    h.clock().wall().as_secs()
}

/// An IMF-fixdate (RFC 9110 §5.6.7) for `secs` since the epoch.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn get(path: &str) -> Request {
    request("GET", path)
}

/// A response with these headers and body.
fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> Outcome {
    Outcome::Response(Response {
        status,
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect(),
        body: Some(body.as_bytes().to_vec()),
    })
}

/// One request through the cache against an upstream that must not be called.
async fn expect_cached(h: &Harness, req: Request) -> Exchange {
    let ex = h
        .exchange("r", req, 1, |req, _| {
            panic!(
                "the upstream was called for {} {}",
                req.method, req.path_with_query
            )
        })
        .await
        .unwrap();
    assert!(ex.responded);
    ex
}

/// One request through the cache; `upstream` answers if it is called.
async fn send(
    h: &Harness,
    req: Request,
    upstream: impl FnMut(&Request, u32) -> Outcome + Send,
) -> Exchange {
    h.exchange("r", req, 1, upstream).await.unwrap()
}

fn body(ex: &Exchange) -> String {
    match &ex.outcome {
        Outcome::Response(r) => {
            String::from_utf8_lossy(r.body.as_deref().unwrap_or_default()).into()
        }
        Outcome::Error(e) => panic!("no response: {e:?}"),
    }
}

fn label(ex: &Exchange) -> String {
    ex.header("x-weir-cache")
        .expect("x-weir-cache on every response")
}

/// Stores `headers`/`body` as the answer to `req`, then reports whether a second request
/// is answered from the cache.
async fn stored(h: &Harness, req: Request, status: u16, headers: &[(&str, &str)]) -> bool {
    let first = send(h, req.clone(), |_, _| resp(status, headers, "first")).await;
    assert_eq!(first.upstream_calls, 1);
    assert_eq!(label(&first), "miss");
    let second = send(h, req, |_, _| resp(status, headers, "second")).await;
    if second.responded {
        assert_eq!(label(&second), "hit");
        assert_eq!(body(&second), "first");
    } else {
        assert_eq!(body(&second), "second");
    }
    second.responded
}

// === storability ===

#[tokio::test]
async fn a_response_with_max_age_is_stored_and_served_with_age() {
    let h = cache(json!({})).await;
    let miss = send(&h, get("/a"), |_, _| {
        resp(
            200,
            &[("cache-control", "max-age=60"), ("x-origin", "1")],
            "hello",
        )
    })
    .await;
    assert_eq!((miss.upstream_calls, label(&miss).as_str()), (1, "miss"));
    h.advance(secs(25));
    let hit = expect_cached(&h, get("/a")).await;
    assert_eq!(hit.status(), Some(200));
    assert_eq!(label(&hit), "hit");
    assert_eq!(hit.header("age").as_deref(), Some("25"));
    assert_eq!(hit.header("x-origin").as_deref(), Some("1"));
    assert_eq!(body(&hit), "hello");
}

#[tokio::test]
async fn no_store_is_never_stored() {
    let h = cache(json!({})).await;
    assert!(
        !stored(
            &h,
            get("/ns"),
            200,
            &[("cache-control", "max-age=60, no-store")]
        )
        .await
    );
    // no-store on the request: the response is not stored either.
    let req = with_header(get("/ns-req"), "cache-control", "no-store");
    send(&h, req, |_, _| {
        resp(200, &[("cache-control", "max-age=60")], "x")
    })
    .await;
    let after = send(&h, get("/ns-req"), |_, _| resp(200, &[], "y")).await;
    assert_eq!((after.upstream_calls, label(&after).as_str()), (1, "miss"));
}

#[tokio::test]
async fn private_is_never_stored() {
    let h = cache(json!({})).await;
    assert!(
        !stored(
            &h,
            get("/p"),
            200,
            &[("cache-control", "private, max-age=60")]
        )
        .await
    );
    assert!(
        !stored(
            &h,
            get("/pq"),
            200,
            &[("cache-control", "max-age=60, private=\"x-user\"")]
        )
        .await
    );
}

#[tokio::test]
async fn authorization_needs_public_s_maxage_or_must_revalidate() {
    let h = cache(json!({})).await;
    let authed = |path: &str| with_header(get(path), "authorization", "Bearer t");
    assert!(
        !stored(
            &h,
            authed("/auth/plain"),
            200,
            &[("cache-control", "max-age=60")]
        )
        .await
    );
    for (i, cc) in [
        "public, max-age=60",
        "s-maxage=60",
        "max-age=60, must-revalidate",
    ]
    .iter()
    .enumerate()
    {
        let path = format!("/auth/{i}");
        assert!(
            stored(&h, authed(&path), 200, &[("cache-control", cc)]).await,
            "{cc}"
        );
    }
}

#[tokio::test]
async fn without_freshness_information_nothing_is_stored() {
    let h = cache(json!({})).await;
    assert!(
        !stored(
            &h,
            get("/none"),
            200,
            &[("content-type", "application/json")]
        )
        .await
    );
    // Last-Modified makes only heuristically cacheable statuses storable.
    let lm = http_date(now(&h) - 1000);
    assert!(!stored(&h, get("/500"), 500, &[("last-modified", &lm)]).await);
    assert!(!stored(&h, get("/302"), 302, &[("last-modified", &lm)]).await);
    // Expires and public are freshness information.
    let d = http_date(now(&h));
    let e = http_date(now(&h) + 60);
    assert!(stored(&h, get("/exp"), 200, &[("date", &d), ("expires", &e)]).await);
    assert!(
        stored(
            &h,
            get("/pub"),
            200,
            &[("cache-control", "public"), ("last-modified", &lm)]
        )
        .await
    );
}

#[tokio::test]
async fn heuristic_freshness_is_ten_percent_of_date_minus_last_modified() {
    let h = cache(json!({})).await;
    for status in [200, 404, 410] {
        let t = now(&h);
        let headers = [
            ("date", http_date(t)),
            ("last-modified", http_date(t - 1000)),
        ];
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let path = format!("/h/{status}");
        send(&h, get(&path), |_, _| resp(status, &headers, "x")).await;
        h.advance(secs(99));
        let hit = expect_cached(&h, get(&path)).await;
        assert_eq!(hit.status(), Some(status));
        assert_eq!(hit.header("age").as_deref(), Some("99"));
        h.advance(secs(1));
        let stale = send(&h, get(&path), |_, _| resp(status, &[], "y")).await;
        assert_eq!(
            stale.upstream_calls, 1,
            "status {status}: 100 s is 10% of 1000 s"
        );
    }
}

#[tokio::test]
async fn only_final_responses_to_get_are_stored() {
    let h = cache(json!({})).await;
    let cc = [("cache-control", "max-age=60")];
    // A POST's response is not stored, and is not served to a GET.
    let post = send(&h, request("POST", "/post"), |_, _| {
        resp(200, &cc, "created")
    })
    .await;
    assert_eq!(label(&post), "miss");
    let after = send(&h, get("/post"), |_, _| resp(200, &cc, "list")).await;
    assert_eq!(after.upstream_calls, 1);
    // Non-final and partial responses are not stored.
    for status in [103, 206, 304] {
        let path = format!("/s/{status}");
        send(&h, get(&path), |_, _| resp(status, &cc, "")).await;
        let again = send(&h, get(&path), |_, _| resp(200, &cc, "full")).await;
        assert_eq!(again.upstream_calls, 1, "{status} was stored");
    }
    // A HEAD response is not stored; a HEAD is answered from a fresh GET entry.
    send(&h, request("HEAD", "/head"), |_, _| resp(200, &cc, "")).await;
    assert_eq!(
        send(&h, request("HEAD", "/head"), |_, _| resp(200, &cc, ""))
            .await
            .upstream_calls,
        1
    );
    send(&h, get("/head"), |_, _| resp(200, &cc, "body")).await;
    let head = expect_cached(&h, request("HEAD", "/head")).await;
    assert_eq!(label(&head), "hit");
    assert!(matches!(&head.outcome, Outcome::Response(r) if r.body.is_none()));
}

#[tokio::test]
async fn a_successful_unsafe_request_invalidates_the_url() {
    let h = cache(json!({})).await;
    let cc = [("cache-control", "max-age=600")];
    send(&h, get("/items/1"), |_, _| resp(200, &cc, "v1")).await;
    send(&h, request("PUT", "/items/1"), |_, _| resp(500, &[], "")).await;
    assert_eq!(body(&expect_cached(&h, get("/items/1")).await), "v1");
    send(&h, request("DELETE", "/items/2"), |_, _| resp(204, &[], "")).await;
    assert_eq!(body(&expect_cached(&h, get("/items/1")).await), "v1");
    send(&h, request("PATCH", "/items/1"), |_, _| resp(200, &[], "")).await;
    let after = send(&h, get("/items/1"), |_, _| resp(200, &cc, "v2")).await;
    assert_eq!((after.upstream_calls, body(&after).as_str()), (1, "v2"));
}

// === freshness ===

/// A path, the headers its response carries, and the freshness lifetime they give.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u64);

#[tokio::test]
async fn freshness_precedence_s_maxage_then_max_age_then_expires() {
    let h = cache(json!({})).await;
    let t = now(&h);
    let date = http_date(t);
    let expires = http_date(t + 30);
    // In order of lifetime, so one clock serves all three.
    let cases: [Case; 3] = [
        (
            "/max-age",
            vec![
                ("cache-control", "max-age=20"),
                ("date", &date),
                ("expires", &expires),
            ],
            20,
        ),
        ("/expires", vec![("date", &date), ("expires", &expires)], 30),
        (
            "/s-maxage",
            vec![
                ("cache-control", "max-age=20, s-maxage=40"),
                ("date", &date),
                ("expires", &expires),
            ],
            40,
        ),
    ];
    for (path, headers, _) in &cases {
        send(&h, get(path), |_, _| resp(200, headers, "x")).await;
    }
    let mut elapsed = 0;
    for (path, _, lifetime) in &cases {
        // Fresh up to one second before the lifetime, stale at it.
        h.advance(secs(lifetime - 1 - elapsed));
        let hit = expect_cached(&h, get(path)).await;
        assert_eq!(
            hit.header("age"),
            Some((lifetime - 1).to_string()),
            "{path}"
        );
        h.advance(secs(1));
        elapsed = *lifetime;
        let ex = send(&h, get(path), |_, _| resp(200, &[], "new")).await;
        assert_eq!(
            ex.upstream_calls, 1,
            "{path} still fresh after {lifetime} s"
        );
    }
}

#[tokio::test]
async fn age_follows_rfc_9111_current_age() {
    let h = cache(json!({})).await;
    let t = now(&h);
    // The upstream says Age 30 and its Date is 10 s old: corrected_initial_age is
    // max(apparent 10, 30 + response_delay 0) = 30.
    let date = http_date(t - 10);
    send(&h, get("/age"), |_, _| {
        resp(
            200,
            &[
                ("cache-control", "max-age=100"),
                ("date", &date),
                ("age", "30"),
            ],
            "x",
        )
    })
    .await;
    assert_eq!(
        expect_cached(&h, get("/age"))
            .await
            .header("age")
            .as_deref(),
        Some("30")
    );
    h.advance(secs(12));
    assert_eq!(
        expect_cached(&h, get("/age"))
            .await
            .header("age")
            .as_deref(),
        Some("42")
    );
    // A Date older than the Age says: the apparent age wins.
    let old = http_date(t - 50);
    send(&h, get("/apparent"), |_, _| {
        resp(
            200,
            &[
                ("cache-control", "max-age=100"),
                ("date", &old),
                ("age", "5"),
            ],
            "x",
        )
    })
    .await;
    assert_eq!(
        expect_cached(&h, get("/apparent"))
            .await
            .header("age")
            .as_deref(),
        Some("62")
    );
    // The upstream's age counts against freshness: max-age=100 with Age 90 is fresh 10 s.
    send(&h, get("/aged"), |_, _| {
        resp(200, &[("cache-control", "max-age=100"), ("age", "90")], "x")
    })
    .await;
    h.advance(secs(9));
    assert_eq!(
        expect_cached(&h, get("/aged"))
            .await
            .header("age")
            .as_deref(),
        Some("99")
    );
    h.advance(secs(1));
    assert_eq!(
        send(&h, get("/aged"), |_, _| resp(200, &[], "y"))
            .await
            .upstream_calls,
        1
    );
}

// === Vary ===

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let h = cache(json!({})).await;
    let vary = |lang: &str| {
        let body = format!("hello in {lang}");
        move |_: &Request, _: u32| {
            resp(
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                &body,
            )
        }
    };
    let en = || with_header(get("/greet"), "accept-language", "en");
    let fr = || with_header(get("/greet"), "accept-language", "fr");
    send(&h, en(), vary("en")).await;
    let miss = send(&h, fr(), vary("fr")).await;
    assert_eq!((miss.upstream_calls, label(&miss).as_str()), (1, "miss"));
    assert_eq!(body(&expect_cached(&h, en()).await), "hello in en");
    assert_eq!(body(&expect_cached(&h, fr()).await), "hello in fr");
    // No Accept-Language is a variant of its own.
    let none = send(&h, get("/greet"), vary("none")).await;
    assert_eq!(none.upstream_calls, 1);
    assert_eq!(
        body(&expect_cached(&h, get("/greet")).await),
        "hello in none"
    );
}

#[tokio::test]
async fn vary_star_never_matches() {
    let h = cache(json!({})).await;
    let star = [("cache-control", "max-age=60"), ("vary", "*")];
    for _ in 0..3 {
        let ex = send(&h, get("/star"), |_, _| resp(200, &star, "x")).await;
        assert_eq!((ex.upstream_calls, label(&ex).as_str()), (1, "miss"));
    }
    // A Vary: * answer also ends reuse of what was stored for the URL before.
    send(&h, get("/was"), |_, _| {
        resp(
            200,
            &[("cache-control", "max-age=0"), ("etag", "\"1\"")],
            "x",
        )
    })
    .await;
    send(&h, get("/was"), |_, _| resp(200, &star, "y")).await;
    let ex = send(&h, get("/was"), |req, _| {
        assert_eq!(header(&req.headers, "if-none-match"), None);
        resp(200, &[], "z")
    })
    .await;
    assert_eq!(ex.upstream_calls, 1);
}

// === revalidation ===

#[tokio::test]
async fn a_304_is_merged_into_the_stored_response_and_refreshes_it() {
    let h = cache(json!({})).await;
    let lm = http_date(now(&h) - 3600);
    send(&h, get("/doc"), |_, _| {
        resp(
            200,
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"v1\""),
                ("last-modified", &lm),
                ("content-type", "text/plain"),
                ("x-version", "1"),
            ],
            "the body",
        )
    })
    .await;
    h.advance(secs(15));
    let mut seen = None;
    let ex = send(&h, get("/doc"), |req, _| {
        seen = Some((
            header(&req.headers, "if-none-match"),
            header(&req.headers, "if-modified-since"),
        ));
        resp(
            304,
            &[("cache-control", "max-age=60"), ("x-version", "2")],
            "",
        )
    })
    .await;
    assert_eq!(seen, Some((Some("\"v1\"".into()), Some(lm.clone()))));
    assert_eq!(ex.status(), Some(200));
    assert_eq!(label(&ex), "revalidated");
    assert_eq!(body(&ex), "the body");
    assert_eq!(ex.header("x-version").as_deref(), Some("2"));
    assert_eq!(ex.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(ex.header("age").as_deref(), Some("0"));
    // Refreshed: fresh for the 304's max-age=60, with the merged headers.
    h.advance(secs(59));
    let hit = expect_cached(&h, get("/doc")).await;
    assert_eq!(label(&hit), "hit");
    assert_eq!(hit.header("age").as_deref(), Some("59"));
    assert_eq!(hit.header("x-version").as_deref(), Some("2"));
    assert_eq!(body(&hit), "the body");
    // A 200 instead of a 304 replaces the entry.
    h.advance(secs(2));
    let replaced = send(&h, get("/doc"), |_, _| {
        resp(200, &[("cache-control", "max-age=60")], "new body")
    })
    .await;
    assert_eq!(label(&replaced), "miss");
    assert_eq!(body(&expect_cached(&h, get("/doc")).await), "new body");
}

#[tokio::test]
async fn request_no_cache_forces_revalidation() {
    let h = cache(json!({})).await;
    send(&h, get("/nc"), |_, _| {
        resp(
            200,
            &[("cache-control", "max-age=600"), ("etag", "\"e\"")],
            "b",
        )
    })
    .await;
    let no_cache = with_header(get("/nc"), "cache-control", "no-cache");
    let mut conditional = None;
    let ex = send(&h, no_cache, |req, _| {
        conditional = header(&req.headers, "if-none-match");
        resp(304, &[], "")
    })
    .await;
    assert_eq!(ex.upstream_calls, 1);
    assert_eq!(conditional.as_deref(), Some("\"e\""));
    assert_eq!(
        (label(&ex).as_str(), body(&ex).as_str()),
        ("revalidated", "b")
    );
    // Pragma: no-cache does the same when there is no Cache-Control.
    let pragma = with_header(get("/nc"), "pragma", "no-cache");
    let ex = send(&h, pragma, |_, _| resp(304, &[], "")).await;
    assert_eq!((ex.upstream_calls, label(&ex).as_str()), (1, "revalidated"));
    // Without it, the entry is still fresh.
    assert_eq!(label(&expect_cached(&h, get("/nc")).await), "hit");
}

// === RFC 5861 ===

#[tokio::test]
async fn stale_if_error_serves_stale_inside_the_window_only() {
    let h = cache(json!({})).await;
    send(&h, get("/sie"), |_, _| {
        resp(
            200,
            &[("cache-control", "max-age=10, stale-if-error=60")],
            "good",
        )
    })
    .await;
    // 20 s stale: the upstream is down, or answers 5xx.
    h.advance(secs(30));
    let down = send(&h, get("/sie"), |_, _| {
        Outcome::Error(UpstreamError::ConnectFailed)
    })
    .await;
    assert_eq!(down.upstream_calls, 1);
    assert_eq!(
        (label(&down).as_str(), body(&down).as_str()),
        ("stale", "good")
    );
    assert_eq!(down.header("age").as_deref(), Some("30"));
    for status in [500, 502, 503, 504] {
        let ex = send(&h, get("/sie"), |_, _| resp(status, &[], "oops")).await;
        assert_eq!(
            (ex.status(), label(&ex).as_str()),
            (Some(200), "stale"),
            "{status}"
        );
    }
    // Other errors pass.
    let not_found = send(&h, get("/sie"), |_, _| resp(404, &[], "gone")).await;
    assert_eq!(
        (not_found.status(), label(&not_found).as_str()),
        (Some(404), "miss")
    );
}

#[tokio::test]
async fn stale_if_error_ends_with_its_window_and_yields_to_must_revalidate() {
    let h = cache(json!({})).await;
    send(&h, get("/sie"), |_, _| {
        resp(
            200,
            &[
                ("cache-control", "max-age=10, stale-if-error=60"),
                ("etag", "\"1\""),
            ],
            "good",
        )
    })
    .await;
    h.advance(secs(70));
    let inside = send(&h, get("/sie"), |_, _| resp(503, &[], "")).await;
    assert_eq!(label(&inside), "stale");
    h.advance(secs(1));
    let outside = send(&h, get("/sie"), |_, _| resp(503, &[], "")).await;
    assert_eq!(
        (outside.status(), label(&outside).as_str()),
        (Some(503), "miss")
    );
    let err = send(&h, get("/sie"), |_, _| {
        Outcome::Error(UpstreamError::Timeout)
    })
    .await;
    assert!(matches!(
        err.outcome,
        Outcome::Error(UpstreamError::Timeout)
    ));

    send(&h, get("/mr"), |_, _| {
        resp(
            200,
            &[(
                "cache-control",
                "max-age=10, must-revalidate, stale-if-error=60",
            )],
            "x",
        )
    })
    .await;
    h.advance(secs(20));
    let ex = send(&h, get("/mr"), |_, _| resp(503, &[], "")).await;
    assert_eq!((ex.status(), label(&ex).as_str()), (Some(503), "miss"));
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_while_one_request_refreshes() {
    let h = cache(json!({})).await;
    let cc = [
        ("cache-control", "max-age=10, stale-while-revalidate=30"),
        ("etag", "\"1\""),
    ];
    send(&h, get("/swr"), |_, _| resp(200, &cc, "v1")).await;
    h.advance(secs(20));
    // The first request after staleness goes upstream (conditionally) to refresh…
    let first = h.on_request(&info("a", 1), &get("/swr")).await.unwrap();
    let (edit, memo) = match first {
        RequestAction::Continue((Some(edit), memo)) => (edit, memo),
        other => panic!("expected the refresher to go upstream, got {other:?}"),
    };
    assert_eq!(
        header(&edit.set_headers, "if-none-match").as_deref(),
        Some("\"1\"")
    );
    // …while the others are served stale, without the upstream.
    for id in ["b", "c"] {
        match h.on_request(&info(id, 1), &get("/swr")).await.unwrap() {
            RequestAction::Respond(r) => {
                assert_eq!(header(&r.headers, "x-weir-cache").as_deref(), Some("stale"));
                assert_eq!(header(&r.headers, "age").as_deref(), Some("20"));
                assert_eq!(r.body.as_deref(), Some(&b"v1"[..]));
            }
            other => panic!("expected stale, got {other:?}"),
        }
    }
    let refreshed = resp(
        200,
        &[("cache-control", "max-age=10, stale-while-revalidate=30")],
        "v2",
    );
    let action = h
        .on_response(&info("a", 1), &get("/swr"), memo.as_deref(), &refreshed)
        .await
        .unwrap();
    assert!(matches!(action, ResponseAction::Continue(Some(_))));
    let hit = expect_cached(&h, get("/swr")).await;
    assert_eq!((label(&hit).as_str(), body(&hit).as_str()), ("hit", "v2"));
}

#[tokio::test]
async fn stale_while_revalidate_window_edges() {
    let h = cache(json!({})).await;
    let cc = [("cache-control", "max-age=10, stale-while-revalidate=30")];
    send(&h, get("/edge"), |_, _| resp(200, &cc, "v1")).await;
    // 30 s stale: still inside. The lock is free again after each refresh.
    h.advance(secs(40));
    let refresher = send(&h, get("/edge"), |_, _| resp(500, &[], "")).await;
    assert_eq!(
        (refresher.upstream_calls, refresher.status()),
        (1, Some(500))
    );
    let again = send(&h, get("/edge"), |_, _| resp(500, &[], "")).await;
    assert_eq!(
        again.upstream_calls, 1,
        "the failed refresh released the lock"
    );
    // 31 s stale: outside; every request waits for the upstream.
    h.advance(secs(1));
    let h2 = h.on_request(&info("x", 1), &get("/edge")).await.unwrap();
    assert!(matches!(h2, RequestAction::Continue(_)), "{h2:?}");
    let h3 = h.on_request(&info("y", 1), &get("/edge")).await.unwrap();
    assert!(matches!(h3, RequestAction::Continue(_)), "{h3:?}");
}

// === default_ttl ===

#[tokio::test]
async fn default_ttl_is_opt_in() {
    let plain = [("content-type", "application/json")];
    let off = cache(json!({})).await;
    assert!(!stored(&off, get("/api"), 200, &plain).await);

    let on = cache(json!({ "default_ttl": "30s" })).await;
    send(&on, get("/api"), |_, _| resp(200, &plain, "[1]")).await;
    on.advance(secs(29));
    assert_eq!(
        expect_cached(&on, get("/api"))
            .await
            .header("age")
            .as_deref(),
        Some("29")
    );
    on.advance(secs(1));
    assert_eq!(
        send(&on, get("/api"), |_, _| resp(200, &plain, "[2]"))
            .await
            .upstream_calls,
        1
    );
    // Not for errors, not over no-store/private, and explicit freshness wins.
    assert!(!stored(&on, get("/err"), 500, &plain).await);
    assert!(!stored(&on, get("/priv"), 200, &[("cache-control", "private")]).await);
    send(&on, get("/explicit"), |_, _| {
        resp(200, &[("cache-control", "max-age=5")], "x")
    })
    .await;
    on.advance(secs(5));
    assert_eq!(
        send(&on, get("/explicit"), |_, _| resp(200, &[], "y"))
            .await
            .upstream_calls,
        1
    );
}

// === x-weir-cache ===

#[tokio::test]
async fn x_weir_cache_on_every_response() {
    let h = cache(json!({})).await;
    let cc = [
        ("cache-control", "max-age=5, stale-if-error=100"),
        ("etag", "\"1\""),
    ];
    let mut labels = Vec::new();
    labels.push(label(
        &send(&h, get("/l"), |_, _| resp(200, &cc, "x")).await,
    ));
    labels.push(label(&expect_cached(&h, get("/l")).await));
    h.advance(secs(6));
    labels.push(label(&send(&h, get("/l"), |_, _| resp(304, &[], "")).await));
    h.advance(secs(6));
    labels.push(label(&send(&h, get("/l"), |_, _| resp(502, &[], "")).await));
    labels.push(label(
        &send(&h, request("OPTIONS", "/l"), |_, _| resp(204, &[], "")).await,
    ));
    labels.push(label(
        &send(&h, get("/other"), |_, _| resp(500, &[], "")).await,
    ));
    assert_eq!(
        labels,
        ["miss", "hit", "revalidated", "stale", "miss", "miss"]
    );
}

// === size caps ===

#[tokio::test]
async fn max_entry_bytes_leaves_bigger_responses_unstored() {
    let h = cache(json!({ "max_entry_bytes": "2KiB" })).await;
    let cc = [("cache-control", "max-age=60")];
    let small = "s".repeat(1000);
    let big = "b".repeat(3000);
    send(&h, get("/small"), |_, _| resp(200, &cc, &small)).await;
    send(&h, get("/big"), |_, _| resp(200, &cc, &big)).await;
    assert_eq!(body(&expect_cached(&h, get("/small")).await), small);
    let again = send(&h, get("/big"), |_, _| resp(200, &cc, &big)).await;
    assert_eq!((again.upstream_calls, body(&again)), (1, big));
}

#[tokio::test]
async fn max_total_bytes_refuses_entries_once_full() {
    let h = cache(json!({ "max_entry_bytes": "2KiB", "max_total_bytes": "5KiB" })).await;
    let cc = [("cache-control", "max-age=60")];
    let fill = "f".repeat(1500);
    for i in 0..4 {
        send(&h, get(&format!("/f/{i}")), |_, _| resp(200, &cc, &fill)).await;
    }
    // Three entries of about 1.6 KiB fit in 5 KiB; the fourth does not.
    for i in 0..3 {
        expect_cached(&h, get(&format!("/f/{i}"))).await;
    }
    let fourth = send(&h, get("/f/3"), |_, _| resp(200, &cc, &fill)).await;
    assert_eq!(fourth.upstream_calls, 1);
    // When the stored entries expire (and their counters with them) there is room again.
    h.advance(secs(200));
    send(&h, get("/f/3"), |_, _| resp(200, &cc, &fill)).await;
    expect_cached(&h, get("/f/3")).await;
}

// === config ===

#[tokio::test]
async fn invalid_config_is_refused_naming_the_key() {
    for (config, key) in [
        (json!({ "default_ttl": "soon" }), "default_ttl"),
        (json!({ "max_entry_bytes": "big" }), "max_entry_bytes"),
        (json!({ "max_total_bytes": "1KiB" }), "max_entry_bytes"),
        (json!({ "revalidation_window": 5 }), "revalidation_window"),
        (json!({ "ttl": "5s" }), "ttl"),
    ] {
        let err = Harness::builtin("cache", config.clone())
            .await
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(text.contains(key), "{config}: {text}");
    }
}
