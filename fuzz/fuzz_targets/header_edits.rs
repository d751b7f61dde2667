//! Header edits coming back from guests: [`headers::apply_edit_map`] (a 0.1 `continue`
//! edit, on the request's or the response's `HeaderMap`) and
//! [`headers::validate_response`] (what a filter sets on, or answers as, the client's
//! response).
//!
//! Properties:
//! - an edit with a name or value holding CR, LF or NUL (or anything else `http` refuses)
//!   is refused, and a refused edit changes nothing;
//! - after an accepted edit every header is valid, with a lowercase name and no CR, LF or
//!   NUL; removed names are gone, each set name has exactly the values set, in order, and
//!   every other name keeps its values and its place among the names not set;
//! - `validate_response` accepts no hop-by-hop header and no status outside 200–999;
//! - 0.2.1's `header-block` of any map reads back, line by line split at the first `: `,
//!   as exactly the map's fields in order.
#![no_main]

mod common;

use arbitrary::{Arbitrary, Unstructured};
use common::{Fields, assert_sendable, has_cr_lf_nul, is_hop_by_hop};
use libfuzzer_sys::fuzz_target;
use weir::headers;

#[derive(Debug)]
struct Input {
    fields: Fields,
    set: Fields,
    remove: Vec<String>,
    status: Option<u16>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        Ok(Input {
            fields: common::message_fields(u, 6)?,
            set: common::fields(u, 6)?,
            remove: common::names(u, 4)?,
            status: u.arbitrary()?,
        })
    }
}

fuzz_target!(|input: Input| {
    let Input {
        fields,
        set,
        remove,
        status,
    } = input;

    let mut map = headers::from_fields(&fields);
    let before = map.clone();
    match headers::apply_edit_map(&mut map, set.clone(), &remove, headers::parse) {
        // `HeaderMap`'s `==` ignores the order of different names; the lists do not.
        Err(_) => assert_eq!(
            headers::to_fields(&map),
            headers::to_fields(&before),
            "a refused edit changed the map"
        ),
        Ok(()) => {
            for (n, v) in &set {
                assert!(
                    !has_cr_lf_nul(n.as_bytes()) && !has_cr_lf_nul(v),
                    "{n:?}: {v:?}"
                );
            }
            let edited = headers::to_fields(&map);
            assert_sendable(&edited);
            let values = |f: &Fields, name: &str| -> Vec<Vec<u8>> {
                let named = f.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
                named.map(|(_, v)| v.clone()).collect()
            };
            let is_set = |name: &str| set.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            for r in &remove {
                if !is_set(r) {
                    assert!(values(&edited, r).is_empty(), "{r:?} was removed");
                }
            }
            for (s, _) in &set {
                assert_eq!(values(&edited, s), values(&set, s), "{s:?}");
            }
            let is_removed = |name: &str| remove.iter().any(|r| r.eq_ignore_ascii_case(name));
            let kept: Fields = headers::to_fields(&before)
                .into_iter()
                .filter(|(n, _)| !is_set(n) && !is_removed(n))
                .collect();
            let untouched: Fields = edited.into_iter().filter(|(n, _)| !is_set(n)).collect();
            assert_eq!(
                untouched, kept,
                "the headers the edit did not name, in order"
            );
        }
    }

    assert_eq!(read_block(&headers::to_block(&map)), headers::to_fields(&map));

    if headers::validate_response(status, &set).is_ok() {
        if let Some(status) = status {
            assert!((200..=999).contains(&status), "{status}");
            assert!(http::StatusCode::from_u16(status).is_ok(), "{status}");
        }
        for (n, v) in &set {
            assert!(
                !has_cr_lf_nul(n.as_bytes()) && !has_cr_lf_nul(v),
                "{n:?}: {v:?}"
            );
            assert!(!is_hop_by_hop(n), "hop-by-hop {n:?} accepted in a response");
        }
    }
});

/// Splits a header block as a guest does: lines end in CRLF, and each splits at its
/// first `: ` into a name and a value.
fn read_block(mut rest: &[u8]) -> Fields {
    let mut fields = Fields::new();
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").expect("every line ends in CRLF");
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let colon = line.iter().position(|&b| b == b':').expect("a colon");
        let value = line[colon..].strip_prefix(b": ").expect("`: ` after the name");
        let name = String::from_utf8(line[..colon].to_vec()).expect("an ASCII name");
        fields.push((name, value.to_vec()));
    }
    fields
}
