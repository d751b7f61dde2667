//! `weir filter test` case files ([`CaseFile::parse`]): the TOML a filter's author writes,
//! checked before any case runs.
//!
//! Properties: no panic; every error is placed inside the text; an accepted file has at
//! least one case, unique names, and requests and upstream answers that weir could send:
//! a method and a path and query that `http` accepts, headers whose names and values
//! `http` accepts (no CR, LF or NUL), and a final status.
#![no_main]

mod text_errors;

use std::collections::HashSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use weir::authoring::filter_test::CaseFile;
use weir::wasm::Outcome;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match CaseFile::parse(Path::new("/weir-fuzz-missing/cases.toml"), text) {
        Err(errors) => text_errors::assert_point_inside(text, &errors),
        Ok(file) => {
            assert!(!file.cases.is_empty());
            let mut names = HashSet::new();
            for case in &file.cases {
                assert!(names.insert(&case.name), "two cases named {:?}", case.name);
                let req = &case.request;
                assert!(
                    http::Method::from_bytes(req.method.as_bytes()).is_ok(),
                    "{req:?}"
                );
                assert!(req.path_with_query.starts_with('/'), "{req:?}");
                assert!(
                    req.path_with_query
                        .parse::<http::uri::PathAndQuery>()
                        .is_ok(),
                    "{req:?}"
                );
                assert_sendable(&req.headers);
                assert!(!case.upstream.is_empty(), "{case:?}");
                for outcome in &case.upstream {
                    if let Outcome::Response(r) = outcome {
                        assert!(http::StatusCode::from_u16(r.status).is_ok(), "{r:?}");
                        assert_sendable(&r.headers);
                    }
                }
            }
        }
    }
});

fn assert_sendable(fields: &[(String, Vec<u8>)]) {
    for (n, v) in fields {
        assert!(http::HeaderName::from_bytes(n.as_bytes()).is_ok(), "{n:?}");
        assert!(http::HeaderValue::from_bytes(v).is_ok(), "{n:?}: {v:?}");
        assert!(
            !v.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
            "{n:?}: {v:?}"
        );
    }
}
