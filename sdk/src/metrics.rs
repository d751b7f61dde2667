//! Prometheus series kept by weir and exported on its admin listener's `/metrics`.
//!
//! weir prefixes each name with `weir_filter_` and adds the labels `route` and `filter`
//! (the filter's configured name), so pass only labels of your own:
//! `counter_add("rejected_total", &[("reason", "quota")], 1)` from filter `limiter` on
//! route `payments` becomes
//! `weir_filter_rejected_total{reason="quota",route="payments",filter="limiter"}`.
//!
//! - A name must be a valid Prometheus name (`[a-zA-Z_:][a-zA-Z0-9_:]*`); end counters
//!   in `_total`. An invalid name is dropped, and logged once.
//! - A series is fixed by its first use: its kind and its label names. A later call
//!   with another kind or other label names (or `route` or `filter` as a label name)
//!   is dropped.
//! - Histograms use Prometheus' default buckets (5 ms to 10 s): observe seconds.
//! - Keep label values to a few (a reason, a status class), never an id or a user.
//!
//! Each call crosses into the host. Off wasm (under `cargo test`) these functions panic.
//!
//! ```
//! use weir_filter::{Outcome, metrics};
//!
//! fn count(outcome: &Outcome) {
//!     let class = match outcome.status() {
//!         Some(s) if s < 400 => "ok",
//!         Some(s) if s < 500 => "client_error",
//!         Some(_) => "server_error",
//!         None => "no_response",
//!     };
//!     metrics::counter_add("outcomes_total", &[("class", class)], 1);
//! }
//! ```

use crate::bindings::weir::filter0_1_2::metrics as wit;

/// Adds `value` to counter `name` (created at 0 on first use).
pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    wit::counter_add(name, &owned(labels), value);
}

/// Sets gauge `name` to `value`. A gauge is shared by every instance on the route: set
/// it from state every instance agrees on, not from an instance's own view.
pub fn gauge_set(name: &str, labels: &[(&str, &str)], value: f64) {
    wit::gauge_set(name, &owned(labels), value);
}

/// Records one observation of `value` in histogram `name`.
pub fn histogram_observe(name: &str, labels: &[(&str, &str)], value: f64) {
    wit::histogram_observe(name, &owned(labels), value);
}

fn owned(labels: &[(&str, &str)]) -> Vec<(String, String)> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
