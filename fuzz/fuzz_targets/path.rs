//! Path normalisation ([`weir::path::normalise`]), which decides the route and the path
//! sent upstream.
//!
//! Properties, for any path that starts with `/`:
//! - normalising twice gives what normalising once gave (so no spelling survives one
//!   pass that a second pass, at some upstream, would read as another path);
//! - the result starts with `/`, has no `.` or `..` segment, and no escape of an
//!   unreserved character left (they are decoded);
//! - the path of a request target `http` accepts (what the router normalises) stays a
//!   valid request target;
//! - [`weir::path::remove_dot_segments`] is idempotent too.
//!
//! Anything else is returned unchanged. The input is tried as a request target first
//! (its path, as the router takes it), else as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::path::{normalise, remove_dot_segments};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let target = text.parse::<http::uri::PathAndQuery>().ok();
    let path = target.as_ref().map_or(text, |t| t.path());
    let once = remove_dot_segments(path);
    assert_eq!(remove_dot_segments(&once), once, "{path:?}");

    let Ok(n) = normalise(path) else {
        return;
    };
    if !path.starts_with('/') {
        assert_eq!(n.path, path);
        assert_eq!(n.escaped, None);
        return;
    }
    assert!(n.path.starts_with('/'), "{path:?} became {:?}", n.path);
    for segment in n.path.split('/') {
        assert!(
            segment != "." && segment != "..",
            "{path:?} became {:?}",
            n.path
        );
    }
    let bytes = n.path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("checked escapes");
            let byte = u8::from_str_radix(hex, 16).expect("checked escapes");
            let unreserved = byte.is_ascii_alphanumeric() || b"-._~".contains(&byte);
            assert!(!unreserved, "{path:?} became {:?}", n.path);
        }
    }
    let twice = normalise(&n.path)
        .unwrap_or_else(|e| panic!("{path:?} became {:?}, which is refused: {e}", n.path));
    assert_eq!(twice.path, n.path, "{path:?}");
    if target.is_some() {
        assert!(
            n.path.parse::<http::uri::PathAndQuery>().is_ok(),
            "{path:?} became {:?}",
            n.path
        );
    }
});
