//! Header edits coming back from guests: [`headers::apply_edit`] (every `set-headers` of
//! an edit), [`headers::validate_response`] (what a filter sets on, or answers as, the
//! client's response) and [`headers::from_fields`], which turns the fields into the
//! `HeaderMap` weir sends.
//!
//! Properties:
//! - an edit with a name or value holding CR, LF or NUL (or anything else `http` refuses)
//!   is refused, and a refused edit changes nothing;
//! - after an accepted edit every field is a valid, lowercase header with no CR, LF or
//!   NUL, removed names are gone and each set name has exactly the values set, in order;
//! - `from_fields` drops nothing an edit let in: what was accepted is what is sent;
//! - [`headers::apply_edit_map`], the same edit on a request's `HeaderMap`, accepts and
//!   refuses what `apply_edit` does, and leaves each name with the same values in order;
//! - `validate_response` accepts no hop-by-hop header and no status outside 200–999.
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
    let map_before = map.clone();
    let on_map = headers::apply_edit_map(&mut map, set.clone(), &remove);

    let mut edited = fields.clone();
    let on_list = headers::apply_edit(&mut edited, set.clone(), &remove);
    assert_eq!(on_map.is_ok(), on_list.is_ok(), "{on_map:?} / {on_list:?}");
    if on_map.is_err() {
        assert_eq!(map, map_before, "a refused edit changed the map");
    }
    assert_eq!(map, headers::from_fields(&edited), "the map and the list disagree");
    match on_list {
        Err(_) => assert_eq!(edited, fields, "a refused edit changed the fields"),
        Ok(()) => {
            for (n, v) in &set {
                assert!(
                    !has_cr_lf_nul(n.as_bytes()) && !has_cr_lf_nul(v),
                    "{n:?}: {v:?}"
                );
            }
            assert_sendable(&edited);
            for r in &remove {
                if !set.iter().any(|(n, _)| n.eq_ignore_ascii_case(r)) {
                    assert!(!edited.iter().any(|(n, _)| n.eq_ignore_ascii_case(r)));
                }
            }
            for (s, _) in &set {
                let values = |f: &Fields| -> Vec<Vec<u8>> {
                    let named = f.iter().filter(|(n, _)| n.eq_ignore_ascii_case(s));
                    named.map(|(_, v)| v.clone()).collect()
                };
                assert_eq!(values(&edited), values(&set), "{s:?}");
            }
        }
    }

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
