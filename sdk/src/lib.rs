//! Write weir filters in Rust: one trait, one macro.
//!
//! weir is an egress HTTP proxy; every request it forwards runs through a chain of
//! filters, and each filter is a WebAssembly component that implements the
//! `weir:filter/http-filter` world in `wit/filter.wit`. This crate hides the component
//! plumbing: you write an ordinary Rust type, and the SDK turns it into that component.
//!
//! 1. Make a `cdylib` crate that depends on `weir-filter` and `serde`.
//! 2. Describe your config as a `serde` type. weir hands the filter its TOML `config`
//!    as JSON; the SDK parses it and names your filter in any error.
//! 3. Implement [`Filter`]: [`new`](Filter::new) builds the filter from its config,
//!    [`on_request`](Filter::on_request) and [`on_response`](Filter::on_response) decide
//!    what happens to each request. Every method but `new` has a default that lets the
//!    request pass untouched.
//! 4. Call [`export_filter!`] once with your type.
//! 5. Test the logic with plain `cargo test`: [`build_filter`] runs the same config
//!    parsing as weir's `init`, and the trait methods are ordinary Rust calls.
//! 6. Build with `cargo build --release --target wasm32-wasip2` and point a
//!    `[filters.NAME] wasm = "…"` entry in weir's config at the `.wasm` file.
//!
//! # A complete filter
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "stamp"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! weir-filter = { path = "path/to/weir/sdk" }
//! serde = { version = "1", features = ["derive"] }
//! ```
//!
//! `src/lib.rs`, a filter that tags every request with the team named in its config
//! (`config = { team = "payments" }`; without `team`, weir refuses the config with
//! ``stamp: missing field `team` ``):
//!
//! ```no_run
//! use serde::Deserialize;
//! use weir_filter::{Filter, Request, RequestAction, RequestEdit, RequestInfo};
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     team: String,
//! }
//!
//! struct Stamp(Config);
//!
//! impl Filter for Stamp {
//!     type Config = Config;
//!     const NAME: &'static str = "stamp";
//!
//!     fn new(config: Config) -> Result<Self, String> {
//!         Ok(Stamp(config))
//!     }
//!
//!     fn on_request(&mut self, _info: &RequestInfo, _req: &Request) -> RequestAction {
//!         let edit = RequestEdit::new().set_header("x-team", self.0.team.as_str());
//!         RequestAction::proceed_with_edit(edit)
//!     }
//! }
//!
//! weir_filter::export_filter!(Stamp);
//! ```
//!
//! Build it:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! # => target/wasm32-wasip2/release/stamp.wasm, a component
//! ```
//!
//! # What a filter can rely on
//!
//! - weir keeps a pool of instances per (route, filter). Each instance is initialised once
//!   (`init` parses the config and calls [`Filter::new`]) and then serves one call at a
//!   time, so `&mut self` needs no locks. An instance is not tied to a request: data for
//!   the way back goes in the memo of [`RequestAction::Continue`], data shared between
//!   requests goes in [`state`].
//! - A panic traps the instance. weir throws it away, counts it, and applies the
//!   filter's `on_error` policy; it never takes the proxy down.
//! - Besides the imports wrapped here, a filter gets WASI clocks and random numbers.
//!   stdout and stderr go to weir's log; prefer [`log`], which is tagged with the route.
//! - The SDK keeps the unsafe ABI glue to itself: a filter crate can
//!   `#![forbid(unsafe_code)]`.
//!
//! The SDK also builds on the host target so that a filter's logic can be unit-tested
//! with plain `cargo test`; only the [`state`], [`log`] and [`metrics`] calls need wasm
//! (off wasm they panic), and [`export_filter!`] exports nothing there.

// Generated bindings need `unsafe` for the canonical ABI; that is allowed on the
// `bindings` module alone. The rest of the SDK is safe Rust.
#![deny(unsafe_code)]
#![deny(missing_docs)]

// The generated code is full of `unsafe` and undocumented ABI helpers; we document what
// filter authors see through the re-exports below instead.
#[allow(unsafe_code, missing_docs)]
pub mod bindings;

pub mod codec;
mod config;
mod http;
pub mod log;
pub mod metrics;
pub mod outbound;
pub mod state;
pub mod units;

#[doc(hidden)]
pub mod __private;

pub use bindings::weir::filter::types::{
    Fields, FilterInfo, Outcome, Request, RequestAction, RequestEdit, RequestInfo, Response,
    ResponseAction, ResponseEdit, UpstreamError,
};
pub use config::{NoConfig, build_filter, parse_config};
pub use http::FieldsExt;
/// Re-exported so filters can build JSON bodies (`serde_json::json!`) for
/// [`Response::json`] without a dependency of their own.
pub use serde_json;

/// What a filter asks of the host, returned by [`Filter::info`].
///
/// The name comes from [`Filter::NAME`] and the version from the filter crate's
/// `Cargo.toml`; these are the knobs that change how weir treats the filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    /// Buffer the whole request body and pass it in [`Request::body`]. Default `false`:
    /// the body streams past this filter and `body` is `None`.
    pub wants_request_body: bool,
    /// Buffer the whole upstream response body and pass it in the outcome's
    /// [`Response::body`]. Default `false`.
    pub wants_response_body: bool,
    /// This filter may answer [`ResponseAction::Retry`]; weir then keeps the request body
    /// so it can send it again. Default `false`: a retry from this filter is ignored.
    pub may_retry: bool,
}

/// A weir filter. Implement it, then call [`export_filter!`] with the type.
///
/// weir creates one value per instance through [`new`](Filter::new) and then calls
/// [`on_request`](Filter::on_request) and [`on_response`](Filter::on_response) on it, one
/// call at a time. The same value sees many requests, and one request may see
/// `on_request` on one instance and `on_response` on another.
pub trait Filter: Sized + 'static {
    /// The filter's config, deserialised from the JSON weir passes to `init`.
    ///
    /// Use `#[serde(deny_unknown_fields)]` so a typo is an error. An empty config (no
    /// `config` key in weir's TOML) arrives as `{}`, so give optional keys
    /// `#[serde(default)]`. A filter without config can use [`NoConfig`].
    type Config: serde::de::DeserializeOwned;

    /// A short name for weir's logs and metrics, e.g. `"retry"`. It also prefixes every
    /// init error this filter reports.
    const NAME: &'static str;

    /// Builds the filter from its parsed config; called once per instance.
    ///
    /// Validate here: an `Err` rejects the config, so weir refuses to start, or keeps the
    /// old config on reload. The SDK prefixes the message with `NAME: `.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What this filter asks of the host. Called once, right after [`new`](Filter::new).
    ///
    /// Default: [`Info::default()`], no bodies and no retries.
    fn info(&self) -> Info {
        Info::default()
    }

    /// Decides what happens to a request, in chain order, before it goes upstream. Called
    /// again for every retry that passes this filter, with a higher
    /// [`RequestInfo::attempt`].
    ///
    /// Default: [`RequestAction::proceed()`], pass the request on unchanged, no memo.
    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        let _ = (info, req);
        RequestAction::proceed()
    }

    /// Decides what happens to what came back, in reverse chain order. `memo` is what this
    /// filter's `on_request` returned for the same try; `req` is the request as this
    /// filter passed it on.
    ///
    /// Default: [`ResponseAction::proceed()`], pass the outcome on unchanged.
    fn on_response(
        &mut self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<Vec<u8>>,
        outcome: &Outcome,
    ) -> ResponseAction {
        let _ = (info, req, memo, outcome);
        ResponseAction::proceed()
    }
}

/// Exports a [`Filter`] implementation as this component's `weir:filter/filter`.
///
/// Call it once, at the top level of the filter's crate:
///
/// ```ignore
/// weir_filter::export_filter!(MyFilter);
/// ```
///
/// The instance keeps the value [`Filter::new`] returned in a thread-local (an instance
/// is single-threaded) between calls. The version weir reports for the filter is the
/// `version` in the filter crate's `Cargo.toml`.
#[macro_export]
macro_rules! export_filter {
    ($filter:ty) => {
        const _: () = {
            ::std::thread_local! {
                static WEIR_FILTER: ::core::cell::RefCell<::core::option::Option<$filter>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct WeirFilterExport;

            impl $crate::__private::Guest for WeirFilterExport {
                fn init(
                    config: ::std::string::String,
                ) -> ::core::result::Result<$crate::FilterInfo, ::std::string::String> {
                    $crate::__private::init(
                        &WEIR_FILTER,
                        &config,
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }

                fn on_request(
                    info: $crate::RequestInfo,
                    req: $crate::Request,
                ) -> $crate::RequestAction {
                    $crate::__private::on_request(&WEIR_FILTER, info, req)
                }

                fn on_response(
                    info: $crate::RequestInfo,
                    req: $crate::Request,
                    memo: ::core::option::Option<::std::vec::Vec<u8>>,
                    outcome: $crate::Outcome,
                ) -> $crate::ResponseAction {
                    $crate::__private::on_response(&WEIR_FILTER, info, req, memo, outcome)
                }
            }

            // Only a wasm linker takes export names like "weir:filter/filter@0.1.0#init";
            // a native cdylib (`cargo test` of a filter crate) could not link them.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::export!(WeirFilterExport with_types_in $crate::bindings);

            // Off wasm nothing calls the exports. Naming them keeps the filter's code live
            // for the dead-code lint, and type-checks the export path in native builds.
            #[cfg(not(target_arch = "wasm32"))]
            let _ = (
                <WeirFilterExport as $crate::__private::Guest>::init,
                <WeirFilterExport as $crate::__private::Guest>::on_request,
                <WeirFilterExport as $crate::__private::Guest>::on_response,
            );
        };
    };
}
