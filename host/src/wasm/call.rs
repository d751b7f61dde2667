//! The host side of `weir:filter@0.2.1`'s `request` and `response` handles.
//!
//! A 0.2 call does not copy the request into the guest. The chain's request (and, in
//! `on-response`, what came back) moves into the instance's store for the one call, as
//! a [`CallData`]; the guest holds borrowed handles to it and reads or changes it
//! through the methods here, and it moves back out when the call returns. Every change
//! is checked and applied at once; the first one refused is kept, and the pool reports
//! the call's answer as invalid (see `FilterPool::on_request_until`).

use bytes::Bytes;
use wasmtime::component::Resource;

use http::HeaderMap;

use super::GuestHost;
use super::bindings::v2::weir::filter0_2_1::types::{
    Host, HostRequest, HostResponse, ResponseFacts,
};
use super::bindings::{RequestInfo, UpstreamError};
use super::{ChainOutcome, ChainRequest};
use crate::headers;

/// What a guest's `request` handle stands for: the request of the call in progress.
pub struct RequestHandle;

/// What a guest's `response` handle stands for: the outcome of the call in progress.
pub struct ResponseHandle;

type Fields = Vec<(String, Vec<u8>)>;

/// What one 0.2 call works on: moved into the store before the call, out after it.
pub(super) struct CallData {
    pub info: RequestInfo,
    pub req: ChainRequest,
    /// The request body, for a filter that asked for it; copied only if it reads it.
    pub req_body: Option<Bytes>,
    /// A body the guest set.
    pub new_body: Option<Vec<u8>>,
    /// A per-try timeout the guest set.
    pub try_timeout_ms: Option<u32>,
    /// In: the memo of this filter's `on-request` (for `on-response`). Out: the memo the
    /// guest set in `on-request`.
    pub memo: Option<Bytes>,
    /// In `on-response`: what came back. `None` in `on-request`.
    pub outcome: Option<ChainOutcome>,
    /// The headers of weir's error response, which header changes go to when the outcome
    /// is an error or `fixed`.
    pub error_headers: HeaderMap,
    /// weir ended the request itself: header changes go to its error response, and the
    /// status cannot change.
    pub fixed: bool,
    /// The first change the host refused, and why.
    pub invalid: Option<String>,
}

impl Default for CallData {
    fn default() -> CallData {
        CallData {
            info: RequestInfo {
                id: String::new(),
                route: String::new(),
                attempt: 0,
                remaining_ms: 0,
                client_addr: String::new(),
            },
            req: ChainRequest::default(),
            req_body: None,
            new_body: None,
            try_timeout_ms: None,
            memo: None,
            outcome: None,
            error_headers: HeaderMap::new(),
            fixed: false,
            invalid: None,
        }
    }
}

impl CallData {
    /// Lends the request and its facts to the call, or takes them back after it: the
    /// caller's values and these trade places, so nothing is copied.
    pub fn swap_request(&mut self, info: &mut RequestInfo, req: &mut ChainRequest) {
        std::mem::swap(&mut self.info, info);
        std::mem::swap(&mut self.req, req);
    }

    /// Keeps the first refused change, and hands its error to the guest.
    fn refuse(&mut self, why: String) -> Result<(), String> {
        if self.invalid.is_none() {
            self.invalid = Some(why.clone());
        }
        Err(why)
    }

    /// The headers the guest reads on the response side: the response's (the upstream's,
    /// a filter's, or weir's own error response), or, with no response, those set for
    /// weir's error response.
    fn response_headers(&self) -> &HeaderMap {
        match &self.outcome {
            Some(ChainOutcome::Response(r)) => &r.headers,
            _ => &self.error_headers,
        }
    }

    /// `response.error`: why there is no response, if there is none.
    fn error(&self) -> Option<UpstreamError> {
        match &self.outcome {
            Some(ChainOutcome::Error(kind)) => Some(*kind),
            _ => None,
        }
    }

    /// `response.status`: 0 without a response.
    fn status(&self) -> u16 {
        match &self.outcome {
            Some(ChainOutcome::Response(r)) => r.status,
            _ => 0,
        }
    }

    /// `response.facts`: the error, the status and the memo, in one call.
    fn facts(&self) -> ResponseFacts {
        ResponseFacts {
            error: self.error(),
            status: self.status(),
            memo: self.memo(),
        }
    }

    /// `request.memo`: a copy for the guest.
    fn memo(&self) -> Option<Vec<u8>> {
        self.memo.as_deref().map(<[u8]>::to_vec)
    }

    /// The headers response-side changes go to.
    fn response_headers_mut(&mut self) -> &mut HeaderMap {
        match &mut self.outcome {
            Some(ChainOutcome::Response(r)) if !self.fixed => &mut r.headers,
            _ => &mut self.error_headers,
        }
    }
}

/// `header`: the first value of `name` (any case).
fn first(map: &HeaderMap, name: &str) -> Option<Vec<u8>> {
    map.get(name).map(|v| v.as_bytes().to_vec())
}

/// `header-values`: every value of `name`, in order.
fn values(map: &HeaderMap, name: &str) -> Vec<Vec<u8>> {
    let values = map.get_all(name);
    values.iter().map(|v| v.as_bytes().to_vec()).collect()
}

/// `header-names`: each name once, in lower case, in order.
fn names(map: &HeaderMap) -> Vec<String> {
    map.keys().map(|n| n.as_str().to_owned()).collect()
}

impl CallData {
    /// `request.set-header` and `append-header`.
    pub fn put_request_header(
        &mut self,
        name: String,
        value: Vec<u8>,
        replace: bool,
    ) -> Result<(), String> {
        let done = headers::parse(&name, value)
            .and_then(|parsed| headers::put(&mut self.req.headers, parsed, replace));
        done.or_else(|e| self.refuse(e))
    }

    /// `request.set-path-with-query`.
    pub fn set_path(&mut self, path_with_query: String) -> Result<(), String> {
        if let Err(e) = crate::chain::check_path(&path_with_query) {
            return self.refuse(e);
        }
        self.req.path_with_query = path_with_query;
        Ok(())
    }

    /// `request.body`: the body the guest set, or the one it asked for.
    pub fn request_body(&self) -> Option<Vec<u8>> {
        match &self.new_body {
            Some(b) => Some(b.clone()),
            None => self.req_body.as_ref().map(|b| b.to_vec()),
        }
    }

    /// `response.set-header` and `append-header`.
    pub fn put_response_header(
        &mut self,
        name: String,
        value: Vec<u8>,
        replace: bool,
    ) -> Result<(), String> {
        let done = headers::parse_response(&name, value)
            .and_then(|parsed| headers::put(self.response_headers_mut(), parsed, replace));
        done.or_else(|e| self.refuse(e))
    }

    /// `request.change-headers`: every change checked first, then made.
    pub fn change_request_headers(
        &mut self,
        remove: Vec<String>,
        set: Fields,
    ) -> Result<(), String> {
        let done = headers::apply_edit_map(&mut self.req.headers, set, &remove, headers::parse);
        done.or_else(|e| self.refuse(e))
    }

    /// `response.change-headers`, as [`CallData::change_request_headers`].
    pub fn change_response_headers(
        &mut self,
        remove: Vec<String>,
        set: Fields,
    ) -> Result<(), String> {
        let map = self.response_headers_mut();
        let done = headers::apply_edit_map(map, set, &remove, headers::parse_response);
        done.or_else(|e| self.refuse(e))
    }

    /// `response.set-status`.
    pub fn set_status(&mut self, status: u16) -> Result<(), String> {
        if self.fixed || !matches!(self.outcome, Some(ChainOutcome::Response(_))) {
            return self.refuse(format!(
                "set-status({status}): there is no upstream response to change (weir answers with its own error)"
            ));
        }
        if let Err(e) = headers::validate_response(Some(status), &[]) {
            return self.refuse(e);
        }
        if let Some(ChainOutcome::Response(r)) = &mut self.outcome {
            r.status = status;
        }
        Ok(())
    }
}

impl Host for GuestHost {}

impl HostRequest for GuestHost {
    fn id(&mut self, _: Resource<RequestHandle>) -> String {
        self.call.info.id.clone()
    }

    fn route(&mut self, _: Resource<RequestHandle>) -> String {
        self.call.info.route.clone()
    }

    fn attempt(&mut self, _: Resource<RequestHandle>) -> u32 {
        self.call.info.attempt
    }

    fn remaining_ms(&mut self, _: Resource<RequestHandle>) -> u64 {
        self.call.info.remaining_ms
    }

    fn client_addr(&mut self, _: Resource<RequestHandle>) -> String {
        self.call.info.client_addr.clone()
    }

    fn method(&mut self, _: Resource<RequestHandle>) -> String {
        self.call.req.method.clone()
    }

    fn upstream(&mut self, _: Resource<RequestHandle>) -> String {
        self.call.req.upstream.clone()
    }

    fn path_with_query(&mut self, _: Resource<RequestHandle>) -> String {
        self.call.req.path_with_query.clone()
    }

    fn header(&mut self, _: Resource<RequestHandle>, name: String) -> Option<Vec<u8>> {
        first(&self.call.req.headers, &name)
    }

    fn header_values(&mut self, _: Resource<RequestHandle>, name: String) -> Vec<Vec<u8>> {
        values(&self.call.req.headers, &name)
    }

    fn header_names(&mut self, _: Resource<RequestHandle>) -> Vec<String> {
        names(&self.call.req.headers)
    }

    fn headers(&mut self, _: Resource<RequestHandle>) -> Fields {
        headers::to_fields(&self.call.req.headers)
    }

    fn header_block(&mut self, _: Resource<RequestHandle>) -> Vec<u8> {
        headers::to_block(&self.call.req.headers)
    }

    fn body(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        self.call.request_body()
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.call.put_request_header(name, value, true)
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.call.put_request_header(name, value, false)
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) {
        headers::remove_in_order(&mut self.call.req.headers, &[name]);
    }

    fn change_headers(
        &mut self,
        _: Resource<RequestHandle>,
        remove: Vec<String>,
        set: Fields,
    ) -> Result<(), String> {
        self.call.change_request_headers(remove, set)
    }

    fn set_path_with_query(
        &mut self,
        _: Resource<RequestHandle>,
        path_with_query: String,
    ) -> Result<(), String> {
        self.call.set_path(path_with_query)
    }

    fn set_body(&mut self, _: Resource<RequestHandle>, body: Vec<u8>) {
        self.call.new_body = Some(body);
    }

    fn set_try_timeout_ms(&mut self, _: Resource<RequestHandle>, ms: u32) {
        let t = &mut self.call.try_timeout_ms;
        *t = Some(t.map_or(ms, |old| old.min(ms)));
    }

    fn memo(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        self.call.memo()
    }

    fn set_memo(&mut self, _: Resource<RequestHandle>, memo: Vec<u8>) {
        self.call.memo = Some(Bytes::from(memo));
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        // Handles are only ever lent to a call (`borrow<request>`), never owned by the
        // guest, so there is nothing to free.
        Ok(())
    }
}

impl HostResponse for GuestHost {
    fn error(&mut self, _: Resource<ResponseHandle>) -> Option<UpstreamError> {
        self.call.error()
    }

    fn status(&mut self, _: Resource<ResponseHandle>) -> u16 {
        self.call.status()
    }

    fn facts(&mut self, _: Resource<ResponseHandle>) -> ResponseFacts {
        self.call.facts()
    }

    fn header(&mut self, _: Resource<ResponseHandle>, name: String) -> Option<Vec<u8>> {
        first(self.call.response_headers(), &name)
    }

    fn header_values(&mut self, _: Resource<ResponseHandle>, name: String) -> Vec<Vec<u8>> {
        values(self.call.response_headers(), &name)
    }

    fn header_names(&mut self, _: Resource<ResponseHandle>) -> Vec<String> {
        names(self.call.response_headers())
    }

    fn headers(&mut self, _: Resource<ResponseHandle>) -> Fields {
        headers::to_fields(self.call.response_headers())
    }

    fn header_block(&mut self, _: Resource<ResponseHandle>) -> Vec<u8> {
        headers::to_block(self.call.response_headers())
    }

    fn body(&mut self, _: Resource<ResponseHandle>) -> Option<Vec<u8>> {
        match &self.call.outcome {
            Some(ChainOutcome::Response(r)) => r.body.clone(),
            _ => None,
        }
    }

    fn set_status(&mut self, _: Resource<ResponseHandle>, status: u16) -> Result<(), String> {
        self.call.set_status(status)
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.call.put_response_header(name, value, true)
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        self.call.put_response_header(name, value, false)
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) {
        headers::remove_in_order(self.call.response_headers_mut(), &[name]);
    }

    fn change_headers(
        &mut self,
        _: Resource<ResponseHandle>,
        remove: Vec<String>,
        set: Fields,
    ) -> Result<(), String> {
        self.call.change_response_headers(remove, set)
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        // Lent for one call only, as `request` is.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::ChainResponse;

    fn fields(pairs: &[(&str, &str)]) -> Fields {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    fn with_headers(pairs: &[(&str, &str)]) -> CallData {
        let mut call = CallData::default();
        call.req.headers = headers::from_fields(&fields(pairs));
        call
    }

    fn request_fields(call: &CallData) -> Fields {
        headers::to_fields(&call.req.headers)
    }

    #[test]
    fn reads_find_names_in_any_case_and_keep_the_order() {
        let h = headers::from_fields(&fields(&[("accept", "a"), ("x-id", "1"), ("X-Id", "2")]));
        assert_eq!(first(&h, "X-ID"), Some(b"1".to_vec()));
        assert_eq!(values(&h, "x-id"), [b"1".to_vec(), b"2".to_vec()]);
        assert_eq!(names(&h), ["accept", "x-id"]);
        assert_eq!(first(&h, "missing"), None);
    }

    #[test]
    fn set_replaces_every_value_and_append_adds_one() {
        let mut call = with_headers(&[("x-a", "1"), ("accept", "*/*"), ("X-A", "2")]);
        call.put_request_header("X-A".into(), b"3".to_vec(), true)
            .unwrap();
        assert_eq!(
            request_fields(&call),
            fields(&[("x-a", "3"), ("accept", "*/*")])
        );
        call.put_request_header("x-a".into(), b"4".to_vec(), false)
            .unwrap();
        assert_eq!(
            request_fields(&call),
            fields(&[("x-a", "3"), ("x-a", "4"), ("accept", "*/*")])
        );
        headers::remove_in_order(&mut call.req.headers, &["X-A"]);
        assert_eq!(request_fields(&call), fields(&[("accept", "*/*")]));
        assert_eq!(call.invalid, None);
    }

    #[test]
    fn a_refused_change_changes_nothing_and_the_first_reason_is_kept() {
        let mut call = with_headers(&[("accept", "*/*")]);
        let bad_value = call.put_request_header("x-a".into(), b"1\r\nx-evil: 1".to_vec(), true);
        assert_eq!(bad_value, Err("invalid value for header \"x-a\"".into()));
        let bad_path = call.set_path("no-slash".into());
        assert_eq!(bad_path, Err("invalid path \"no-slash\"".into()));
        assert_eq!(request_fields(&call), fields(&[("accept", "*/*")]));
        assert_eq!(call.req.path_with_query, "");
        assert_eq!(
            call.invalid.as_deref(),
            Some("invalid value for header \"x-a\"")
        );
        // A valid change still applies after a refused one.
        call.set_path("/v2?x=1".into()).unwrap();
        assert_eq!(call.req.path_with_query, "/v2?x=1");
    }

    #[test]
    fn change_headers_checks_every_change_before_making_any() {
        let mut call = with_headers(&[("cookie", "a=1"), ("accept", "*/*"), ("x-a", "0")]);
        call.change_request_headers(
            vec!["Cookie".into(), "absent".into()],
            fields(&[("X-A", "1"), ("x-new", "n"), ("x-a", "2")]),
        )
        .unwrap();
        // Removals first, then sets; a set replaces the name's values where they were,
        // and a name set twice keeps both.
        assert_eq!(
            request_fields(&call),
            fields(&[
                ("accept", "*/*"),
                ("x-a", "1"),
                ("x-a", "2"),
                ("x-new", "n")
            ])
        );
        let before = request_fields(&call);
        let refused = call.change_request_headers(
            vec!["accept".into()],
            fields(&[("x-ok", "1"), ("bad name", "2")]),
        );
        assert_eq!(refused, Err("invalid header name \"bad name\"".into()));
        assert_eq!(request_fields(&call), before, "a refused change makes none");
        assert_eq!(
            call.invalid.as_deref(),
            Some("invalid header name \"bad name\"")
        );

        // On the response, what `set-header` refuses there is refused here too.
        let mut call = CallData {
            outcome: Some(ChainOutcome::Response(ChainResponse {
                status: 200,
                headers: headers::from_fields(&fields(&[("server", "nginx")])),
                body: None,
            })),
            ..CallData::default()
        };
        assert_eq!(
            call.change_response_headers(vec![], fields(&[("connection", "close")])),
            Err(
                "hop-by-hop header \"connection\" in a response (weir frames responses itself)"
                    .into()
            )
        );
        call.change_response_headers(vec!["server".into()], fields(&[("x-served-by", "weir")]))
            .unwrap();
        assert_eq!(
            headers::to_fields(call.response_headers()),
            fields(&[("x-served-by", "weir")])
        );
    }

    #[test]
    fn a_header_block_is_every_field_as_http_1_writes_it() {
        let mut h =
            headers::from_fields(&fields(&[("accept", "*/*"), ("x-a", " 1: b"), ("x-a", "")]));
        h.append("x-bin", http::HeaderValue::from_bytes(b"\xff\t").unwrap());
        assert_eq!(
            headers::to_block(&h),
            b"accept: */*\r\nx-a:  1: b\r\nx-a: \r\nx-bin: \xff\t\r\n".to_vec()
        );
        assert_eq!(headers::to_block(&HeaderMap::new()), Vec::<u8>::new());
    }

    #[test]
    fn facts_are_the_error_the_status_and_the_memo() {
        let facts = |call: &CallData| {
            let f = call.facts();
            (f.error, f.status, f.memo)
        };
        let mut call = CallData {
            outcome: Some(ChainOutcome::Error(UpstreamError::Timeout)),
            memo: Some(Bytes::from_static(b"m")),
            ..CallData::default()
        };
        assert_eq!(
            facts(&call),
            (Some(UpstreamError::Timeout), 0, Some(b"m".to_vec()))
        );
        call.outcome = Some(ChainOutcome::Response(ChainResponse {
            status: 201,
            headers: HeaderMap::new(),
            body: None,
        }));
        call.memo = None;
        assert_eq!(facts(&call), (None, 201, None));
    }

    #[test]
    fn the_body_read_is_the_one_set_or_else_the_one_asked_for() {
        let mut call = CallData {
            req_body: Some(Bytes::from_static(b"sent")),
            ..CallData::default()
        };
        assert_eq!(call.request_body(), Some(b"sent".to_vec()));
        call.new_body = Some(b"changed".to_vec());
        assert_eq!(call.request_body(), Some(b"changed".to_vec()));
    }

    #[test]
    fn response_changes_go_to_the_response_or_to_weirs_error_answer() {
        let mut call = CallData {
            outcome: Some(ChainOutcome::Response(ChainResponse {
                status: 200,
                headers: headers::from_fields(&fields(&[("server", "nginx"), ("x-a", "1")])),
                body: None,
            })),
            ..CallData::default()
        };
        call.put_response_header("x-served-by".into(), b"weir".to_vec(), true)
            .unwrap();
        call.put_response_header("X-A".into(), b"2".to_vec(), false)
            .unwrap();
        call.set_status(203).unwrap();
        assert_eq!(
            call.put_response_header("Transfer-Encoding".into(), b"chunked".to_vec(), true),
            Err("hop-by-hop header \"transfer-encoding\" in a response (weir frames responses itself)".into())
        );
        assert_eq!(call.set_status(99), Err("invalid status 99".into()));
        let Some(ChainOutcome::Response(r)) = &call.outcome else {
            unreachable!()
        };
        assert_eq!(
            (r.status, headers::to_fields(&r.headers)),
            (
                203,
                fields(&[
                    ("server", "nginx"),
                    ("x-a", "1"),
                    ("x-a", "2"),
                    ("x-served-by", "weir")
                ])
            )
        );
        assert!(call.error_headers.is_empty());

        // No response: header changes are for weir's error answer, and there is no
        // status to change.
        let mut call = CallData {
            outcome: Some(ChainOutcome::Error(UpstreamError::Timeout)),
            ..CallData::default()
        };
        call.put_response_header("x-attempts".into(), b"2".to_vec(), true)
            .unwrap();
        assert_eq!(
            headers::to_fields(&call.error_headers),
            fields(&[("x-attempts", "2")])
        );
        assert!(call.set_status(200).is_err());
        // weir ended the request itself: its error response keeps its status.
        let mut call = CallData {
            outcome: Some(ChainOutcome::Response(ChainResponse {
                status: 504,
                ..ChainResponse::default()
            })),
            fixed: true,
            ..CallData::default()
        };
        assert!(call.set_status(200).is_err());
        call.put_response_header("x-a".into(), b"1".to_vec(), true)
            .unwrap();
        assert_eq!(
            headers::to_fields(&call.error_headers),
            fields(&[("x-a", "1")])
        );
    }
}
