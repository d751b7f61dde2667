//! Prometheus series kept by weir. weir prefixes each name with `weir_filter_` and adds
//! `route` and `filter` labels, so pass only the labels of your own.

use crate::bindings::weir::filter::metrics as wit;

/// Adds `value` to counter `name`.
pub fn counter_add(name: &str, labels: &[(&str, &str)], value: u64) {
    wit::counter_add(name, &owned(labels), value);
}

/// Sets gauge `name` to `value`.
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
