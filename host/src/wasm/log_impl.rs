//! Host side of `weir:filter/log`: guest messages go to weir's log, tagged with the route
//! and filter.

use super::GuestHost;
use super::bindings::weir::filter::log::{Host, Level};

/// Longer guest messages are cut, so one filter cannot flood the log with one call.
const MAX_MESSAGE: usize = 4096;

impl Host for GuestHost {
    fn log(&mut self, level: Level, message: String) {
        let mut message = message;
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let (route, filter) = (&self.meta.route, &self.meta.filter);
        match level {
            Level::Trace => tracing::trace!(%route, %filter, "{message}"),
            Level::Debug => tracing::debug!(%route, %filter, "{message}"),
            Level::Info => tracing::info!(%route, %filter, "{message}"),
            Level::Warn => tracing::warn!(%route, %filter, "{message}"),
            Level::Error => tracing::error!(%route, %filter, "{message}"),
        }
    }
}

// `types` has no functions, only the types the other interfaces use.
impl super::bindings::weir::filter::types::Host for GuestHost {}
