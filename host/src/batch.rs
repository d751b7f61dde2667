//! Batch requests: many calls in one client request, for clients that pay per
//! connection or per round trip.
//!
//! `POST /_weir/batch` on the proxy listener (with a `[batch]` table) takes a JSON list
//! of calls:
//!
//! ```json
//! [{"method": "GET", "path": "/api/a?x=1", "headers": [["accept", "text/plain"]]},
//!  {"method": "POST", "path": "/api/b", "body": "hello"},
//!  {"method": "PUT", "path": "/api/c", "body_base64": "AAEC"}]
//! ```
//!
//! Headers are `[name, value]` pairs so that duplicates survive. A call without a
//! `host` header gets the batch request's, so host-matched routes match as they would.
//! `content-length` is set from the call's body.
//!
//! Each call is routed as if it had been sent alone: the same router, chain, limits,
//! metrics and `/requests` record (linked by `batch`), so a batch reaches nothing a single
//! request could not. A call no route takes gets 404 in its slot. Calls run at most
//! `concurrency` at once; the answer is 200 with one result per call, in request order.
//!
//! The whole batch is checked before anything is sent: a malformed one gets 400 naming
//! the item and field as a JSON pointer (RFC 6901), too many calls get 400, too many
//! bytes 413. With `Prefer: respond-async` (and `[jobs]`) the batch becomes a job.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method};

/// Where batches are posted, on the proxy listener.
pub const PATH: &str = "/_weir/batch";

/// The name batch jobs are kept under in place of a route's.
pub const JOB_ROUTE: &str = "(batch)";

/// One call of a batch, checked.
#[derive(Debug, Clone)]
pub struct Call {
    /// The method.
    pub method: Method,
    /// The path and query.
    pub path: http::uri::PathAndQuery,
    /// The headers, in order, duplicates kept.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Bytes,
}

/// Why a batch was refused: the place (a JSON pointer into the batch) and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pointer}: {message}")]
pub struct BadBatch {
    /// RFC 6901 pointer to the bad item or field; empty for the whole batch.
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

fn bad(pointer: String, message: impl Into<String>) -> BadBatch {
    BadBatch {
        pointer,
        message: message.into(),
    }
}

/// Parses and checks a whole batch: every call or none.
pub fn parse(body: &[u8], max_items: usize) -> Result<Vec<Call>, BadBatch> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        bad(
            String::new(),
            format!("the body is not JSON: {e}; a batch is a JSON list of calls"),
        )
    })?;
    let serde_json::Value::Array(items) = value else {
        return Err(bad(
            String::new(),
            "a batch is a JSON list of calls: [{\"method\": \"GET\", \"path\": \"/…\"}, …]",
        ));
    };
    if items.is_empty() {
        return Err(bad(String::new(), "the batch has no calls"));
    }
    if items.len() > max_items {
        return Err(bad(
            String::new(),
            format!(
                "the batch has {} calls; at most {max_items} are allowed (batch.max_items)",
                items.len()
            ),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| call(item, &format!("/{i}")))
        .collect()
}

fn call(item: &serde_json::Value, at: &str) -> Result<Call, BadBatch> {
    let serde_json::Value::Object(fields) = item else {
        return Err(bad(
            at.to_owned(),
            "a call is an object with `method` and `path`",
        ));
    };
    for key in fields.keys() {
        if !["method", "path", "headers", "body", "body_base64"].contains(&key.as_str()) {
            return Err(bad(
                format!("{at}/{}", escape(key)),
                format!(
                    "unknown field {key:?}: a call has method, path, headers, body or body_base64"
                ),
            ));
        }
    }
    let text = |key: &str| -> Result<Option<&str>, BadBatch> {
        match fields.get(key) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(bad(format!("{at}/{key}"), "must be a string")),
        }
    };
    let method = text("method")?.ok_or_else(|| bad(format!("{at}/method"), "is missing"))?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| {
        bad(
            format!("{at}/method"),
            format!("{method:?} is not an HTTP method"),
        )
    })?;
    let path = text("path")?.ok_or_else(|| bad(format!("{at}/path"), "is missing"))?;
    if !path.starts_with('/') {
        return Err(bad(
            format!("{at}/path"),
            format!("{path:?} must start with `/`: a path and query on this proxy"),
        ));
    }
    if crate::jobs::claims_reserved(path) {
        return Err(bad(
            format!("{at}/path"),
            format!("{path:?} is one of weir's own URLs (/_weir/…), which a batch cannot call"),
        ));
    }
    let path: http::uri::PathAndQuery = path.parse().map_err(|e| {
        bad(
            format!("{at}/path"),
            format!("{path:?} is not a valid path: {e}"),
        )
    })?;
    let mut headers = Vec::new();
    match fields.get("headers") {
        None => {}
        Some(serde_json::Value::Array(pairs)) => {
            for (j, pair) in pairs.iter().enumerate() {
                headers.push(header(pair, &format!("{at}/headers/{j}"))?);
            }
        }
        Some(_) => {
            return Err(bad(
                format!("{at}/headers"),
                "must be a list of [name, value] pairs",
            ));
        }
    }
    headers.retain(|(n, _)| n != http::header::CONTENT_LENGTH);
    let body = match (text("body")?, text("body_base64")?) {
        (Some(_), Some(_)) => {
            return Err(bad(
                format!("{at}/body_base64"),
                "give `body` or `body_base64`, not both",
            ));
        }
        (Some(t), None) => Bytes::copy_from_slice(t.as_bytes()),
        (None, Some(b)) => BASE64.decode(b).map(Bytes::from).map_err(|e| {
            bad(
                format!("{at}/body_base64"),
                format!("is not valid base64: {e}"),
            )
        })?,
        (None, None) => Bytes::new(),
    };
    Ok(Call {
        method,
        path,
        headers,
        body,
    })
}

fn header(pair: &serde_json::Value, at: &str) -> Result<(HeaderName, HeaderValue), BadBatch> {
    let pair = pair.as_array().filter(|p| p.len() == 2).ok_or_else(|| {
        bad(
            at.to_owned(),
            "a header is a [name, value] pair of two strings",
        )
    })?;
    let (Some(name), Some(value)) = (pair[0].as_str(), pair[1].as_str()) else {
        let j = usize::from(pair[0].is_string());
        return Err(bad(format!("{at}/{j}"), "must be a string"));
    };
    let name = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| bad(format!("{at}/0"), format!("{name:?} is not a header name")))?;
    if name == http::header::TRANSFER_ENCODING {
        return Err(bad(
            format!("{at}/0"),
            "transfer-encoding cannot be set: weir frames each call's body itself",
        ));
    }
    let value = HeaderValue::from_str(value).map_err(|_| {
        bad(
            format!("{at}/1"),
            "is not a valid header value (control characters are not allowed)",
        )
    })?;
    Ok((name, value))
}

/// A JSON pointer's escaping of one reference token (RFC 6901 §3).
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> BadBatch {
        parse(text.as_bytes(), 3).unwrap_err()
    }

    #[test]
    fn a_good_batch_keeps_order_duplicate_headers_and_bodies() {
        let calls = parse(
            br#"[{"method": "GET", "path": "/a?x=1", "headers": [["x-a", "1"], ["x-a", "2"], ["content-length", "9"]]},
                 {"method": "POST", "path": "/b", "body": "hi"},
                 {"method": "PUT", "path": "/c", "body_base64": "AAH/"}]"#,
            3,
        )
        .unwrap();
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].path.as_str(), "/a?x=1");
        let xa: Vec<_> = calls[0].headers.iter().map(|(_, v)| v.clone()).collect();
        assert_eq!(xa, ["1", "2"], "content-length is dropped, duplicates kept");
        assert_eq!(calls[1].method, Method::POST);
        assert_eq!(&calls[1].body[..], b"hi");
        assert_eq!(&calls[2].body[..], &[0, 1, 255]);
    }

    #[test]
    fn each_problem_names_its_pointer() {
        let cases = [
            ("{}", "", "a batch is a JSON list"),
            ("[]", "", "no calls"),
            ("nope", "", "not JSON"),
            (r#"[1,2,3,4]"#, "", "at most 3"),
            (r#"[{"method":"GET","path":"/"}, 7]"#, "/1", "an object"),
            (r#"[{"path":"/"}]"#, "/0/method", "is missing"),
            (
                r#"[{"method":"G T","path":"/"}]"#,
                "/0/method",
                "not an HTTP method",
            ),
            (r#"[{"method":"GET"}]"#, "/0/path", "is missing"),
            (
                r#"[{"method":"GET","path":"a"}]"#,
                "/0/path",
                "must start with",
            ),
            (
                r#"[{"method":"GET","path":"/_weir/batch"}]"#,
                "/0/path",
                "weir's own",
            ),
            (
                r#"[{"method":"GET","path":"/ a"}]"#,
                "/0/path",
                "not a valid path",
            ),
            (
                r#"[{"method":"GET","path":"/","x/y":1}]"#,
                "/0/x~1y",
                "unknown field",
            ),
            (
                r#"[{"method":"GET","path":"/","headers":{}}]"#,
                "/0/headers",
                "pairs",
            ),
            (
                r#"[{"method":"GET","path":"/","headers":[["a"]]}]"#,
                "/0/headers/0",
                "pair",
            ),
            (
                r#"[{"method":"GET","path":"/","headers":[["a",1]]}]"#,
                "/0/headers/0/1",
                "string",
            ),
            (
                r#"[{"method":"GET","path":"/","headers":[["a b","1"]]}]"#,
                "/0/headers/0/0",
                "not a header name",
            ),
            (
                r#"[{"method":"GET","path":"/","headers":[["a","\n"]]}]"#,
                "/0/headers/0/1",
                "not a valid header value",
            ),
            (
                r#"[{"method":"GET","path":"/","headers":[["transfer-encoding","chunked"]]}]"#,
                "/0/headers/0/0",
                "transfer-encoding",
            ),
            (
                r#"[{"method":"GET","path":"/","body":"a","body_base64":"YQ=="}]"#,
                "/0/body_base64",
                "not both",
            ),
            (
                r#"[{"method":"GET","path":"/","body_base64":"@@"}]"#,
                "/0/body_base64",
                "base64",
            ),
            (
                r#"[{"method":"GET","path":"/","body":5}]"#,
                "/0/body",
                "string",
            ),
        ];
        for (text, pointer, message) in cases {
            let e = err(text);
            assert_eq!(e.pointer, pointer, "{text}: {e}");
            assert!(e.message.contains(message), "{text}: {e}");
        }
    }
}
