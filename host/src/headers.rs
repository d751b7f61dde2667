//! Header plumbing shared by the request path: hop-by-hop removal and conversion between
//! `http::HeaderMap` and the WIT `fields` list.

use std::collections::HashSet;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The request id weir keeps or makes, sends upstream and answers with.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Lowercase hex digits.
const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// The two hex digits of every byte.
const PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    pairs
};

/// A `Content-Length` value: digits only, no sign, and no overflow (hyper's reading).
pub fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit()
            .then_some(())
            .and_then(|()| n.checked_mul(10))
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
    })
}

/// Writes the low `out.len()` hex digits of `n` (32 at most), lowercase, most
/// significant first.
pub fn hex_into(n: u128, out: &mut [u8]) {
    assert!(out.len() <= 32, "a u128 has 32 hex digits");
    // Two digits a byte from a table: ids are made on every request, and a digit at a
    // time costs a shift of the whole u128 each.
    let bytes = n.to_be_bytes();
    let (odd, even) = out.split_at_mut(out.len() % 2);
    let whole = even.len() / 2;
    for (pair, &byte) in even.chunks_exact_mut(2).zip(&bytes[16 - whole..]) {
        pair.copy_from_slice(&PAIRS[usize::from(byte)]);
    }
    if let [digit] = odd {
        *digit = DIGITS[usize::from(bytes[15 - whole] & 0xf)];
    }
}

/// `traceparent` (a version-00 value weir made: 55 bytes) with its parent id replaced by
/// `span`: what one upstream try of a traced request sends, so that the upstream's spans
/// hang under that try's span.
pub fn with_parent_id(traceparent: &HeaderValue, span: u64) -> HeaderValue {
    let mut text = [0u8; 55];
    if traceparent.len() != text.len() {
        return traceparent.clone();
    }
    text.copy_from_slice(traceparent.as_bytes());
    hex_into(u128::from(span), &mut text[36..52]);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| traceparent.clone())
}

/// The first value of `name`, as `HeaderMap::get` finds it. A request's few headers are
/// scanned instead: hashing a name that is not a standard one (`x-request-id`,
/// `traceparent`) costs more than comparing it with a handful of others.
pub fn first<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() > 8 {
        return headers.get(name);
    }
    headers.iter().find(|&(n, _)| n == name).map(|(_, v)| v)
}

/// Whether `name` is one of the hop-by-hop headers of RFC 9110 §7.6.1, which a proxy
/// never forwards whatever `Connection` says (`Upgrade` among them). Asked of every
/// header of every request and response, so it matches the text (a jump on its length,
/// then one comparison) rather than comparing `HeaderName`s.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none: one pass over the few names present is cheaper than a
    // hashed removal of each of the nine.
    if headers.keys().any(is_hop_by_hop) {
        strip_present_hop_by_hop(headers);
    }
}

fn strip_present_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .chain(headers.keys().filter(|n| is_hop_by_hop(n)).cloned())
        .collect();
    for name in &named {
        headers.remove(name);
    }
}

/// Prepares client request headers for the upstream: no hop-by-hop headers, no `Host`
/// (the client sets the upstream's), no `Content-Length` (recomputed from the body).
pub fn prepare_upstream(headers: &mut HeaderMap) {
    prepare(headers, false);
}

/// [`prepare_upstream`], but the client's `Host` stays, for a caller that puts the
/// upstream's in its place: an insert over it is one lookup, where a removal here and an
/// insert later are two, and move the other entries.
pub fn prepare_upstream_keeping_host(headers: &mut HeaderMap) {
    prepare(headers, true);
}

fn prepare(headers: &mut HeaderMap, keep_host: bool) {
    let (mut hop, mut host, mut length) = (false, false, false);
    for name in headers.keys() {
        hop |= is_hop_by_hop(name);
        host |= name == header::HOST;
        length |= name == header::CONTENT_LENGTH;
    }
    if hop {
        strip_present_hop_by_hop(headers);
    }
    if host && !keep_host {
        headers.remove(header::HOST);
    }
    if length {
        headers.remove(header::CONTENT_LENGTH);
    }
}

/// The WIT form: (lowercase name, value bytes) in order.
pub fn to_fields(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// `header-block`: the headers as HTTP/1 writes them, `name: value` and CRLF for each
/// field, in order. A `HeaderName` has no `:` and a `HeaderValue` no CR or LF, so the
/// guest splits each line at its first `: `.
pub fn to_block(headers: &HeaderMap) -> Vec<u8> {
    let len = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut block = Vec::with_capacity(len);
    for (name, value) in headers {
        block.extend_from_slice(name.as_str().as_bytes());
        block.extend_from_slice(b": ");
        block.extend_from_slice(value.as_bytes());
        block.extend_from_slice(b"\r\n");
    }
    block
}

/// The most header names a filter may leave on one message. A `HeaderMap` holds at most
/// 24,576 and panics past that; no real message comes near either.
pub const MAX_NAMES: usize = 8192;

/// Back to a `HeaderMap`. Callers check what a filter made first ([`validate_response`],
/// [`apply_edit_map`]); a field `http` refuses, or one past [`MAX_NAMES`] names, is
/// dropped.
pub fn from_fields(fields: &[(String, Vec<u8>)]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len().min(MAX_NAMES));
    for (n, v) in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(n.as_bytes()),
            HeaderValue::from_bytes(v),
        ) && (map.keys_len() < MAX_NAMES || map.contains_key(&n))
        {
            map.append(n, v);
        }
    }
    map
}

/// Sets (`replace`) or adds one header a filter made, refusing a name past [`MAX_NAMES`].
pub fn put(
    map: &mut HeaderMap,
    (name, value): (HeaderName, HeaderValue),
    replace: bool,
) -> Result<(), String> {
    if map.keys_len() >= MAX_NAMES && !map.contains_key(&name) {
        return Err(too_many_names());
    }
    if replace {
        map.insert(name, value);
    } else {
        map.append(name, value);
    }
    Ok(())
}

fn too_many_names() -> String {
    format!("too many header names (weir keeps at most {MAX_NAMES} on one message)")
}

/// Checks one header a filter wants to set; the error says what is wrong with it.
///
/// The same rules as `HeaderName::from_bytes` and `HeaderValue::from_bytes`, without
/// building either (each copies the bytes it is given).
pub fn validate(name: &str, value: &[u8]) -> Result<(), String> {
    if !valid_name(name.as_bytes()) {
        return Err(format!("invalid header name {name:?}"));
    }
    if !valid_value(value) {
        return Err(format!("invalid value for header {name:?}"));
    }
    Ok(())
}

/// A name `http` takes: 1 to 65,535 token characters (RFC 9110 §5.6.2), any case.
fn valid_name(name: &[u8]) -> bool {
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    (1..=0xffff).contains(&name.len()) && name.iter().all(token)
}

/// A value `http` takes: visible characters, spaces and tabs; no control character.
fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| b >= 0x20 && b != 0x7f || b == b'\t')
}

/// One header a filter wants to set, checked as [`validate`] checks it and parsed; the
/// value's bytes become the header's without a copy.
pub fn parse(name: &str, value: Vec<u8>) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("invalid header name {name:?}"))?;
    let v = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        .map_err(|_| format!("invalid value for header {name:?}"))?;
    Ok((n, v))
}

/// The headers that describe one connection or the message's framing (RFC 9110 §7.6.1,
/// §7.8, §10.1.4; RFC 9112 §6.1) and so cannot be part of a response a filter makes: weir
/// frames each response to the client itself. `proxy-authenticate` is not among them: a
/// 407 a filter makes may carry it.
static NOT_IN_A_FILTER_RESPONSE: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Checks a response a filter answers with (`respond`), or headers it sets on the response
/// the client gets: a final status (200–999; a 1xx is interim, and the client would wait
/// for another), and no hop-by-hop or framing header. The error says what is wrong.
pub fn validate_response(status: Option<u16>, fields: &[(String, Vec<u8>)]) -> Result<(), String> {
    if fields.len() > MAX_NAMES {
        return Err(too_many_names());
    }
    if let Some(status) = status {
        if !(100..=999).contains(&status) {
            return Err(format!("invalid status {status}"));
        }
        if status < 200 {
            return Err(format!(
                "status {status} is interim (1xx), not a final response"
            ));
        }
    }
    for (n, v) in fields {
        validate_response_field(n, v)?;
    }
    Ok(())
}

/// Checks one header a filter sets on a response: valid, and not hop-by-hop or framing.
fn validate_response_field(name: &str, value: &[u8]) -> Result<(), String> {
    validate(name, value)?;
    if NOT_IN_A_FILTER_RESPONSE
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_str()))
    {
        return Err(hop_by_hop_in_response(name));
    }
    Ok(())
}

/// One header a filter sets on a response, checked as [`validate_response_field`] checks
/// it and parsed as [`parse`] parses it.
pub fn parse_response(name: &str, value: Vec<u8>) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = parse(name, value)?;
    if NOT_IN_A_FILTER_RESPONSE.contains(&name) {
        return Err(hop_by_hop_in_response(name.as_str()));
    }
    Ok((name, value))
}

fn hop_by_hop_in_response(name: &str) -> String {
    format!(
        "hop-by-hop header {:?} in a response (weir frames responses itself)",
        name.to_ascii_lowercase()
    )
}

/// Removes every value of each of `names` (any case; an invalid name is in no map) and
/// keeps the other headers in the order they were. `HeaderMap::remove` alone moves the
/// last header into the removed one's place; this rebuilds the map, once however many
/// names go, when that would reorder it. A name not in the map costs one hash lookup.
pub fn remove_in_order<S: AsRef<str>>(map: &mut HeaderMap, names: &[S]) {
    let gone: Vec<HeaderName> = names
        .iter()
        .filter_map(|n| HeaderName::from_bytes(n.as_ref().as_bytes()).ok())
        .filter(|n| map.contains_key(n))
        .collect();
    match gone.as_slice() {
        [] => return,
        [only] if map.keys().last() == Some(only) => {
            map.remove(only);
            return;
        }
        _ => {}
    }
    // A few names are compared one by one; many (up to `MAX_NAMES`) are hashed, so a
    // long list costs one pass, not one pass per name.
    let hashed: Option<HashSet<&HeaderName>> = (gone.len() > 16).then(|| gone.iter().collect());
    let is_gone = |key: &HeaderName| match &hashed {
        Some(set) => set.contains(key),
        None => gone.contains(key),
    };
    let old = std::mem::take(map);
    map.reserve(old.keys_len());
    let mut current: Option<(HeaderName, bool)> = None;
    for (key, value) in old {
        if let Some(key) = key {
            let keep = !is_gone(&key);
            current = Some((key, keep));
        }
        if let Some((key, true)) = &current {
            map.append(key.clone(), value);
        }
    }
}

/// How a side checks one header a filter sets: [`parse`] on a request,
/// [`parse_response`] on a response.
pub type Parse = fn(&str, Vec<u8>) -> Result<(HeaderName, HeaderValue), String>;

/// Applies a filter's header edit (a 0.1 `continue` edit, or 0.2.1's `change-headers`, on
/// a request or a response) to `map`: every set checked with `parse` before anything
/// changes, removals first, then sets, each replacing every existing value of its name
/// where it was.
pub fn apply_edit_map(
    map: &mut HeaderMap,
    set: Vec<(String, Vec<u8>)>,
    remove: &[String],
    parse: Parse,
) -> Result<(), String> {
    if map.keys_len() + set.len() > MAX_NAMES {
        return Err(too_many_names());
    }
    if remove.len() > MAX_NAMES {
        return Err(format!(
            "too many header names to remove ({}; one edit removes at most {MAX_NAMES})",
            remove.len()
        ));
    }
    let set = set
        .into_iter()
        .map(|(n, v)| parse(&n, v))
        .collect::<Result<Vec<_>, _>>()?;
    remove_in_order(map, remove);
    // The first set of a name replaces its values where they were; another set of the
    // same name adds to them.
    let mut replaced: Vec<HeaderName> = Vec::with_capacity(set.len());
    for (name, value) in set {
        if replaced.contains(&name) {
            map.append(name, value);
        } else {
            map.insert(name.clone(), value);
            replaced.push(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hop_by_hop_test_names_rfc_9110s_list_only() {
        let hop_by_hop = [
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::PROXY_AUTHENTICATE,
            header::PROXY_AUTHORIZATION,
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ];
        for name in &hop_by_hop {
            assert!(is_hop_by_hop(name), "{name}");
        }
        // And stripping takes every one of them, multiple values included.
        let mut h = HeaderMap::new();
        for name in &hop_by_hop {
            h.append(name.clone(), HeaderValue::from_static("a"));
            h.append(name.clone(), HeaderValue::from_static("b"));
        }
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
        // And nothing else: every standard header http knows, and near misses.
        let standard = [
            header::ACCEPT,
            header::ACCEPT_ENCODING,
            header::AUTHORIZATION,
            header::CACHE_CONTROL,
            header::CONTENT_ENCODING,
            header::CONTENT_TYPE,
            header::COOKIE,
            header::DATE,
            header::ETAG,
            header::EXPECT,
            header::FORWARDED,
            header::LOCATION,
            header::ORIGIN,
            header::RANGE,
            header::RETRY_AFTER,
            header::SERVER,
            header::SET_COOKIE,
            header::USER_AGENT,
            header::VARY,
            header::VIA,
        ];
        for name in &standard {
            assert!(!is_hop_by_hop(name), "{name}");
        }
        for name in [
            "host",
            "content-length",
            "x-request-id",
            "connections",
            "t",
            "tes",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
        }
    }

    #[test]
    fn first_finds_what_get_finds_in_small_and_large_maps() {
        for extra in [0, 3, 12] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static("a"));
            for i in 0..extra {
                h.insert(
                    HeaderName::from_bytes(format!("x-n{i}").as_bytes()).unwrap(),
                    HeaderValue::from_static("v"),
                );
            }
            h.append(X_REQUEST_ID, HeaderValue::from_static("one"));
            h.append(X_REQUEST_ID, HeaderValue::from_static("two"));
            for name in [X_REQUEST_ID, TRACEPARENT, header::HOST, header::ACCEPT] {
                assert_eq!(first(&h, &name), h.get(&name), "{name} among {extra} more");
            }
            assert_eq!(first(&h, &X_REQUEST_ID).unwrap(), "one");
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let fields: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect();
        from_fields(&fields)
    }

    fn listed(map: &HeaderMap) -> Vec<(String, String)> {
        let text = |v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned();
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), text(v)))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn validation_takes_what_http_takes() {
        for b in 0..=u8::MAX {
            for name in [vec![b], vec![b'x', b, b'y']] {
                let http = HeaderName::from_bytes(&name).is_ok();
                assert_eq!(valid_name(&name), http, "name {name:?}");
            }
            for value in [vec![b], vec![b'x', b, b'y']] {
                let http = HeaderValue::from_bytes(&value).is_ok();
                assert_eq!(valid_value(&value), http, "value {value:?}");
            }
        }
        for len in [0, 1, 0xffff, 0x10000] {
            let name = vec![b'a'; len];
            let http = HeaderName::from_bytes(&name).is_ok();
            assert_eq!(valid_name(&name), http, "a name of {len} bytes");
        }
        assert!(valid_value(b""));
    }

    #[test]
    fn a_message_holds_a_bounded_number_of_names_and_nothing_panics_past_it() {
        let name = |i: usize| HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap();
        let value = || HeaderValue::from_static("v");
        let mut h = HeaderMap::new();
        for i in 0..MAX_NAMES {
            put(&mut h, (name(i), value()), true).unwrap();
        }
        let refused = put(&mut h, (name(MAX_NAMES), value()), false);
        assert_eq!(
            refused,
            Err("too many header names (weir keeps at most 8192 on one message)".into())
        );
        // A name already there takes more values; removing one keeps the others.
        for _ in 0..30_000 {
            put(&mut h, (name(1), value()), false).unwrap();
        }
        remove_in_order(&mut h, &["x-0"]);
        assert_eq!(h.keys_len(), MAX_NAMES - 1);
        assert_eq!(h.get_all("x-1").iter().count(), 30_001);
        assert_eq!(h.keys().next(), Some(&name(1)));

        // A 0.1 edit or a filter's reply past the bound is refused as a whole.
        let set = vec![("x-new".to_owned(), b"1".to_vec()); 2];
        let before = h.clone();
        assert!(apply_edit_map(&mut h, set, &[], parse).is_err());
        assert_eq!(h, before);
        let remove = vec!["x-1".to_owned(); MAX_NAMES + 1];
        assert_eq!(
            apply_edit_map(&mut h, vec![], &remove, parse),
            Err("too many header names to remove (8193; one edit removes at most 8192)".into())
        );
        assert_eq!(h, before);
        let fields = vec![("x-a".to_owned(), b"1".to_vec()); MAX_NAMES + 1];
        assert!(validate_response(Some(200), &fields).is_err());
        let many: Vec<_> = (0..30_000)
            .map(|i| (format!("x-{i}"), b"v".to_vec()))
            .collect();
        assert_eq!(from_fields(&many).keys_len(), MAX_NAMES);
    }

    #[test]
    fn a_response_header_is_parsed_with_the_checks_a_listed_one_gets() {
        let cases: [(&str, &[u8]); 6] = [
            ("X-Served-By", b"weir"),
            ("Transfer-Encoding", b"chunked"),
            ("keep-alive", b"timeout=5"),
            ("proxy-authenticate", b"Basic"),
            ("bad name", b"1"),
            ("x-a", b"1\r\nx-evil: 1"),
        ];
        for (name, value) in cases {
            let listed = validate_response(None, &[(name.to_owned(), value.to_vec())]);
            let parsed = parse_response(name, value.to_vec()).map(|_| ());
            assert_eq!(parsed, listed, "{name}");
        }
        assert_eq!(
            parse_response("Upgrade", b"h2c".to_vec()),
            Err(
                "hop-by-hop header \"upgrade\" in a response (weir frames responses itself)".into()
            )
        );
    }

    #[test]
    fn removing_a_header_keeps_the_others_in_order() {
        let mut h = map(&[("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("d", "5")]);
        remove_in_order(&mut h, &["A"]);
        assert_eq!(listed(&h), pairs(&[("b", "2"), ("c", "4"), ("d", "5")]));
        // The last one, a missing one and one no map can hold change nothing else.
        remove_in_order(&mut h, &["d"]);
        remove_in_order(&mut h, &["missing", "bad name"]);
        assert_eq!(listed(&h), pairs(&[("b", "2"), ("c", "4")]));
        // Several at once, named twice, in any case: one pass, the rest in order.
        let mut h = map(&[("a", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("d", "5")]);
        remove_in_order(&mut h, &["C", "a", "A", "zz"]);
        assert_eq!(listed(&h), pairs(&[("b", "2"), ("d", "5")]));
        // Many names (looked up by hash): every other one of 40 goes.
        let all: Vec<(String, String)> =
            (0..40).map(|i| (format!("x-{i}"), i.to_string())).collect();
        let as_str: Vec<(&str, &str)> = all.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let mut h = map(&as_str);
        let odd: Vec<String> = (1..40).step_by(2).map(|i| format!("X-{i}")).collect();
        remove_in_order(&mut h, &odd);
        let even: Vec<(&str, &str)> = as_str.iter().copied().step_by(2).collect();
        assert_eq!(listed(&h), pairs(&even));
    }

    #[test]
    fn a_request_edit_replaces_values_in_place_and_checks_everything_first() {
        let mut h = map(&[("a", "1"), ("b", "2"), ("c", "3"), ("b", "4")]);
        let set = vec![
            ("B".to_owned(), b"x".to_vec()),
            ("e".to_owned(), b"y".to_vec()),
            ("b".to_owned(), b"z".to_vec()),
        ];
        apply_edit_map(&mut h, set, &["a".to_owned()], parse).unwrap();
        let want = [("b", "x"), ("b", "z"), ("c", "3"), ("e", "y")];
        assert_eq!(listed(&h), pairs(&want));

        let before = h.clone();
        let set = vec![
            ("f".to_owned(), b"1".to_vec()),
            ("g".to_owned(), b"a\r\nb".to_vec()),
        ];
        let refused = apply_edit_map(&mut h, set, &["c".to_owned()], parse);
        assert_eq!(refused, Err("invalid value for header \"g\"".to_owned()));
        assert_eq!(listed(&h), listed(&before));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::HOST, HeaderValue::from_static("weir.local"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        prepare_upstream(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn upgrade_alone_is_stripped_and_clean_maps_are_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        let mut clean = h.clone();
        strip_hop_by_hop(&mut clean);
        prepare_upstream(&mut clean);
        assert_eq!(clean, h);
    }

    #[test]
    fn edits_replace_and_remove_case_insensitively() {
        let mut h = map(&[("x-a", "1"), ("x-a", "2"), ("cookie", "c")]);
        let set = vec![("X-A".into(), b"3".to_vec())];
        apply_edit_map(&mut h, set, &["COOKIE".into()], parse).unwrap();
        assert_eq!(listed(&h), pairs(&[("x-a", "3")]));
        let bad_name = vec![("bad name".into(), b"v".to_vec())];
        assert!(apply_edit_map(&mut h, bad_name, &[], parse).is_err());
        let bad_value = vec![("x-b".into(), b"a\r\nb".to_vec())];
        assert!(apply_edit_map(&mut h, bad_value, &["x-a".into()], parse).is_err());
        assert_eq!(
            listed(&h),
            pairs(&[("x-a", "3")]),
            "a refused edit changes nothing"
        );
    }

    #[test]
    fn a_filter_response_must_be_final_and_free_of_hop_by_hop_headers() {
        let ok = vec![
            ("x-a".to_owned(), b"1".to_vec()),
            ("proxy-authenticate".to_owned(), b"Basic".to_vec()),
        ];
        for status in [200, 204, 304, 407, 599, 999] {
            assert_eq!(validate_response(Some(status), &ok), Ok(()), "{status}");
        }
        for status in [100, 101, 103, 199] {
            let e = validate_response(Some(status), &ok).unwrap_err();
            assert!(e.contains("interim (1xx)"), "{status}: {e}");
        }
        for status in [0, 42, 1000] {
            let e = validate_response(Some(status), &ok).unwrap_err();
            assert_eq!(e, format!("invalid status {status}"));
        }
        for name in [
            "connection",
            "Keep-Alive",
            "proxy-connection",
            "te",
            "trailer",
            "Transfer-Encoding",
            "upgrade",
        ] {
            let fields = vec![(name.to_owned(), b"x".to_vec())];
            let e = validate_response(Some(200), &fields).unwrap_err();
            assert!(e.contains("hop-by-hop header"), "{name}: {e}");
            assert!(e.contains(&name.to_ascii_lowercase()), "{name}: {e}");
            // Headers set by an edit are held to the same rule.
            assert!(validate_response(None, &fields).is_err(), "{name}");
        }
        let bad = vec![("bad name".to_owned(), b"v".to_vec())];
        assert!(validate_response(None, &bad).is_err());
    }

    #[test]
    fn fields_round_trip() {
        let mut h = HeaderMap::new();
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let back = from_fields(&to_fields(&h));
        assert_eq!(back.get_all("x-a").iter().count(), 2);
    }
}
