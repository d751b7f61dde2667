//! Helpers on the generated HTTP types: header lookup, edit builders, responses and
//! action shorthands.

use crate::{Outcome, Request, RequestAction, RequestEdit, Response, ResponseAction, ResponseEdit};

/// Header lookup on [`Fields`](crate::Fields) (`[(name, value)]`), by case-insensitive
/// name.
///
/// [`Request`] and [`Response`] have the same `header` and `header_str` methods.
pub trait FieldsExt {
    /// The first value of header `name`, if present.
    fn header(&self, name: &str) -> Option<&[u8]>;

    /// The first value of header `name`, if present and valid UTF-8.
    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every value of header `name`, in order.
    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a;
}

impl FieldsExt for [(String, Vec<u8>)] {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Header names cross the boundary in lowercase (see `fields` in the WIT); edits and
/// responses built here keep that promise whatever case the caller used.
fn header_name(name: impl Into<String>) -> String {
    let mut name = name.into();
    name.make_ascii_lowercase();
    name
}

// === impl Request ===

impl Request {
    /// The first value of request header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.header(name)
    }

    /// The first value of request header `name`, if present and valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.header_str(name)
    }

    /// The request's `x-request-id`: the id weir logs, returns to the client and sends
    /// upstream, so the one to show a person (an error body, a log line). weir always
    /// sets it before the first filter; `None` only where a test builds the request
    /// without it.
    ///
    /// It may be the client's own, so it is not unique: key per-request state on
    /// [`RequestInfo::id`](crate::RequestInfo::id) instead, which weir makes unique.
    pub fn request_id(&self) -> Option<&str> {
        self.header_str("x-request-id")
    }
}

// === impl Response ===

impl Response {
    /// A response with this status, no headers and an empty body.
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    /// A response with a JSON body and `content-type: application/json`.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(body.to_string())
    }

    /// A response with a text body and `content-type: text/plain; charset=utf-8`.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status)
            .with_header("content-type", "text/plain; charset=utf-8")
            .with_body(body.into())
    }

    /// Adds a header (the name is lowercased). Adding a name twice sends it twice.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((header_name(name), value.into()));
        self
    }

    /// Sets the body. weir sets `content-length` to match.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// The first value of response header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.header(name)
    }

    /// The first value of response header `name`, if present and valid UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.header_str(name)
    }
}

// === impl RequestEdit ===

impl Default for RequestEdit {
    fn default() -> Self {
        RequestEdit::new()
    }
}

impl RequestEdit {
    /// An edit that changes nothing; add changes with the builder methods.
    pub fn new() -> Self {
        RequestEdit {
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
            path_with_query: None,
            body: None,
            try_timeout_ms: None,
        }
    }

    /// Sets header `name` (lowercased) to `value`, replacing every existing value.
    /// Setting a name twice in one edit sends both values.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.set_headers.push((header_name(name), value.into()));
        self
    }

    /// Removes every value of header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(header_name(name));
        self
    }

    /// Replaces the path and query sent upstream, e.g. `"/v2/items?limit=10"`.
    pub fn path_with_query(mut self, path_with_query: impl Into<String>) -> Self {
        self.path_with_query = Some(path_with_query.into());
        self
    }

    /// Replaces the request body. weir fixes `content-length`.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// Limits how long this try waits for the upstream's response head; past it the
    /// outcome is `UpstreamError::Timeout` (and a retrying filter may try again). The
    /// route deadline still applies; the smallest limit any filter sets wins.
    pub fn try_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.try_timeout_ms = Some(timeout.as_millis().min(u32::MAX as u128) as u32);
        self
    }

    /// Whether this edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set_headers.is_empty()
            && self.remove_headers.is_empty()
            && self.path_with_query.is_none()
            && self.body.is_none()
            && self.try_timeout_ms.is_none()
    }
}

// === impl ResponseEdit ===

impl Default for ResponseEdit {
    fn default() -> Self {
        ResponseEdit::new()
    }
}

impl ResponseEdit {
    /// An edit that changes nothing; add changes with the builder methods.
    pub fn new() -> Self {
        ResponseEdit {
            set_headers: Vec::new(),
            remove_headers: Vec::new(),
        }
    }

    /// Sets header `name` (lowercased) to `value`, replacing every existing value.
    /// Setting a name twice in one edit sends both values.
    pub fn set_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.set_headers.push((header_name(name), value.into()));
        self
    }

    /// Removes every value of header `name`.
    pub fn remove_header(mut self, name: impl Into<String>) -> Self {
        self.remove_headers.push(header_name(name));
        self
    }

    /// Whether this edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set_headers.is_empty() && self.remove_headers.is_empty()
    }
}

// === impl RequestAction ===

impl RequestAction {
    /// Pass the request on unchanged, with no memo.
    pub fn proceed() -> Self {
        RequestAction::Continue((None, None))
    }

    /// Pass the request on after applying `edit`, with no memo.
    pub fn proceed_with_edit(edit: RequestEdit) -> Self {
        RequestAction::Continue((Some(edit), None))
    }

    /// Pass the request on after applying `edit`, if any, and hand `memo`, if any, to this
    /// filter's `on_response` for the same try.
    pub fn proceed_with(edit: Option<RequestEdit>, memo: Option<Vec<u8>>) -> Self {
        RequestAction::Continue((edit, memo))
    }
}

// === impl ResponseAction ===

impl ResponseAction {
    /// Pass the outcome on unchanged.
    pub fn proceed() -> Self {
        ResponseAction::Continue(None)
    }

    /// Pass the response on after applying `edit`.
    pub fn proceed_with_edit(edit: ResponseEdit) -> Self {
        ResponseAction::Continue(Some(edit))
    }
}

// === impl Outcome ===

impl Outcome {
    /// The response, if there is one.
    pub fn response(&self) -> Option<&Response> {
        match self {
            Outcome::Response(r) => Some(r),
            Outcome::Error(_) => None,
        }
    }

    /// The response status, if there is a response.
    pub fn status(&self) -> Option<u16> {
        self.response().map(|r| r.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UpstreamError;

    fn fields(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_returns_the_first_value() {
        let h = fields(&[("accept", "a"), ("x-id", "1"), ("X-Id", "2")]);
        assert_eq!(h.header("X-ID"), Some(&b"1"[..]));
        assert_eq!(h.header_str("x-id"), Some("1"));
        assert_eq!(h.header_all("x-id").collect::<Vec<_>>(), [b"1", b"2"]);
        assert_eq!(h.header("missing"), None);
    }

    #[test]
    fn header_str_is_none_for_non_utf8() {
        let h = [("x-raw".to_string(), vec![0xff, 0xfe])];
        assert_eq!(h.header("x-raw"), Some(&[0xff, 0xfe][..]));
        assert_eq!(h.header_str("x-raw"), None);
    }

    #[test]
    fn request_and_response_delegate_header_lookup() {
        let req = Request {
            method: "GET".into(),
            upstream: "https://api.example.com".into(),
            path_with_query: "/".into(),
            headers: fields(&[("authorization", "Bearer t")]),
            body: None,
        };
        assert_eq!(req.header_str("Authorization"), Some("Bearer t"));
        let resp = Response::new(200).with_header("ETag", "\"v1\"");
        assert_eq!(resp.header("etag"), Some(&b"\"v1\""[..]));
    }

    #[test]
    fn request_edit_builder() {
        assert!(RequestEdit::new().is_empty());
        let edit = RequestEdit::new()
            .set_header("X-A", "b")
            .set_header("x-bytes", vec![1u8, 2])
            .remove_header("Cookie")
            .path_with_query("/v2?x=1")
            .body("{}");
        assert_eq!(
            edit,
            RequestEdit {
                set_headers: vec![
                    ("x-a".into(), b"b".to_vec()),
                    ("x-bytes".into(), vec![1, 2])
                ],
                remove_headers: vec!["cookie".into()],
                path_with_query: Some("/v2?x=1".into()),
                body: Some(b"{}".to_vec()),
                try_timeout_ms: None,
            }
        );
        assert!(!edit.is_empty());
        assert_eq!(RequestEdit::default(), RequestEdit::new());
    }

    #[test]
    fn response_edit_builder() {
        assert!(ResponseEdit::new().is_empty());
        let edit = ResponseEdit::new()
            .set_header("X-Served-By", "weir")
            .remove_header("server");
        assert_eq!(
            edit,
            ResponseEdit {
                set_headers: vec![("x-served-by".into(), b"weir".to_vec())],
                remove_headers: vec!["server".into()],
            }
        );
    }

    #[test]
    fn response_constructors() {
        let r = Response::json(429, &serde_json::json!({"error": "slow down"}));
        assert_eq!(r.status, 429);
        assert_eq!(r.header_str("content-type"), Some("application/json"));
        assert_eq!(r.body.as_deref(), Some(&br#"{"error":"slow down"}"#[..]));

        let r = Response::text(503, "open");
        assert_eq!(
            r.header_str("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(r.body.as_deref(), Some(&b"open"[..]));

        assert_eq!(Response::new(204).body, None);
    }

    #[test]
    fn action_shorthands() {
        assert_eq!(
            RequestAction::proceed(),
            RequestAction::Continue((None, None))
        );
        assert_eq!(
            RequestAction::proceed_with(None, Some(vec![7])),
            RequestAction::Continue((None, Some(vec![7])))
        );
        assert_eq!(
            RequestAction::proceed_with_edit(RequestEdit::new()),
            RequestAction::Continue((Some(RequestEdit::new()), None))
        );
        assert_eq!(ResponseAction::proceed(), ResponseAction::Continue(None));
        assert_eq!(
            ResponseAction::proceed_with_edit(ResponseEdit::new()),
            ResponseAction::Continue(Some(ResponseEdit::new()))
        );
    }

    #[test]
    fn outcome_status() {
        assert_eq!(Outcome::Response(Response::new(502)).status(), Some(502));
        assert_eq!(Outcome::Error(UpstreamError::Reset).status(), None);
        assert!(Outcome::Error(UpstreamError::Tls).response().is_none());
    }
}
