//! A filter built against `weir:filter@0.1.0` (the WIT as it was before `outbound`),
//! with raw wit-bindgen rather than the SDK, so it keeps that version's imports and
//! exports. It sets `x-legacy: 0.1.0` on the request and on the response.

#[allow(missing_docs, unsafe_code)] // generated bindings
mod bindings {
    wit_bindgen::generate!({ path: "wit", world: "http-filter" });
}

use bindings::exports::weir::filter::filter::{FilterInfo, Guest};
use bindings::weir::filter::types::{
    Outcome, Request, RequestAction, RequestEdit, RequestInfo, ResponseAction, ResponseEdit,
};

struct Legacy;

fn header() -> Vec<(String, Vec<u8>)> {
    vec![("x-legacy".to_owned(), b"0.1.0".to_vec())]
}

impl Guest for Legacy {
    fn init(_config: String) -> Result<FilterInfo, String> {
        Ok(FilterInfo {
            name: "legacy".into(),
            version: "0.1.0".into(),
            wants_request_body: false,
            wants_response_body: false,
            may_retry: false,
        })
    }

    fn on_request(_info: RequestInfo, _req: Request) -> RequestAction {
        RequestAction::Continue((
            Some(RequestEdit {
                set_headers: header(),
                remove_headers: Vec::new(),
                path_with_query: None,
                body: None,
                try_timeout_ms: None,
            }),
            None,
        ))
    }

    fn on_response(
        _info: RequestInfo,
        _req: Request,
        _memo: Option<Vec<u8>>,
        _outcome: Outcome,
    ) -> ResponseAction {
        ResponseAction::Continue(Some(ResponseEdit {
            set_headers: header(),
            remove_headers: Vec::new(),
        }))
    }
}

// Only a wasm linker takes export names like "weir:filter/filter@0.1.0#init"; a native
// cdylib (`cargo build --workspace --all-targets`) could not link them.
#[cfg(target_arch = "wasm32")]
bindings::export!(Legacy with_types_in bindings);
