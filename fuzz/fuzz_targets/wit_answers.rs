//! The answers a guest returns that the host checks before it uses them: an `on-request`
//! edit ([`chain::edit_request`]), a `respond` (its status and headers, as
//! `Reply::respond` checks them with [`headers::validate_response`]) and an `on-response`
//! edit ([`chain::edit_response`]); then the message weir builds from what it accepted:
//! the upstream request (its URI from [`Upstream::uri`], its headers the request's
//! `HeaderMap`) or the client's response.
//!
//! Properties:
//! - a refused answer changes nothing: the request, or the response's headers, are as
//!   they were;
//! - an accepted one leaves only headers weir can send (valid, lowercase, no CR, LF or
//!   NUL, none dropped on the way to the `HeaderMap`), a path and query the upstream URI
//!   takes, and, on a response, a final status and no hop-by-hop header it set.
#![no_main]

mod common;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use common::{Fields, assert_sendable, is_hop_by_hop};
use libfuzzer_sys::fuzz_target;
use weir::chain;
use weir::config::Config;
use weir::headers;
use weir::telemetry::Telemetry;
use weir::upstream::{Upstream, UpstreamPool};
use weir::wasm::{ChainRequest, ResponseEdit};

#[derive(Debug)]
enum Answer {
    /// `continue` with a request edit.
    EditRequest {
        set: Fields,
        remove: Vec<String>,
        path: Option<String>,
    },
    /// `respond`.
    Respond { status: u16, headers: Fields },
    /// `continue` with a response edit, on the upstream's response.
    EditResponse { set: Fields, remove: Vec<String> },
}

#[derive(Debug)]
struct Input {
    /// The request's headers as they reach the first filter.
    request: Fields,
    /// The upstream response's headers, hop-by-hop ones stripped as weir does.
    response: Fields,
    answer: Answer,
}

/// Paths worth trying more often than arbitrary text finds them.
const PATHS: &[&str] = &[
    "/", "/a?b=c", "", "a", "//x", "/a b", "/\r\n", "/%zz", "*", "/#f",
];

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let request = common::message_fields(u, 4)?;
        let mut map = headers::from_fields(&common::message_fields(u, 4)?);
        headers::strip_hop_by_hop(&mut map);
        let response = headers::to_fields(&map);
        let answer = match u.int_in_range(0..=2)? {
            0 => Answer::EditRequest {
                set: common::fields(u, 4)?,
                remove: common::names(u, 3)?,
                path: match u.int_in_range(0..=2)? {
                    0 => None,
                    1 => Some((*u.choose(PATHS)?).to_owned()),
                    _ => Some(u.arbitrary()?),
                },
            },
            1 => Answer::Respond {
                status: u.arbitrary()?,
                headers: common::fields(u, 4)?,
            },
            _ => Answer::EditResponse {
                set: common::fields(u, 4)?,
                remove: common::names(u, 3)?,
            },
        };
        Ok(Input {
            request,
            response,
            answer,
        })
    }
}

fuzz_target!(|input: Input| {
    match input.answer {
        Answer::EditRequest { set, remove, path } => {
            let before = ChainRequest {
                method: "GET".to_owned(),
                upstream: "http://upstream.test".to_owned(),
                path_with_query: "/".to_owned(),
                headers: headers::from_fields(&input.request),
            };
            let mut req = before.clone();
            match chain::edit_request(&mut req, set, &remove, path) {
                Err(_) => {
                    // `HeaderMap`'s `==` ignores the order of different names; the
                    // lists do not.
                    let listed = |r: &ChainRequest| (r.clone(), headers::to_fields(&r.headers));
                    assert_eq!(
                        listed(&req),
                        listed(&before),
                        "a refused request edit changed it"
                    );
                }
                Ok(()) => {
                    assert_sendable(&headers::to_fields(&req.headers));
                    let uri = upstream().uri(&req.path_with_query);
                    let uri = uri.unwrap_or_else(|e| panic!("{req:?}: {e}"));
                    let mut out = http::Request::new(());
                    *out.uri_mut() = uri;
                    let mut h = req.headers.clone();
                    headers::prepare_upstream(&mut h);
                    *out.headers_mut() = h;
                }
            }
        }
        Answer::Respond { status, headers } => {
            if headers::validate_response(Some(status), &headers).is_ok() {
                let status = http::StatusCode::from_u16(status).expect("a valid status");
                assert!(!status.is_informational(), "{status}");
                let fields: Fields = headers
                    .into_iter()
                    .map(|(n, v)| (n.to_ascii_lowercase(), v))
                    .collect();
                assert_sendable(&fields);
                for (n, _) in &fields {
                    assert!(!is_hop_by_hop(n), "hop-by-hop {n:?} in a filter's response");
                }
            }
        }
        Answer::EditResponse { set, remove } => {
            let before = headers::from_fields(&input.response);
            let mut map = before.clone();
            let names: Vec<String> = set.iter().map(|(n, _)| n.clone()).collect();
            let edit = ResponseEdit {
                set_headers: set,
                remove_headers: remove,
            };
            match chain::edit_response(&mut map, edit) {
                Err(_) => assert_eq!(
                    headers::to_fields(&map),
                    headers::to_fields(&before),
                    "a refused response edit changed it"
                ),
                Ok(()) => {
                    assert_sendable(&headers::to_fields(&map));
                    for n in &names {
                        assert!(!is_hop_by_hop(n), "hop-by-hop {n:?} set on a response");
                    }
                }
            }
        }
    }
});

/// The upstream requests go to: one, made once, as `Router::build` makes them.
fn upstream() -> &'static Upstream {
    static POOL: OnceLock<(Arc<Telemetry>, UpstreamPool)> = OnceLock::new();
    let (_, pool) = POOL.get_or_init(|| {
        let text = "[listen]\naddr = \"127.0.0.1:0\"\n\
                    [upstreams.api]\nurl = \"http://upstream.test:8080\"\n\
                    [[routes]]\nname = \"all\"\nupstream = \"api\"\n";
        let config = Config::parse(Path::new("/weir-fuzz/weir.toml"), text).expect("valid");
        let telemetry = Telemetry::new().expect("a fresh registry");
        let upstreams: Vec<_> = config
            .raw
            .upstreams
            .iter()
            .map(|(n, u)| (n.clone(), u.get_ref().clone()))
            .collect();
        let pool = UpstreamPool::new(&upstreams, telemetry.upstreams.clone()).expect("plain http");
        (telemetry, pool)
    });
    pool.get("api").expect("configured")
}
