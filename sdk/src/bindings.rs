//! Guest bindings for the `weir:filter/http-filter` world, generated from `wit/v0.2/filter.wit`.
//!
//! Filter authors do not use this module directly: the crate root re-exports the types,
//! the `state`, `log` and `metrics` modules wrap the imports, and
//! [`export_filter!`](crate::export_filter) drives the export macro generated here.

wit_bindgen::generate!({
    path: "../wit/v0.2",
    world: "http-filter",
    // `export_filter!` expands in the filter's crate, so the generated export macro must
    // be reachable from there, by a path that starts at this crate.
    pub_export_macro: true,
    default_bindings_module: "weir_filter::bindings",
    // Lets filters and their tests compare actions and edits with `assert_eq!`.
    additional_derives: [PartialEq, Eq],
    // The world imports 0.1.2's unchanged interfaces from `deps/`.
    generate_all,
});

use std::mem::ManuallyDrop;

use weir::filter0_2_1::types::{Request, Response};

/// A second value for a request handle weir lent to the current call, for the SDK's
/// views to keep. `ManuallyDrop`: dropping it would give back a handle this component
/// does not own.
pub(crate) fn lend_request(handle: &Request) -> ManuallyDrop<Request> {
    // SAFETY: the handle stays valid for the whole call, which outlives the views
    // built on it, and the copy is never dropped.
    ManuallyDrop::new(unsafe { Request::from_handle(handle.handle()) })
}

/// As [`lend_request`], for the response handle.
pub(crate) fn lend_response(handle: &Response) -> ManuallyDrop<Response> {
    // SAFETY: as in `lend_request`.
    ManuallyDrop::new(unsafe { Response::from_handle(handle.handle()) })
}
