//! Paths and hosts, end to end: a path never escapes its route (dot segments, escapes,
//! the OWASP path-traversal spellings), and the `Host` rules of RFC 9112 §3.2.
//!
//! Every request here is raw HTTP/1.x bytes over a TCP stream: client libraries resolve
//! dot segments and re-encode paths before sending, which would hide what is tested. Each
//! case asserts what the client got, what path the upstream saw, and what `/requests`
//! recorded.

use serde_json::Value;

use crate::support::client::{self, client, h2_client};
use crate::support::raw::{self, RawResponse};
use crate::support::upstream::{Reply, Upstream};
use crate::support::weir::Weir;

/// What one raw request should come to.
#[derive(Debug, Clone, Copy)]
enum Want {
    /// Forwarded: 200, and the upstream got this path and query.
    Up(&'static str),
    /// weir's JSON error with this status and code; nothing forwarded.
    Refused(u16, &'static str),
}
use Want::{Refused, Up};

/// Checks that `resp` is weir's JSON error with this status and code, for route `null`
/// (the request is refused before a route takes it); returns the body.
fn error_json(resp: &RawResponse, status: u16, code: &str, what: &str) -> Value {
    let body = String::from_utf8_lossy(&resp.body);
    assert_eq!(resp.status, status, "{what}: {body}");
    assert_eq!(
        resp.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let v = resp.json();
    assert_eq!(v["error"], code, "{what}: {body}");
    assert_eq!(v["route"], Value::Null, "{what}: {body}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
    v
}

/// A GET of `target` (written into the request line as it is) with `Host: weir.test`.
fn get(target: &str, id: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: weir.test\r\nx-request-id: {id}\r\n\r\n")
}

// === paths ===

#[tokio::test]
async fn paths_are_normalised_and_traversals_never_leave_their_route() {
    let up = Upstream::start(|_, _| Reply::ok()).await;
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.up]
url = "{}"

[[routes]]
name = "api"
match = {{ path_prefix = "/api/" }}
upstream = "up"

[[routes]]
name = "keep"
match = {{ path_prefix = "/keep/" }}
upstream = "up"
escaped_paths = "keep"

[[routes]]
name = "strip"
match = {{ path_prefix = "/strip/" }}
upstream = "up"
strip_prefix = true
"#,
        up.url()
    ))
    .await;

    // (request target, outcome). No route takes "/" or "/admin": a 404 shows where a
    // traversal would have gone, and that it went nowhere. A path with an escape that no
    // route takes gets the default, "reject".
    let cases: &[(&str, Want)] = &[
        // Plain dot segments are resolved first; what is left is routed and forwarded.
        ("/api/a/../b", Up("/api/b")),
        ("/api/./x", Up("/api/x")),
        ("/api/x/.", Up("/api/x/")),
        ("/api/x/..", Up("/api/")),
        ("/api/x/./../y/", Up("/api/y/")),
        ("/api/../../admin", Refused(404, "no_route")),
        (
            "/api/../../../../../../etc/passwd",
            Refused(404, "no_route"),
        ),
        ("/api/..", Refused(404, "no_route")),
        // Out of one route and into another: the route of the resolved path takes it.
        ("/api/../keep/x", Up("/keep/x")),
        // Empty segments are segments: "//" stays, and ".." takes one back.
        ("/api//admin", Up("/api//admin")),
        ("/api/x//../y", Up("/api/x/y")),
        // Unreserved escapes are decoded; others stay as sent.
        ("/api/%61%62%7E%2D", Up("/api/ab~-")),
        ("/api/a%20b%3F", Up("/api/a%20b%3F")),
        // The query is never touched.
        (
            "/api/x?q=../..%2f%2e%2e&r=\\",
            Up("/api/x?q=../..%2f%2e%2e&r=\\"),
        ),
        // Encoded dot segments: refused by default.
        ("/api/%2e%2e/%2e%2e/etc", Refused(400, "bad_path")),
        ("/api/%2e%2e/admin", Refused(400, "bad_path")),
        ("/api/%2E%2E/admin", Refused(400, "bad_path")),
        ("/api/.%2e/admin", Refused(400, "bad_path")),
        ("/api/%2e./admin", Refused(400, "bad_path")),
        ("/api/x/%2e/y", Refused(400, "bad_path")),
        // Dot segments behind an encoded slash or a backslash: refused on every route.
        ("/api/..%2fadmin", Refused(400, "bad_path")),
        ("/api/..%2Fadmin", Refused(400, "bad_path")),
        ("/api/%2e%2e%2fadmin", Refused(400, "bad_path")),
        ("/api/%2e%2e%2Fadmin", Refused(400, "bad_path")),
        ("/api/..%2f..%2f..%2fetc%2fpasswd", Refused(400, "bad_path")),
        ("/api/..%5cadmin", Refused(400, "bad_path")),
        ("/api/..%5Cadmin", Refused(400, "bad_path")),
        ("/api/%2e%2e%5cadmin", Refused(400, "bad_path")),
        ("/api/..\\admin", Refused(400, "bad_path")),
        ("/api/..\\..\\admin", Refused(400, "bad_path")),
        // Tomcat-style path parameters on a dot segment.
        ("/api/..;/admin", Refused(400, "bad_path")),
        ("/api/x/..;/..;/admin", Refused(400, "bad_path")),
        ("/api/.;/admin", Refused(400, "bad_path")),
        // Escaped slashes and backslashes in names: refused by default.
        ("/api/a%2fb", Refused(400, "bad_path")),
        ("/api/a%5cb", Refused(400, "bad_path")),
        ("/api/a\\b", Refused(400, "bad_path")),
        // Malformed escapes.
        ("/api/%zz", Refused(400, "bad_path")),
        ("/api/x%", Refused(400, "bad_path")),
        ("/api/%2", Refused(400, "bad_path")),
        // Double encoding is decoded once at most, so it stays an encoded "%": harmless.
        ("/api/%252e%252e%252fadmin", Up("/api/%252e%252e%252fadmin")),
        ("/api/%252e%252e/admin", Up("/api/%252e%252e/admin")),
        ("/api/..%252f..%252fadmin", Up("/api/..%252f..%252fadmin")),
        // Overlong UTF-8 for "." is not an unreserved escape: it stays as sent.
        ("/api/%c0%ae%c0%ae/admin", Up("/api/%c0%ae%c0%ae/admin")),
        // escaped_paths = "keep": encoded slashes and backslashes pass unchanged...
        ("/keep/a%2Fb", Up("/keep/a%2Fb")),
        ("/keep/a%2fb/c", Up("/keep/a%2fb/c")),
        ("/keep/a%5cb", Up("/keep/a%5cb")),
        ("/keep/a\\b", Up("/keep/a\\b")),
        // ...encoded dot segments are resolved like plain ones...
        ("/keep/x/%2e%2e/y", Up("/keep/y")),
        // (where no route takes the resolved path, the default "reject" applies)...
        ("/keep/%2e%2e/%2e%2e/admin", Refused(400, "bad_path")),
        // ...and checked against the route of the resolved path, which here refuses them.
        ("/keep/%2e%2e/api/x", Refused(400, "bad_path")),
        // ...but a dot segment hidden behind a slash or a backslash is still refused.
        ("/keep/..%2fadmin", Refused(400, "bad_path")),
        ("/keep/..%5c..%5cadmin", Refused(400, "bad_path")),
        ("/keep/..\\admin", Refused(400, "bad_path")),
        ("/keep/..;/admin", Refused(400, "bad_path")),
        // strip_prefix applies to the normalised path.
        ("/strip/x/./y/../z", Up("/x/z")),
        ("/strip/a/..", Up("/")),
        ("/strip/../api/x", Up("/api/x")),
        ("/strip/x/../../admin", Refused(404, "no_route")),
    ];
    for (i, &(target, want)) in cases.iter().enumerate() {
        let id = format!("case-{i}");
        let before = up.count();
        let resp = raw::send(weir.addr(), get(target, &id)).await;
        let what = format!("GET {target}");
        let record = admin_json(&weir, &format!("/requests/{id}")).await;
        match want {
            Up(path) => {
                assert_eq!(
                    resp.status,
                    200,
                    "{what}: {}",
                    String::from_utf8_lossy(&resp.body)
                );
                assert_eq!(up.count(), before + 1, "{what}");
                assert_eq!(up.request(before).path, path, "{what}");
                // The record shows what weir sent, not what the client wrote.
                assert_eq!(
                    record["upstream_url"],
                    format!("{}{path}", up.url()),
                    "{what}"
                );
            }
            Refused(status, code) => {
                error_json(&resp, status, code, &what);
                assert_eq!(up.count(), before, "{what} reached the upstream");
                assert_eq!(record["error"], code, "{what}");
            }
        }
    }

    // The message says what was wrong, and which route refused it.
    let resp = raw::send(weir.addr(), get("/api/a%2Fb", "why-1")).await;
    let v = error_json(&resp, 400, "bad_path", "encoded slash");
    assert_eq!(
        v["message"],
        "path has an encoded slash (%2F), which route `api` refuses (escaped_paths = \"reject\")"
    );
    let resp = raw::send(weir.addr(), get("/api/%2e%2e/%2e%2e/etc", "why-2")).await;
    let v = error_json(&resp, 400, "bad_path", "encoded dot segment, no route");
    assert_eq!(
        v["message"],
        "path has an encoded dot segment (such as %2e%2e), which is refused by default \
         (escaped_paths = \"reject\"; no route matches the normalised path /etc)"
    );
    let resp = raw::send(weir.addr(), get("/api/..;/admin", "why-3")).await;
    let v = error_json(&resp, 400, "bad_path", "path parameter");
    assert_eq!(
        v["message"],
        "path segment \"..;\" hides a dot segment behind `;`, an encoded slash or a backslash"
    );
    // /requests shows the path weir routed on.
    let record = admin_json(&weir, "/requests/case-0").await;
    assert_eq!(record["path"], "/api/b");
    assert_eq!(record["route"], "api");
}

/// GET an admin endpoint that must answer 200 with JSON.
async fn admin_json(weir: &Weir, path: &str) -> Value {
    let resp = client()
        .get(weir.admin_url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET admin {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("admin body");
    assert_eq!(status, 200, "GET admin {path}: {text}");
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GET admin {path}: not JSON ({e}): {text}"))
}

// === hosts ===

/// Two routes told apart by host only, each to its own upstream, and a catch-all after.
async fn host_routes() -> (Weir, [Upstream; 3]) {
    let ups = [
        Upstream::start(|_, _| Reply::ok().body("a")).await,
        Upstream::start(|_, _| Reply::ok().body("b")).await,
        Upstream::start(|_, _| Reply::ok().body("any")).await,
    ];
    let weir = Weir::start(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"

[admin]
addr = "127.0.0.1:0"

[upstreams.a]
url = "{}"
[upstreams.b]
url = "{}"
[upstreams.any]
url = "{}"

[[routes]]
name = "a"
match = {{ host = "a.example" }}
upstream = "a"

[[routes]]
name = "b"
match = {{ host = "b.example" }}
upstream = "b"

[[routes]]
name = "any"
upstream = "any"
"#,
        ups[0].url(),
        ups[1].url(),
        ups[2].url()
    ))
    .await;
    (weir, ups)
}

fn counts(ups: &[Upstream; 3]) -> [usize; 3] {
    [ups[0].count(), ups[1].count(), ups[2].count()]
}

#[tokio::test]
async fn http11_requests_need_exactly_one_valid_host() {
    let (weir, ups) = host_routes().await;
    let refused = [
        ("no Host", "GET /x HTTP/1.1\r\n\r\n"),
        (
            "no Host, absolute-form",
            "GET http://a.example/x HTTP/1.1\r\n\r\n",
        ),
        (
            "two Host lines",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "the same Host twice",
            "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
        ),
        (
            "two Host lines, HTTP/1.0",
            "GET /x HTTP/1.0\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
        ),
        (
            "a list in Host",
            "GET /x HTTP/1.1\r\nHost: a.example, b.example\r\n\r\n",
        ),
        (
            "userinfo in Host",
            "GET /x HTTP/1.1\r\nHost: me@a.example\r\n\r\n",
        ),
    ];
    for (what, request) in refused {
        let resp = raw::send(weir.addr(), request).await;
        let v = error_json(&resp, 400, "bad_request", what);
        assert!(
            v["message"].as_str().unwrap().contains("Host"),
            "{what}: {v}"
        );
        assert!(resp.header("x-request-id").is_some(), "{what}");
    }
    assert_eq!(counts(&ups), [0, 0, 0], "a refused request was forwarded");
    let resp = raw::send(weir.addr(), "GET /x HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        resp.json()["message"],
        "bad request: HTTP/1.1 request without a Host header"
    );
    let resp = raw::send(
        weir.addr(),
        "GET /x HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",
    )
    .await;
    assert_eq!(
        resp.json()["message"],
        "bad request: more than one Host header"
    );

    // Accepted: one Host (with a port, in any case), an empty Host (the RFC's form for a
    // target without an authority), and HTTP/1.0 without Host.
    let accepted = [
        ("GET /1 HTTP/1.1\r\nHost: A.Example:8080\r\n\r\n", 0),
        ("GET /2 HTTP/1.1\r\nHost: b.example\r\n\r\n", 1),
        ("GET /3 HTTP/1.1\r\nHost:\r\n\r\n", 2),
        ("GET /4 HTTP/1.0\r\n\r\n", 2),
    ];
    for (request, upstream) in accepted {
        let resp = raw::send(weir.addr(), request).await;
        assert_eq!(resp.status, 200, "{request:?}");
        assert_eq!(
            resp.body,
            [&b"a"[..], b"b", b"any"][upstream],
            "{request:?}"
        );
    }
    assert_eq!(counts(&ups), [1, 1, 2]);
    assert_eq!(ups[2].request(1).path, "/4");
}

#[tokio::test]
async fn an_absolute_form_target_is_routed_by_its_own_authority() {
    let (weir, ups) = host_routes().await;
    // RFC 9112 §3.2.2: the target's authority wins over Host.
    let resp = raw::send(
        weir.addr(),
        "GET http://a.example/x/../y?q=1 HTTP/1.1\r\nHost: b.example\r\nx-request-id: abs-1\r\n\r\n",
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"a");
    assert_eq!(counts(&ups), [1, 0, 0]);
    // The path of an absolute-form target is normalised like any other.
    assert_eq!(ups[0].request(0).path, "/y?q=1");
    // The upstream gets its own authority, not either of the client's.
    assert_eq!(ups[0].request(0).authority, Some(ups[0].addr().to_string()));
    let record = admin_json(&weir, "/requests/abs-1").await;
    assert_eq!(record["route"], "a");
    assert_eq!(record["path"], "/y?q=1");

    let resp = raw::send(
        weir.addr(),
        "GET http://B.EXAMPLE:80/z HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert_eq!(resp.body, b"b");
    // And a target authority no route names goes to the catch-all, whatever Host says.
    let resp = raw::send(
        weir.addr(),
        "GET http://c.example/z HTTP/1.1\r\nHost: a.example\r\n\r\n",
    )
    .await;
    assert_eq!(resp.body, b"any");
    assert_eq!(counts(&ups), [1, 1, 1]);
}

#[tokio::test]
async fn http2_requests_route_by_authority_without_a_host_header() {
    let (weir, ups) = host_routes().await;
    // reqwest sends HTTP/2 with `:authority` (the URL's) and no Host header.
    let port = weir.addr().port();
    let to_a = client::builder()
        .http2_prior_knowledge()
        .resolve("a.example", weir.addr())
        .build()
        .expect("build h2 client");
    let resp = to_a
        .get(format!("http://a.example:{port}/h2/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "a");
    assert_eq!(ups[0].request(0).path, "/h2/x");
    let id = "h2-replay";
    let resp = h2_client()
        .get(weir.url("/h2/y"))
        .header("x-request-id", id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(counts(&ups), [1, 0, 1]);

    // A replay is rebuilt from the record, which has no Host: the Host rules are for
    // requests read off a connection, and the replay goes through.
    let resp = client()
        .post(weir.admin_url(&format!("/requests/{id}/replay")))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(counts(&ups), [1, 0, 2]);
}
