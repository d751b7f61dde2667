//! A filter built against `weir:filter@0.2.0` (the WIT as it was before 0.2.1 added
//! `header-block`, `change-headers` and `facts`), with raw wit-bindgen rather than the
//! SDK, so it keeps that version's imports and exports.
//!
//! On the request it sets `x-v020: 0.2.0`, removes `x-drop`, and keeps the request's
//! path as its memo. On the response it reads the memo back and sets
//! `x-v020-memo: <path>`, or `x-v020-error: <kind>` when the upstream never answered.

#[allow(missing_docs, unsafe_code)] // generated bindings
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "http-filter", generate_all });
}

use bindings::exports::weir::filter0_2_0::filter::Guest;
use bindings::weir::filter0_1_2::types::UpstreamError;
use bindings::weir::filter0_2_0::types::{
    FilterInfo, Phases, Request, RequestAction, Response, ResponseAction,
};

struct V020;

impl Guest for V020 {
    fn init(_config: String) -> Result<FilterInfo, String> {
        Ok(FilterInfo {
            name: "v020".into(),
            version: "0.2.0".into(),
            phases: Phases::REQUEST | Phases::RESPONSE,
            wants_request_body: false,
            wants_response_body: false,
            may_retry: false,
        })
    }

    fn on_request(req: &Request) -> RequestAction {
        req.remove_header("x-drop");
        // weir counts a refused change itself; this filter's changes are all valid.
        let _ = req.set_header("x-v020", b"0.2.0");
        req.set_memo(req.path_with_query().as_bytes());
        RequestAction::Continue
    }

    fn on_response(req: &Request, resp: &Response) -> ResponseAction {
        let _ = match resp.error() {
            Some(kind) => resp.set_header("x-v020-error", error_name(kind).as_bytes()),
            None => resp.set_header("x-v020-memo", &req.memo().unwrap_or_default()),
        };
        ResponseAction::Continue
    }
}

/// The WIT name of `kind`, e.g. `connect-failed`.
fn error_name(kind: UpstreamError) -> &'static str {
    match kind {
        UpstreamError::ConnectFailed => "connect-failed",
        UpstreamError::ConnectTimeout => "connect-timeout",
        UpstreamError::Timeout => "timeout",
        UpstreamError::Reset => "reset",
        UpstreamError::Tls => "tls",
        UpstreamError::Protocol => "protocol",
        UpstreamError::Overloaded => "overloaded",
    }
}

// Only a wasm linker takes export names like "weir:filter/filter@0.1.0#init"; a native
// cdylib (`cargo build --workspace --all-targets`) could not link them.
#[cfg(target_arch = "wasm32")]
bindings::export!(V020 with_types_in bindings);
