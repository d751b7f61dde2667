//! Logging into weir's log. weir tags each line with the route, the request and the
//! filter's name, so messages need not repeat them.
//!
//! Logging crosses into the host; keep it off the per-request path unless something
//! is worth a line.

use crate::bindings::weir::filter::log as wit;

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
