//! What the header targets share: header names and values the way a guest may make them.

use arbitrary::Unstructured;

/// Header fields in the WIT form: (name, value bytes).
pub type Fields = Vec<(String, Vec<u8>)>;

/// Names worth trying more often than arbitrary text finds them.
const NAMES: &[&str] = &[
    "x-a",
    "X-A",
    "content-type",
    "content-length",
    "Connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "host",
    "",
    "bad name",
    "x-a\r\n",
    "x\0a",
    "x:a",
];

/// Bytes worth putting into values.
const BYTES: &[u8] = b"\r\n\0\t \x7f\x80\xff";

/// A header name: a well-known or a malformed one, or any text.
pub fn name(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    Ok(if u.arbitrary()? {
        (*u.choose(NAMES)?).to_owned()
    } else {
        u.arbitrary()?
    })
}

/// A header value: any bytes, often with a CR, LF, NUL or other control byte in them.
pub fn value(u: &mut Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut v: Vec<u8> = u.arbitrary()?;
    if !v.is_empty() && u.ratio(1, 4)? {
        let at = u.choose_index(v.len())?;
        v[at] = *u.choose(BYTES)?;
    }
    Ok(v)
}

/// Up to `max` fields, as a guest may set them.
pub fn fields(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Fields> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=max)? {
        out.push((name(u)?, value(u)?));
    }
    Ok(out)
}

/// Up to `max` fields as they are on a message before any filter sees it: through
/// `HeaderMap` (hyper's parse, or the client's), so valid and lowercase.
pub fn message_fields(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Fields> {
    Ok(weir::headers::to_fields(&weir::headers::from_fields(
        &fields(u, max)?,
    )))
}

/// Up to `max` header names to remove.
pub fn names(u: &mut Unstructured<'_>, max: usize) -> arbitrary::Result<Vec<String>> {
    let mut out = Vec::new();
    for _ in 0..u.int_in_range(0..=max)? {
        out.push(name(u)?);
    }
    Ok(out)
}

/// Whether `bytes` holds a CR, LF or NUL: never in anything weir sends.
pub fn has_cr_lf_nul(bytes: &[u8]) -> bool {
    bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0))
}

/// Asserts that every field is a header weir can send as it is: a valid lowercase name,
/// a valid value, no CR, LF or NUL, and nothing `from_fields` would drop.
pub fn assert_sendable(fields: &Fields) {
    for (n, v) in fields {
        assert!(!has_cr_lf_nul(n.as_bytes()), "name {n:?}");
        assert!(!has_cr_lf_nul(v), "{n:?}: {v:?}");
        assert!(http::HeaderName::from_bytes(n.as_bytes()).is_ok(), "{n:?}");
        assert!(http::HeaderValue::from_bytes(v).is_ok(), "{n:?}: {v:?}");
        assert_eq!(*n, n.to_ascii_lowercase());
    }
    let sent = weir::headers::from_fields(fields);
    assert_eq!(
        sent.len(),
        fields.len(),
        "from_fields dropped an accepted header"
    );
}

/// Whether `name` is a header that describes a connection or framing, which a filter
/// may not put on the client's response.
pub fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}
