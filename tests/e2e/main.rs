//! End-to-end tests: a real `weir` process, real sockets, in-process upstreams.
//!
//! Everything runs on 127.0.0.1; nothing here reaches the internet.
//!
//! 1. Start an upstream: `let up = Upstream::builder().reply(|_, _| Reply::ok()).start().await;`
//! 2. Start weir with a config naming it:
//!    `let weir = Weir::start(&format!("... url = \"{}\" ...", up.url())).await;`
//! 3. Call `weir.url("/path")` with `support::client::client()`, then read `up.requests()`.
//!
//! The helpers live in [`support`]; `support_selftest` checks them without weir.

mod alert_rules;
mod all_four;
mod auth;
mod batch;
mod bounds;
mod breaker;
mod cache;
mod cleanup;
mod client_faults;
mod compression;
mod dashboard;
mod disk_full;
mod example_c;
mod example_js;
mod example_python;
mod fanout;
mod filters;
mod fleet;
mod h2_abuse;
mod idempotency;
mod jobs;
mod jobs_fleet;
mod large_bodies;
mod limiter;
mod operate;
mod otlp;
mod outbound;
mod paths;
mod proxy;
mod reload;
mod retry;
mod sanitize;
mod secrets;
mod slow_clients;
mod soak;
mod state_faults;
mod support;
mod support_selftest;
mod upstream_faults;
mod workers;
