//! The host side of `weir:filter@0.2.0`'s `request` and `response` handles.
//!
//! A 0.2 call does not copy the request into the guest. The chain's request (and, in
//! `on-response`, what came back) moves into the instance's store for the one call, as
//! a [`CallData`]; the guest holds borrowed handles to it and reads or changes it
//! through the methods here, and it moves back out when the call returns. Every change
//! is checked and applied at once; the first one refused is kept, and the pool reports
//! the call's answer as invalid (see `FilterPool::on_request_until`).

use bytes::Bytes;
use wasmtime::component::Resource;

use super::GuestHost;
use super::bindings::v2::weir::filter0_2_0::types::{Host, HostRequest, HostResponse};
use super::bindings::{Outcome, Request, RequestInfo, UpstreamError};
use crate::headers;

/// What a guest's `request` handle stands for: the request of the call in progress.
pub struct RequestHandle;

/// What a guest's `response` handle stands for: the outcome of the call in progress.
pub struct ResponseHandle;

type Fields = Vec<(String, Vec<u8>)>;

/// What one 0.2 call works on: moved into the store before the call, out after it.
pub(super) struct CallData {
    pub info: RequestInfo,
    pub req: Request,
    /// The request body, for a filter that asked for it; copied only if it reads it.
    pub req_body: Option<Bytes>,
    /// A body the guest set.
    pub new_body: Option<Vec<u8>>,
    /// A per-try timeout the guest set.
    pub try_timeout_ms: Option<u32>,
    /// In: the memo of this filter's `on-request` (for `on-response`). Out: the memo the
    /// guest set in `on-request`.
    pub memo: Option<Vec<u8>>,
    /// In `on-response`: what came back. `None` in `on-request`.
    pub outcome: Option<Outcome>,
    /// The headers of weir's error response, which header changes go to when the outcome
    /// is an error or `fixed`.
    pub error_headers: Fields,
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
            req: Request {
                method: String::new(),
                upstream: String::new(),
                path_with_query: String::new(),
                headers: Vec::new(),
                body: None,
            },
            req_body: None,
            new_body: None,
            try_timeout_ms: None,
            memo: None,
            outcome: None,
            error_headers: Vec::new(),
            fixed: false,
            invalid: None,
        }
    }
}

impl CallData {
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
    fn response_headers(&self) -> &Fields {
        match &self.outcome {
            Some(Outcome::Response(r)) => &r.headers,
            _ => &self.error_headers,
        }
    }

    /// The headers response-side changes go to.
    fn response_headers_mut(&mut self) -> &mut Fields {
        match &mut self.outcome {
            Some(Outcome::Response(r)) if !self.fixed => &mut r.headers,
            _ => &mut self.error_headers,
        }
    }
}

fn first(fields: &Fields, name: &str) -> Option<Vec<u8>> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
}

fn values(fields: &Fields, name: &str) -> Vec<Vec<u8>> {
    fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

fn names(fields: &Fields) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(fields.len());
    for (n, _) in fields {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(n)) {
            out.push(n.to_ascii_lowercase());
        }
    }
    out
}

/// Replaces (`replace`) or adds to the values of `name`.
fn put(fields: &mut Fields, name: String, value: Vec<u8>, replace: bool) {
    if replace {
        fields.retain(|(n, _)| !n.eq_ignore_ascii_case(&name));
    }
    let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
        name.to_ascii_lowercase()
    } else {
        name
    };
    fields.push((name, value));
}

fn remove(fields: &mut Fields, name: &str) {
    fields.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
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
        self.call.req.headers.clone()
    }

    fn body(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        match &self.call.new_body {
            Some(b) => Some(b.clone()),
            None => self.call.req_body.as_ref().map(|b| b.to_vec()),
        }
    }

    fn set_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        if let Err(e) = headers::validate(&name, &value) {
            return self.call.refuse(e);
        }
        put(&mut self.call.req.headers, name, value, true);
        Ok(())
    }

    fn append_header(
        &mut self,
        _: Resource<RequestHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        if let Err(e) = headers::validate(&name, &value) {
            return self.call.refuse(e);
        }
        put(&mut self.call.req.headers, name, value, false);
        Ok(())
    }

    fn remove_header(&mut self, _: Resource<RequestHandle>, name: String) {
        remove(&mut self.call.req.headers, &name);
    }

    fn set_path_with_query(
        &mut self,
        _: Resource<RequestHandle>,
        path_with_query: String,
    ) -> Result<(), String> {
        if let Err(e) = crate::chain::check_path(&path_with_query) {
            return self.call.refuse(e);
        }
        self.call.req.path_with_query = path_with_query;
        Ok(())
    }

    fn set_body(&mut self, _: Resource<RequestHandle>, body: Vec<u8>) {
        self.call.new_body = Some(body);
    }

    fn set_try_timeout_ms(&mut self, _: Resource<RequestHandle>, ms: u32) {
        let t = &mut self.call.try_timeout_ms;
        *t = Some(t.map_or(ms, |old| old.min(ms)));
    }

    fn memo(&mut self, _: Resource<RequestHandle>) -> Option<Vec<u8>> {
        self.call.memo.clone()
    }

    fn set_memo(&mut self, _: Resource<RequestHandle>, memo: Vec<u8>) {
        self.call.memo = Some(memo);
    }

    fn drop(&mut self, _: Resource<RequestHandle>) -> wasmtime::Result<()> {
        // Handles are only ever lent to a call (`borrow<request>`), never owned by the
        // guest, so there is nothing to free.
        Ok(())
    }
}

impl HostResponse for GuestHost {
    fn error(&mut self, _: Resource<ResponseHandle>) -> Option<UpstreamError> {
        match &self.call.outcome {
            Some(Outcome::Error(kind)) => Some(*kind),
            _ => None,
        }
    }

    fn status(&mut self, _: Resource<ResponseHandle>) -> u16 {
        match &self.call.outcome {
            Some(Outcome::Response(r)) => r.status,
            _ => 0,
        }
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
        self.call.response_headers().clone()
    }

    fn body(&mut self, _: Resource<ResponseHandle>) -> Option<Vec<u8>> {
        match &self.call.outcome {
            Some(Outcome::Response(r)) => r.body.clone(),
            _ => None,
        }
    }

    fn set_status(&mut self, _: Resource<ResponseHandle>, status: u16) -> Result<(), String> {
        let call = &mut self.call;
        match &mut call.outcome {
            Some(Outcome::Response(r)) if !call.fixed => {
                if let Err(e) = headers::validate_response(Some(status), &[]) {
                    return call.refuse(e);
                }
                r.status = status;
                Ok(())
            }
            _ => call.refuse(format!(
                "set-status({status}): there is no upstream response to change (weir answers with its own error)"
            )),
        }
    }

    fn set_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        if let Err(e) = headers::validate_response_field(&name, &value) {
            return self.call.refuse(e);
        }
        put(self.call.response_headers_mut(), name, value, true);
        Ok(())
    }

    fn append_header(
        &mut self,
        _: Resource<ResponseHandle>,
        name: String,
        value: Vec<u8>,
    ) -> Result<(), String> {
        if let Err(e) = headers::validate_response_field(&name, &value) {
            return self.call.refuse(e);
        }
        put(self.call.response_headers_mut(), name, value, false);
        Ok(())
    }

    fn remove_header(&mut self, _: Resource<ResponseHandle>, name: String) {
        remove(self.call.response_headers_mut(), &name);
    }

    fn drop(&mut self, _: Resource<ResponseHandle>) -> wasmtime::Result<()> {
        // Lent for one call only, as `request` is.
        Ok(())
    }
}
