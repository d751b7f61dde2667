//! The `cache` filter end to end: a real weir, a scripted upstream, real time. No test
//! sleeps: staleness comes from `max-age=0`, and whether the upstream was called is read
//! from its own request count.

use crate::support::client::client;
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// weir with one route, `/`, through the built-in cache to `upstream_url`.
async fn weir(upstream_url: &str) -> Weir {
    Weir::start(&format!(
        r#"[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{upstream_url}"

[[routes]]
name = "cached"
upstream = "api"
filters = [{{ use = "cache", config = {{ max_entry_bytes = "256KiB" }} }}]
"#
    ))
    .await
}

/// GET `path` with these headers; returns status, `x-weir-cache`, `Age` and body.
async fn get(
    weir: &Weir,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, Option<u64>, String) {
    let mut req = client().get(weir.url(path));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let text = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_owned())
    };
    let label = text("x-weir-cache").expect("x-weir-cache on every response");
    let age = text("age").map(|a| a.parse::<u64>().expect("Age in whole seconds"));
    let status = resp.status().as_u16();
    (status, label, age, resp.text().await.expect("body"))
}

#[tokio::test]
async fn a_hit_is_served_without_the_upstream_and_carries_age() {
    let up = Upstream::start(|_, i| {
        Reply::ok()
            .header("cache-control", "max-age=300")
            .body(format!("response {i}"))
    })
    .await;
    let weir = weir(&up.url()).await;

    let (status, label, _, body) = get(&weir, "/items?page=1", &[]).await;
    assert_eq!(
        (status, label.as_str(), body.as_str()),
        (200, "miss", "response 0")
    );
    for _ in 0..3 {
        let (status, label, age, body) = get(&weir, "/items?page=1", &[]).await;
        assert_eq!(
            (status, label.as_str(), body.as_str()),
            (200, "hit", "response 0")
        );
        // Whole seconds since the upstream's Date; generous for a loaded machine.
        let age = age.expect("Age on a hit");
        assert!(age <= 30, "Age {age}");
    }
    assert_eq!(up.count(), 1);
    // Another query string is another URL.
    let (_, label, _, body) = get(&weir, "/items?page=2", &[]).await;
    assert_eq!((label.as_str(), body.as_str()), ("miss", "response 1"));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn vary_keeps_variants_apart() {
    let up = Upstream::start(|req, _| {
        let lang = req
            .header_str("accept-language")
            .unwrap_or("none")
            .to_owned();
        Reply::ok()
            .header("cache-control", "max-age=300")
            .header("vary", "Accept-Language")
            .body(format!("hello in {lang}"))
    })
    .await;
    let weir = weir(&up.url()).await;

    for round in 0..2 {
        for lang in ["en", "fr"] {
            let (_, label, _, body) = get(&weir, "/greet", &[("accept-language", lang)]).await;
            assert_eq!(body, format!("hello in {lang}"));
            assert_eq!(
                label,
                if round == 0 { "miss" } else { "hit" },
                "{lang} round {round}"
            );
        }
    }
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn no_store_and_private_are_never_stored() {
    let up = Upstream::start(|req, i| {
        let cc = if req.path.starts_with("/private") {
            "private, max-age=300"
        } else {
            "no-store, max-age=300"
        };
        Reply::ok().header("cache-control", cc).body(format!("{i}"))
    })
    .await;
    let weir = weir(&up.url()).await;

    for path in ["/no-store", "/private"] {
        for _ in 0..2 {
            let (status, label, age, _) = get(&weir, path, &[]).await;
            assert_eq!((status, label.as_str(), age), (200, "miss", None), "{path}");
        }
    }
    assert_eq!(up.count(), 4);
}

#[tokio::test]
async fn a_304_revalidates_and_refreshes_the_entry() {
    // Stale at once (max-age=0) but with an ETag; a matching If-None-Match gets a 304
    // that makes the entry fresh for 5 minutes.
    let up = Upstream::start(|req, _| {
        if req.header_str("if-none-match") == Some("\"v1\"") {
            Reply::new(304)
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=300")
        } else {
            Reply::ok()
                .header("etag", "\"v1\"")
                .header("cache-control", "max-age=0")
                .header("content-type", "text/plain")
                .body("the document")
        }
    })
    .await;
    let weir = weir(&up.url()).await;

    let (_, label, _, body) = get(&weir, "/doc", &[]).await;
    assert_eq!((label.as_str(), body.as_str()), ("miss", "the document"));
    assert!(!up.request(0).has_header("if-none-match"));

    let (status, label, age, body) = get(&weir, "/doc", &[]).await;
    assert_eq!(
        (status, label.as_str(), body.as_str()),
        (200, "revalidated", "the document")
    );
    assert!(age.is_some());
    assert_eq!(up.count(), 2);
    assert_eq!(up.request(1).header_str("if-none-match"), Some("\"v1\""));

    let (_, label, _, body) = get(&weir, "/doc", &[]).await;
    assert_eq!((label.as_str(), body.as_str()), ("hit", "the document"));
    assert_eq!(up.count(), 2);
}

#[tokio::test]
async fn stale_if_error_serves_the_stale_copy_when_the_upstream_is_down() {
    let up = Upstream::start(|_, i| {
        Reply::ok()
            .header("cache-control", "max-age=0, stale-if-error=300")
            .body(format!("copy {i}"))
    })
    .await;
    let weir = weir(&up.url()).await;

    let (_, label, _, body) = get(&weir, "/report", &[]).await;
    assert_eq!((label.as_str(), body.as_str()), ("miss", "copy 0"));
    // Stale at once, but the upstream is up: it answers.
    let (_, label, _, body) = get(&weir, "/report", &[]).await;
    assert_eq!((label.as_str(), body.as_str()), ("miss", "copy 1"));
    assert_eq!(up.count(), 2);

    // Stop the upstream: weir cannot connect, and serves the stored copy instead of 502.
    drop(up);
    let (status, label, age, body) = get(&weir, "/report", &[]).await;
    assert_eq!(
        (status, label.as_str(), body.as_str()),
        (200, "stale", "copy 1")
    );
    assert!(age.is_some());
    // A URL with nothing stored gets weir's own error.
    let resp = client().get(weir.url("/never")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
}
