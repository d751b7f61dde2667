//! Logging into weir's log (stderr, in weir's format).
//!
//! weir adds the fields `route` and `filter` (the filter's configured name) to every
//! line, so messages need not repeat them; add the request id
//! ([`Request::request_id`](crate::Request::request_id), the `x-request-id` weir logs)
//! yourself when a line is about one request. Messages longer than 4096 bytes are cut and end in `…`.
//!
//! weir writes one `info` line per request itself, and its default level is `info`: keep
//! `info` and above for what an operator should see, and use [`debug`] for detail. Guest
//! lines come from the log target `weir::wasm::log_impl`, so an operator can show one
//! filter's debug lines with `[log] level = "info,weir::wasm::log_impl=debug"` (or the
//! same in `RUST_LOG`). Each call crosses into the host: keep logging off the
//! per-request path unless something is worth a line.
//!
//! stdout and stderr (`println!`, `eprintln!`) reach the same log, line by line, at
//! `info`. Off wasm (under `cargo test`) these functions panic.
//!
//! ```
//! use weir_filter::{Request, RequestInfo, log};
//!
//! fn refused(info: &RequestInfo, req: &Request, why: &str) {
//!     let id = req.request_id().unwrap_or_else(|| info.id().to_owned());
//!     log::warn(&format!("request {id} refused: {why}"));
//! }
//! ```

use crate::bindings::weir::filter0_1_2::log as wit;

pub use wit::Level;

/// Writes one line at `level`.
pub fn log(level: Level, message: &str) {
    wit::log(level, message);
}

/// Writes one line at [`Level::Trace`].
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Writes one line at [`Level::Debug`].
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes one line at [`Level::Info`].
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes one line at [`Level::Warn`].
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes one line at [`Level::Error`].
pub fn error(message: &str) {
    log(Level::Error, message);
}
