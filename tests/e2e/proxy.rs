//! The proxy's foundation, end to end: routing, request ids, the built-in `headers`
//! filter, streaming big bodies in bounded memory, HTTP/2 from clients, TLS to upstreams
//! and from clients, and the listener's size limits.
//!
//! Every test starts the real `weir` binary with its own config (port 0) and in-process
//! upstreams on 127.0.0.1, then asserts what the client got and what the upstream saw.

use std::time::Duration;

use http::Version;
use serde_json::Value;

use crate::support::body::{self, Digest, pattern_digest};
use crate::support::client::{self, client, h2_client};
use crate::support::tls::{self, Ca, Pki};
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::{Weir, WeirBuilder};

// === helpers ===

/// An upstream that answers every request with 200, `x-upstream: NAME` and body NAME.
async fn named_upstream(name: &'static str) -> Upstream {
    Upstream::start(move |_, _| Reply::ok().header("x-upstream", name).body(name)).await
}

/// The `x-request-id` weir answered with.
fn request_id(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("x-request-id")
        .expect("every response carries x-request-id")
        .to_str()
        .expect("x-request-id is text")
        .to_owned()
}

/// A request id weir made up: 128 random bits as 32 lowercase hex digits.
fn assert_generated_id(id: &str) {
    assert_eq!(id.len(), 32, "generated request id {id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "generated request id {id:?}"
    );
}

/// Checks that `resp` is weir's JSON error with this status and code, that the body has
/// exactly the documented fields and that `request_id` matches the header; returns it.
async fn error_json(resp: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(resp.status(), status, "status of the {code} error");
    assert_eq!(resp.headers()["content-type"], "application/json");
    let id = request_id(&resp);
    let text = resp.text().await.expect("read error body");
    let v: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("error body is not JSON ({e}): {text}"));
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {text}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["error", "message", "request_id", "route"], "{text}");
    assert_eq!(v["error"], code, "{text}");
    assert_eq!(v["request_id"], id.as_str(), "{text}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{text}"
    );
    v
}

// === routing ===

#[tokio::test]
async fn matching_route_forwards_method_path_body_and_request_id() {
    let up = Upstream::start(|req, _| {
        Reply::new(201)
            .header("x-seen-path", &req.path)
            .body("created")
    })
    .await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"
"#,
        up.url()
    ))
    .await;
    let c = client();

    let resp = c
        .post(weir.url("/api/items?page=2"))
        .header("x-custom", "yes")
        .body("hello upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let id = request_id(&resp);
    assert_generated_id(&id);
    assert_eq!(resp.headers()["x-seen-path"], "/api/items?page=2");
    assert_eq!(resp.text().await.unwrap(), "created");

    let r = up.request(0);
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/api/items?page=2");
    assert_eq!(r.body_str(), "hello upstream");
    assert_eq!(r.header_str("x-custom"), Some("yes"));
    assert_eq!(r.header_all("x-request-id"), [id.as_bytes()]);
    // weir addresses the upstream by its own origin, not by the name the client used.
    assert_eq!(r.authority, Some(up.addr().to_string()));

    // A client's own request id is kept, both ways.
    let resp = c
        .get(weir.url("/api/mine"))
        .header("x-request-id", "client-id-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers().get_all("x-request-id").iter().count(), 1);
    assert_eq!(request_id(&resp), "client-id-42");
    let r = up.request(1);
    assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/api/mine"));
    assert_eq!(r.header_all("x-request-id"), [&b"client-id-42"[..]]);

    // Without one, every request gets a fresh id.
    let resp = c.get(weir.url("/api/again")).send().await.unwrap();
    let other = request_id(&resp);
    assert_generated_id(&other);
    assert_ne!(other, id);
    assert_eq!(
        up.request(2).header_str("x-request-id"),
        Some(other.as_str())
    );
    assert_eq!(up.count(), 3);
}

#[tokio::test]
async fn bodies_small_and_large_go_whole_on_one_connection_each_way() {
    let up =
        Upstream::start(|req, _| Reply::ok().body(format!("{} {}", req.path, req.body_len))).await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .await;
    // In one write: a small JSON body that came with its head, requests without one,
    // and a body larger than weir's own HTTP/1 sides take whole (16 KiB), which hyper's
    // server and client stream; the last asks to close.
    let small = r#"{"amount":100,"currency":"EUR"}"#;
    let large = "x".repeat(40_000);
    let post = |path: &str, body: &str, last: bool| {
        let close = if last { "connection: close\r\n" } else { "" };
        format!(
            "POST {path} HTTP/1.1\r\nhost: weir\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{close}\r\n{body}",
            body.len()
        )
    };
    let get = "GET /get HTTP/1.1\r\nhost: weir\r\n\r\n";
    let requests = [
        post("/small", small, false),
        get.to_owned(),
        post("/large", &large, false),
        get.to_owned(),
        post("/last", small, true),
    ]
    .concat();
    let said = crate::support::raw::converse(weir.addr(), &requests).await;
    let answers: Vec<&str> = said
        .split("HTTP/1.1 ")
        .skip(1)
        .map(|a| a.rsplit("\r\n\r\n").next().unwrap())
        .collect();
    assert_eq!(
        answers,
        ["/small 31", "/get 0", "/large 40000", "/get 0", "/last 31"],
        "{said}"
    );
    assert_eq!(said.matches("HTTP/1.1 200 OK").count(), 5, "{said}");

    let got: Vec<(String, String, usize)> = up
        .requests()
        .into_iter()
        .map(|r| (r.path.clone(), r.body_str(), r.conn))
        .collect();
    assert_eq!(
        got,
        [
            ("/small".to_owned(), small.to_owned(), 0),
            ("/get".to_owned(), String::new(), 0),
            ("/large".to_owned(), large.clone(), 0),
            ("/get".to_owned(), String::new(), 0),
            ("/last".to_owned(), small.to_owned(), 0),
        ],
        "every body whole, every request on the one upstream connection"
    );
    for r in up.requests().into_iter().filter(|r| r.body_len > 0) {
        assert_eq!(
            r.header_all("content-length"),
            [r.body_len.to_string().as_bytes()],
            "{}: one content-length, the body's own",
            r.path
        );
    }
}

/// A client's `POST` with an empty body reaches the upstream with `Content-Length: 0`,
/// whether it sent one or not: weir takes the client's framing headers off, and some
/// servers (Google's front end among them) answer a `POST` without one with 411 Length
/// Required. Methods that anticipate no content (`GET`, `DELETE`) get none, and a
/// chunked body stays chunked, its framing its own, though it has no data. Both of
/// weir's HTTP/1 client sides send it: its own exchange for the first five requests,
/// then hyper's client, which takes the upstream connection over for the chunked body
/// (it streams) and keeps it. Which side takes which request is for the unit tests in
/// `upstream.rs`; this one holds what the upstream saw.
#[tokio::test]
async fn an_empty_body_goes_up_with_a_zero_length_where_the_method_expects_content() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .await;
    let empty = [
        "POST /post-cl0 HTTP/1.1\r\nhost: weir\r\ncontent-length: 0\r\n\r\n",
        "POST /post-none HTTP/1.1\r\nhost: weir\r\n\r\n",
        "PUT /put-cl0 HTTP/1.1\r\nhost: weir\r\ncontent-length: 0\r\n\r\n",
        "DELETE /delete HTTP/1.1\r\nhost: weir\r\n\r\n",
        "GET /get HTTP/1.1\r\nhost: weir\r\n\r\n",
        "PATCH /patch-chunked HTTP/1.1\r\nhost: weir\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    ]
    .concat();
    let large = "x".repeat(40_000);
    let requests = [
        empty.clone(),
        format!(
            "POST /large HTTP/1.1\r\nhost: weir\r\ncontent-length: {}\r\n\r\n{large}",
            large.len()
        ),
        empty,
        "GET /last HTTP/1.1\r\nhost: weir\r\nconnection: close\r\n\r\n".to_owned(),
    ]
    .concat();
    let said = crate::support::raw::converse(weir.addr(), &requests).await;
    assert_eq!(said.matches("HTTP/1.1 200 OK").count(), 14, "{said}");

    // Path, its framing headers, body length and upstream connection.
    type Seen = (String, Vec<String>, u64, usize);
    let got: Vec<Seen> = up
        .requests()
        .into_iter()
        .map(|r| {
            let framing = ["content-length", "transfer-encoding"]
                .into_iter()
                .flat_map(|name| {
                    r.header_all(name)
                        .into_iter()
                        .map(move |v| format!("{name}: {}", String::from_utf8_lossy(v)))
                });
            (r.path.clone(), framing.collect(), r.body_len, r.conn)
        })
        .collect();
    let empty_ones = [
        ("/post-cl0", Some("content-length: 0")),
        ("/post-none", Some("content-length: 0")),
        ("/put-cl0", Some("content-length: 0")),
        ("/delete", None),
        ("/get", None),
        ("/patch-chunked", Some("transfer-encoding: chunked")),
    ];
    let seen = |(path, framing): &(&str, Option<&str>)| -> Seen {
        (
            path.to_string(),
            framing.iter().map(|f| f.to_string()).collect(),
            0,
            0,
        )
    };
    let mut want: Vec<Seen> = empty_ones.iter().map(seen).collect();
    want.push((
        "/large".into(),
        vec!["content-length: 40000".into()],
        40_000,
        0,
    ));
    want.extend(empty_ones.iter().map(seen));
    want.push(("/last".into(), vec![], 0, 0));
    assert_eq!(
        got, want,
        "one upstream connection, the own exchange's, then hyper's"
    );
}

#[tokio::test]
async fn unmatched_request_gets_404_json_and_reaches_nobody() {
    let up = named_upstream("api").await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"
"#,
        up.url()
    ))
    .await;
    let c = client();

    let resp = c.get(weir.url("/elsewhere/x?q=1")).send().await.unwrap();
    let v = error_json(resp, 404, "no_route").await;
    assert_eq!(v["route"], Value::Null);
    assert_generated_id(v["request_id"].as_str().unwrap());
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("GET /elsewhere/x"), "{message}");

    // The prefix is a plain string prefix: "/api" is not under "/api/".
    let resp = c
        .post(weir.url("/api"))
        .header("x-request-id", "mine-404")
        .body("never forwarded")
        .send()
        .await
        .unwrap();
    let v = error_json(resp, 404, "no_route").await;
    assert_eq!(v["route"], Value::Null);
    assert_eq!(v["request_id"], "mine-404");

    // Nothing reached the upstream, not even a connection.
    assert_eq!(up.count(), 0);
    assert_eq!(up.connections(), 0);

    // The upstream is reachable, so the 404s above were weir's routing, not a dead upstream.
    let resp = c.get(weir.url("/api/ok")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-upstream"], "api");
    assert_eq!(up.count(), 1);
    assert_eq!(up.request(0).path, "/api/ok");
}

#[tokio::test]
async fn strip_prefix_forwards_the_rest_of_the_path_and_the_query() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.up]
url = "{}"

[[routes]]
name = "pay"
match = {{ path_prefix = "/pay/" }}
upstream = "up"
strip_prefix = true

[[routes]]
name = "keep"
match = {{ path_prefix = "/keep/" }}
upstream = "up"
"#,
        up.url()
    ))
    .await;
    let c = client();
    for path in ["/pay/charges?x=1", "/pay/", "/pay/a/b/c", "/keep/a?b=2"] {
        let resp = c.get(weir.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/charges?x=1", "/", "/a/b/c", "/keep/a?b=2"]);
}

#[tokio::test]
async fn first_matching_route_wins() {
    let (a, b, c) = (
        named_upstream("a").await,
        named_upstream("b").await,
        named_upstream("c").await,
    );
    // Order decides, not specificity: "/v1/special/" comes after "/v1/" and never matches.
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.a]
url = "{}"
[upstreams.b]
url = "{}"
[upstreams.c]
url = "{}"

[[routes]]
name = "v1"
match = {{ path_prefix = "/v1/" }}
upstream = "a"

[[routes]]
name = "everything"
match = {{ path_prefix = "/" }}
upstream = "b"

[[routes]]
name = "shadowed"
match = {{ path_prefix = "/v1/special/" }}
upstream = "c"
"#,
        a.url(),
        b.url(),
        c.url()
    ))
    .await;
    let http = client();
    for (path, want) in [
        ("/v1/special/x", "a"),
        ("/v1/items", "a"),
        ("/v2/items", "b"),
        ("/", "b"),
    ] {
        let resp = http.get(weir.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.headers()["x-upstream"], want, "{path}");
    }
    assert_eq!((a.count(), b.count(), c.count()), (2, 2, 0));
    assert_eq!(a.request(0).path, "/v1/special/x");
    assert_eq!(b.request(1).path, "/");
}

#[tokio::test]
async fn routes_match_on_host_method_and_headers() {
    let ups = [
        named_upstream("wildcard").await,
        named_upstream("exact").await,
        named_upstream("writes").await,
        named_upstream("billing").await,
    ];
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.wildcard]
url = "{}"
[upstreams.exact]
url = "{}"
[upstreams.writes]
url = "{}"
[upstreams.billing]
url = "{}"

[[routes]]
name = "wildcard"
match = {{ host = "*.example.test", path_prefix = "/m/" }}
upstream = "wildcard"

[[routes]]
name = "exact"
match = {{ host = "api.exact.test" }}
upstream = "exact"

[[routes]]
name = "writes"
match = {{ path_prefix = "/m/", methods = ["POST", "PUT"] }}
upstream = "writes"

[[routes]]
name = "billing"
match = {{ path_prefix = "/m/", headers = {{ x-team = "billing" }} }}
upstream = "billing"
"#,
        ups[0].url(),
        ups[1].url(),
        ups[2].url(),
        ups[3].url()
    ))
    .await;
    let c = client();
    // (method, path, host header, x-team header, expected upstream or None for a 404)
    type Case = (
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
    );
    let cases: &[Case] = &[
        // Host: a subdomain at any depth, any port, any case.
        (
            "GET",
            "/m/1",
            Some("api.example.test:8080"),
            None,
            Some("wildcard"),
        ),
        (
            "GET",
            "/m/2",
            Some("Deep.API.Example.Test"),
            None,
            Some("wildcard"),
        ),
        // The bare domain is not a subdomain; a GET without the team header falls through.
        ("GET", "/m/3", Some("example.test"), None, None),
        // The wildcard route also needs its path.
        ("GET", "/other", Some("api.example.test"), None, None),
        (
            "GET",
            "/anything",
            Some("API.EXACT.TEST:443"),
            None,
            Some("exact"),
        ),
        ("GET", "/m/4", Some("other.exact.test"), None, None),
        // Methods.
        ("POST", "/m/5", None, None, Some("writes")),
        ("PUT", "/m/6", None, None, Some("writes")),
        ("GET", "/m/7", None, None, None),
        ("DELETE", "/m/8", None, None, None),
        // Headers: exact value.
        ("GET", "/m/9", None, Some("billing"), Some("billing")),
        ("GET", "/m/10", None, Some("ops"), None),
        ("GET", "/m/11", None, Some("Billing"), None),
        // Both "writes" and "billing" match: the first one wins.
        ("POST", "/m/12", None, Some("billing"), Some("writes")),
    ];
    for &(method, path, host, team, want) in cases {
        let mut req = c.request(method.parse().unwrap(), weir.url(path));
        if let Some(host) = host {
            req = req.header("host", host);
        }
        if let Some(team) = team {
            req = req.header("x-team", team);
        }
        let resp = req.send().await.unwrap();
        let what = format!("{method} {path} host={host:?} x-team={team:?}");
        match want {
            Some(name) => {
                assert_eq!(resp.status(), 200, "{what}");
                assert_eq!(resp.headers()["x-upstream"], name, "{what}");
            }
            None => {
                let v = error_json(resp, 404, "no_route").await;
                assert_eq!(v["route"], Value::Null, "{what}");
            }
        }
    }
    let counts: Vec<usize> = ups.iter().map(Upstream::count).collect();
    assert_eq!(counts, [2, 1, 3, 1]);
    let paths: Vec<String> = ups[2].requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/m/5", "/m/6", "/m/12"]);
    // Each upstream gets its own authority, once, whatever host the client asked for.
    for up in &ups {
        for r in up.requests() {
            assert_eq!(r.authority, Some(up.addr().to_string()), "{}", r.path);
            let hosts = r.headers.iter().filter(|(n, _)| n == "host").count();
            assert_eq!(hosts, 1, "{}: {:?}", r.path, r.headers);
        }
    }
}

// === the built-in headers filter ===

#[tokio::test]
async fn headers_filter_edits_request_and_response() {
    let up = Upstream::start(|_, _| {
        Reply::ok()
            .header("server", "up")
            .header("x-upstream-kept", "1")
            .body("filtered")
    })
    .await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "api"
strip_prefix = true
filters = [{{ use = "headers", config = {{ request = {{ set = {{ "x-api-key" = "k1" }}, remove = ["cookie"] }}, response = {{ set = {{ "x-served-by" = "weir" }}, remove = ["server"] }} }} }}]
"#,
        up.url()
    ))
    .await;
    let resp = client()
        .get(weir.url("/api/hello?x=1"))
        .header("cookie", "session=abc")
        .header("x-api-key", "client-supplied")
        .header("x-client-kept", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(
        h.get_all("x-served-by").iter().collect::<Vec<_>>(),
        ["weir"]
    );
    assert!(h.get("server").is_none(), "server header leaked: {h:?}");
    assert_eq!(h["x-upstream-kept"], "1");
    let id = request_id(&resp);
    assert_generated_id(&id);
    assert_eq!(resp.text().await.unwrap(), "filtered");

    let r = up.request(0);
    assert_eq!(r.path, "/hello?x=1");
    // `set` replaces the client's value rather than adding a second one.
    assert_eq!(r.header_all("x-api-key"), [&b"k1"[..]]);
    assert!(!r.has_header("cookie"), "cookie reached the upstream");
    assert_eq!(r.header_str("x-client-kept"), Some("2"));
    assert_eq!(r.header_str("x-request-id"), Some(id.as_str()));
    assert_eq!(up.count(), 1);
}

/// An edit of more than three changes: the SDK sends it in one `change-headers` (fewer
/// go one call each; the SDK's unit tests check which path an edit takes). The client
/// and the upstream see the same edits either way.
#[tokio::test]
async fn headers_filter_makes_many_changes_each_way() {
    let up = Upstream::start(|_, _| {
        Reply::ok()
            .header("server", "up")
            .header("x-powered-by", "php")
            .header("x-upstream-kept", "1")
            .header("x-tier", "old")
    })
    .await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
upstream = "api"
filters = [{{ use = "headers", config = {{ request = {{ set = {{ "x-api-key" = "k1", "x-team" = "payments", "x-env" = "prod" }}, remove = ["cookie", "x-forwarded-for"] }}, response = {{ set = {{ "x-served-by" = "weir", "x-tier" = "gold" }}, remove = ["server", "x-powered-by"] }} }} }}]
"#,
        up.url()
    ))
    .await;
    let resp = client()
        .get(weir.url("/many"))
        .header("cookie", "session=abc")
        .header("x-forwarded-for", "10.0.0.1")
        .header("x-team", "client-supplied")
        .header("x-client-kept", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["x-served-by"], "weir");
    assert_eq!(h.get_all("x-tier").iter().collect::<Vec<_>>(), ["gold"]);
    assert!(
        h.get("server").is_none() && h.get("x-powered-by").is_none(),
        "{h:?}"
    );
    assert_eq!(h["x-upstream-kept"], "1");

    let r = up.request(0);
    assert_eq!(r.header_all("x-api-key"), [&b"k1"[..]]);
    assert_eq!(r.header_all("x-team"), [&b"payments"[..]]);
    assert_eq!(r.header_str("x-env"), Some("prod"));
    assert!(!r.has_header("cookie") && !r.has_header("x-forwarded-for"));
    assert_eq!(r.header_str("x-client-kept"), Some("2"));
}

// === streaming ===

#[tokio::test]
async fn big_bodies_stream_both_ways_in_bounded_memory() {
    const LEN: u64 = 200 << 20;
    const MAX_RSS: u64 = 100 << 20;
    // Counts and checksums the upload without keeping it; answers with LEN pattern bytes.
    let up = Upstream::sink(LEN).await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"
max_body_bytes = "1GiB"

[upstreams.sink]
url = "{}"

[[routes]]
name = "big"
match = {{ path_prefix = "/big/" }}
upstream = "sink"
timeout = "10m"
"#,
        up.url()
    ))
    .await;
    let started_rss = weir.rss_bytes();
    // Moving 400 MB through a debug build on a busy machine takes a while.
    let c = client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let h2 = client::builder()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    for (i, (name, c)) in [("http/1.1", c), ("h2c", h2)].into_iter().enumerate() {
        let mut resp = c
            .put(weir.url(&format!("/big/upload/{name}")))
            .body(client::pattern_body(LEN))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(
            resp.headers()["content-length"],
            LEN.to_string().as_str(),
            "{name}"
        );
        // Checksummed chunk by chunk, never held whole.
        let mut digest = Digest::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        {
            digest.update(&chunk);
        }
        assert_eq!(
            digest.finish(),
            pattern_digest(LEN),
            "{name}: response body"
        );

        let r = up.request(i);
        assert_eq!(r.path, format!("/big/upload/{name}"));
        assert_eq!(
            (r.body_len, r.body_crc32),
            pattern_digest(LEN),
            "{name}: request body"
        );
    }
    assert_eq!(up.count(), 2);
    let peak = weir.peak_rss_bytes();
    assert!(
        peak < MAX_RSS,
        "weir's peak RSS was {} MiB (at start {} MiB) after streaming {} MiB each way, twice",
        peak >> 20,
        started_rss >> 20,
        LEN >> 20
    );
}

// === HTTP/2 ===

#[tokio::test]
async fn h2c_clients_are_served() {
    let up = Upstream::start(|req, _| Reply::ok().body(format!("echo {}", req.body_str()))).await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/h2/" }}
upstream = "api"
strip_prefix = true
"#,
        up.url()
    ))
    .await;
    let h2 = h2_client();
    for i in 0..3 {
        let resp = h2
            .post(weir.url(&format!("/h2/echo/{i}?v=2")))
            .header("x-request-id", format!("h2-{i}"))
            .body(format!("body {i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), Version::HTTP_2);
        assert_eq!(resp.status(), 200);
        assert_eq!(request_id(&resp), format!("h2-{i}"));
        assert_eq!(resp.text().await.unwrap(), format!("echo body {i}"));
        let r = up.request(i);
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/echo/{i}?v=2"));
        assert_eq!(r.body_str(), format!("body {i}"));
        assert_eq!(
            r.header_str("x-request-id"),
            Some(format!("h2-{i}").as_str())
        );
    }
    // Errors come back over HTTP/2 too.
    let resp = h2.get(weir.url("/nowhere")).send().await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    error_json(resp, 404, "no_route").await;
    assert_eq!(up.count(), 3);
}

// === TLS to upstreams ===

#[tokio::test]
async fn tls_upstream_with_a_private_ca_negotiates_h2() {
    let pki = Pki::new();
    let h2_up = Upstream::builder()
        .tls(pki.server.server_config())
        .reply(|_, _| Reply::ok().body("secure"))
        .start()
        .await;
    // The same certificate, but offering only HTTP/1.1 by ALPN.
    let h1_up = Upstream::builder()
        .tls(tls::server_config(&pki.server, None, &[b"http/1.1"]))
        .reply(|_, _| Reply::ok().body("secure h1"))
        .start()
        .await;
    let weir = WeirBuilder::new(format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.secure]
url = "https://localhost:{}"
tls = {{ ca = "certs/ca.pem" }}

[upstreams.secure-h1]
url = "https://localhost:{}"
tls = {{ ca = "certs/ca.pem" }}

[[routes]]
name = "secure"
match = {{ path_prefix = "/s/" }}
upstream = "secure"
strip_prefix = true

[[routes]]
name = "secure-h1"
match = {{ path_prefix = "/s1/" }}
upstream = "secure-h1"
strip_prefix = true
"#,
        h2_up.port(),
        h1_up.port()
    ))
    .files(pki.files())
    .start()
    .await;
    let c = client();

    let resp = c
        .post(weir.url("/s/charge?amount=5"))
        .body("pay")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = request_id(&resp);
    assert_eq!(resp.text().await.unwrap(), "secure");
    let r = h2_up.request(0);
    assert_eq!(r.version, Version::HTTP_2, "weir offers h2 by ALPN");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, "/charge?amount=5");
    assert_eq!(r.body_str(), "pay");
    assert_eq!(r.authority, Some(format!("localhost:{}", h2_up.port())));
    assert_eq!(r.header_str("x-request-id"), Some(id.as_str()));

    let resp = c.get(weir.url("/s1/plain")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "secure h1");
    let r = h1_up.request(0);
    assert_eq!(r.version, Version::HTTP_11);
    assert_eq!(r.path, "/plain");
    assert_eq!(r.authority, Some(format!("localhost:{}", h1_up.port())));

    assert_eq!((h2_up.count(), h1_up.count()), (1, 1));
    assert_eq!(
        (h2_up.handshake_failures(), h1_up.handshake_failures()),
        (0, 0)
    );
}

#[tokio::test]
async fn tls_upstream_with_an_untrusted_certificate_gets_502() {
    let pki = Pki::new();
    let up = Upstream::builder()
        .tls(pki.untrusted.server_config())
        .start()
        .await;
    let origin = format!("https://localhost:{}", up.port());
    let weir = WeirBuilder::new(format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[upstreams.shady]
url = "{origin}"
tls = {{ ca = "certs/ca.pem" }}

[[routes]]
name = "shady"
match = {{ path_prefix = "/" }}
upstream = "shady"
"#
    ))
    .files(pki.files())
    .start()
    .await;

    let resp = client()
        .post(weir.url("/secret"))
        .body("must not leak")
        .send()
        .await
        .unwrap();
    let v = error_json(resp, 502, "tls_failed").await;
    assert_eq!(v["route"], "shady");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains(&origin), "{message}");
    // weir did connect (the certificate was presented), then refused to send anything.
    assert!(up.connections() >= 1);
    assert_eq!(up.count(), 0);
}

// === TLS from clients ===

#[tokio::test]
async fn tls_listener_serves_clients_that_trust_its_ca() {
    let pki = Pki::new();
    let up = Upstream::start(|req, _| Reply::ok().body(format!("hi {}", req.path))).await;
    let weir = WeirBuilder::new(format!(
        r#"
[listen]
addr = "127.0.0.1:0"
tls = {{ cert = "certs/server.pem", key = "certs/server.key" }}

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .files(pki.files())
    .start()
    .await;

    // ALPN: h2 for a client that offers it...
    let resp = tls::client(&pki.ca, None)
        .get(weir.https_url("/one"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.text().await.unwrap(), "hi /one");
    // ...and HTTP/1.1 for one that doesn't.
    let h1 = tls::client_builder(&pki.ca, None)
        .http1_only()
        .build()
        .unwrap();
    let resp = h1.get(weir.https_url("/two")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_11);
    assert_eq!(resp.text().await.unwrap(), "hi /two");

    // A client that doesn't trust weir's certificate doesn't get through.
    let err = tls::client(&Ca::new("some other ca"), None)
        .get(weir.https_url("/three"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    // Nor does a plain-text client.
    assert!(client().get(weir.url("/four")).send().await.is_err());

    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/one", "/two"]);
}

#[tokio::test]
async fn tls_listener_serves_http1_bodies_and_streams_over_one_connection() {
    let pki = Pki::new();
    let up = Upstream::start(|req, _| {
        if req.path == "/events" {
            // One event now, the next after the test is over.
            Reply::ok().chunks(vec![
                (
                    Duration::ZERO,
                    bytes::Bytes::from_static(b"data: first\n\n"),
                ),
                (
                    Duration::from_secs(3600),
                    bytes::Bytes::from_static(b"data: later\n\n"),
                ),
            ])
        } else {
            Reply::ok().body(format!("{} {} {}", req.method, req.path, req.body_len))
        }
    })
    .await;
    let weir = WeirBuilder::new(format!(
        r#"
[listen]
addr = "127.0.0.1:0"
tls = {{ cert = "certs/server.pem", key = "certs/server.key" }}

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .files(pki.files())
    .start()
    .await;
    let h1 = tls::client_builder(&pki.ca, None)
        .http1_only()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();

    // A request with no body, one whose body is larger than the own side takes (it
    // hands the connection to hyper with the bytes already read), and one more after
    // it, in turn.
    let large = "x".repeat(20_000);
    for (method, path, body, said) in [
        ("GET", "/one", "", "GET /one 0"),
        ("POST", "/two", large.as_str(), "POST /two 20000"),
        ("GET", "/three", "", "GET /three 0"),
    ] {
        let resp = h1
            .request(method.parse().unwrap(), weir.https_url(path))
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{method} {path}");
        assert_eq!(resp.version(), Version::HTTP_11);
        assert_eq!(resp.text().await.unwrap(), said);
    }

    // A streamed answer: its first event reaches the client while the upstream holds
    // the next (the flush that ensures it over TLS has a unit test in listener/h1.rs).
    let mut resp = h1.get(weir.https_url("/events")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
        .await
        .expect("the first event comes while the rest is held")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");

    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/one", "/two", "/three", "/events"]);
}

#[tokio::test]
async fn tls_listener_with_client_ca_requires_a_client_certificate() {
    let pki = Pki::new();
    let up = Upstream::start(|_, _| Reply::ok().body("authenticated")).await;
    let weir = WeirBuilder::new(format!(
        r#"
[listen]
addr = "127.0.0.1:0"
tls = {{ cert = "certs/server.pem", key = "certs/server.key", client_ca = "certs/client-ca.pem" }}

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .files(pki.files())
    .start()
    .await;

    // No certificate: refused (an error, not a timeout and not a response).
    let err = tls::client(&pki.ca, None)
        .get(weir.https_url("/anonymous"))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    // A certificate from a CA weir doesn't trust for clients: refused too.
    let stranger = pki.ca.client_cert("stranger");
    let err = tls::client(&pki.ca, Some(&stranger))
        .get(weir.https_url("/stranger"))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");
    assert_eq!(up.count(), 0);

    // A certificate from client_ca: served.
    let resp = tls::client(&pki.ca, Some(&pki.client))
        .get(weir.https_url("/member"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "authenticated");
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/member"]);
}

// === limits ===

#[tokio::test]
async fn request_head_over_max_header_bytes_gets_431() {
    let up = Upstream::start(|req, _| {
        let len = req.header("x-big").map_or(0, <[u8]>::len);
        Reply::ok().body(len.to_string())
    })
    .await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"
max_header_bytes = "16KiB"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .await;
    for (name, c) in [("http/1.1", client()), ("h2c", h2_client())] {
        // Heads over the limit: by a lot, and by a little.
        for len in [20 * 1024, 17 * 1024] {
            let resp = c
                .get(weir.url(&format!("/big-head/{name}")))
                .header("x-big", "a".repeat(len))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name}, {len}: {e:?}"));
            assert_eq!(resp.status(), 431, "{name}, {len}");
        }
        assert_eq!(up.count(), 0, "{name}");
    }

    // A head just under the limit goes through whole.
    for (i, (name, c)) in [("http/1.1", client()), ("h2c", h2_client())]
        .into_iter()
        .enumerate()
    {
        let resp = c
            .get(weir.url(&format!("/ok-head/{name}")))
            .header("x-big", "b".repeat(15 * 1024))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(resp.status(), 200, "{name}");
        assert_eq!(resp.text().await.unwrap(), "15360", "{name}");
        assert_eq!(up.request(i).path, format!("/ok-head/{name}"));
    }
    assert_eq!(up.count(), 2);
}

/// weir with `max_body_bytes = "1KiB"` in front of `up`, route "api".
async fn weir_with_1kib_body_limit(up: &Upstream) -> Weir {
    Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"
max_body_bytes = "1KiB"

[upstreams.api]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#,
        up.url()
    ))
    .await
}

#[tokio::test]
async fn body_over_max_body_bytes_with_content_length_gets_413() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = weir_with_1kib_body_limit(&up).await;
    let c = client();

    let resp = c
        .post(weir.url("/too-big"))
        .body(body::pattern_bytes(2048))
        .send()
        .await
        .unwrap();
    let v = error_json(resp, 413, "body_too_large").await;
    assert_eq!(v["route"], "api");
    let message = v["message"].as_str().unwrap();
    assert!(message.contains("1024"), "{message}");
    // Refused on the declared length: weir didn't even connect upstream.
    assert_eq!(up.count(), 0);
    assert_eq!(up.connections(), 0);

    // Exactly at the limit is fine.
    let resp = c
        .post(weir.url("/just-right"))
        .body(body::pattern_bytes(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let r = up.request(0);
    assert_eq!(r.path, "/just-right");
    assert_eq!((r.body_len, r.body_crc32), pattern_digest(1024));
    assert_eq!(up.count(), 1);
}

#[tokio::test]
async fn chunked_body_over_max_body_bytes_gets_413_and_never_reaches_upstream_whole() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = weir_with_1kib_body_limit(&up).await;

    let mut forwarded = 0;
    for (name, c) in [("http/1.1", client()), ("h2c", h2_client())] {
        // 4 x 1000 bytes, no content-length: the limit trips while streaming.
        let resp = c
            .post(weir.url(&format!("/too-big/{name}")))
            .body(body::unsized_body(
                (0..4).map(|i| body::pattern_chunk(i * 1000, 1000)),
            ))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let v = error_json(resp, 413, "body_too_large").await;
        assert_eq!(v["route"], "api", "{name}");
        // weir may have started forwarding, but the upstream never got a whole request.
        assert_eq!(up.count(), forwarded, "{name}");

        // At the limit, streamed, it goes through.
        let resp = c
            .post(weir.url(&format!("/fits/{name}")))
            .body(body::unsized_body(
                (0..2).map(|i| body::pattern_chunk(i * 512, 512)),
            ))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_eq!(resp.status(), 200, "{name}");
        forwarded += 1;
        assert_eq!(up.count(), forwarded, "{name}");
        let r = up.request(forwarded - 1);
        assert_eq!(r.path, format!("/fits/{name}"));
        assert_eq!((r.body_len, r.body_crc32), pattern_digest(1024), "{name}");
        // Streamed: the length was never declared, by the client or by weir.
        assert!(!r.has_header("content-length"), "{name}: {:?}", r.headers);
    }
}
