//! The TOML config: parsing and validation as `weir check` does them before it loads any
//! filter ([`Config::parse`]), then the upstream pool `weir check` builds from it.
//!
//! Properties: no panic; every error is placed inside the text (a line and column that
//! exist); an accepted config names, for every filter a route uses, a component
//! ([`Config::filter_source`] panics if validation let through a filter that is neither
//! built in nor has a `wasm` file), and its upstreams make a pool.
//!
//! The config's directory does not exist, so relative paths (secret files, TLS files)
//! resolve to nothing.
#![no_main]

mod text_errors;

use std::path::Path;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use weir::config::Config;
use weir::telemetry::Telemetry;
use weir::upstream::UpstreamPool;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("/weir-fuzz-missing/weir.toml"), text) {
        Err(errors) => text_errors::assert_point_inside(text, &errors),
        Ok(config) => {
            for route in &config.raw.routes {
                for f in &route.get_ref().filters {
                    let _ = config.filter_source(&f.get_ref().name);
                    let _ = config.filter_settings(&f.get_ref().name);
                }
            }
            let upstreams: Vec<_> = config
                .raw
                .upstreams
                .iter()
                .map(|(n, u)| (n.clone(), u.get_ref().clone()))
                .collect();
            // The TLS settings may name files, which do not exist here: that is an error
            // `weir check` reports, not a failure of the target.
            let _ = UpstreamPool::new(&upstreams, telemetry().upstreams.clone());
        }
    }
});

/// One registry for the whole run: the pool registers nothing, but needs the metrics.
fn telemetry() -> &'static Telemetry {
    static T: OnceLock<Arc<Telemetry>> = OnceLock::new();
    T.get_or_init(|| Telemetry::new().expect("a fresh registry"))
}
