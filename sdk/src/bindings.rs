//! Guest bindings for the `weir:filter/http-filter` world, generated from `wit/filter.wit`.
//!
//! Filter authors do not use this module directly: the crate root re-exports the types,
//! the `state`, `log` and `metrics` modules wrap the imports, and
//! [`export_filter!`](crate::export_filter) drives the export macro generated here.

wit_bindgen::generate!({
    path: "../wit",
    world: "http-filter",
    // `export_filter!` expands in the filter's crate, so the generated export macro must
    // be reachable from there, by a path that starts at this crate.
    pub_export_macro: true,
    default_bindings_module: "weir_filter::bindings",
    // Lets filters and their tests compare actions and edits with `assert_eq!`.
    additional_derives: [PartialEq, Eq],
});
