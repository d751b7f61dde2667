//! Write weir filters in Rust: one trait, one macro.
//!
//! weir is an egress HTTP proxy; every request it forwards runs through a chain of
//! filters, and each filter is a WebAssembly component that implements the
//! `weir:filter/http-filter` world of `weir:filter@0.2.1` (`wit/v0.2/filter.wit`). This
//! crate hides the component plumbing: you write an ordinary Rust type, and the SDK
//! turns it into that component.
//! weir's `docs/writing-filters.md` is the language-independent guide (the contract type
//! by type, the lifecycle, limits, configuration); this page is its Rust side.
//!
//! 1. Make a `cdylib` crate that depends on `weir-filter` and `serde`
//!    (`weir filter new NAME --lang rust` writes one, with tests and a weir config).
//! 2. Describe your config as a `serde` type. weir hands the filter its TOML `config`
//!    as JSON; the SDK parses it and names your filter in any error.
//! 3. Implement [`Filter`]: [`new`](Filter::new) builds the filter from its config,
//!    [`on_request`](Filter::on_request) and [`on_response`](Filter::on_response) decide
//!    what happens to each request. Every method but `new` has a default that lets the
//!    request pass untouched.
//! 4. Call [`export_filter!`] once with your type.
//! 5. Test the logic with plain `cargo test`: [`build_filter`] runs the same config
//!    parsing as weir's `init`, and the trait methods are ordinary Rust calls. Test the
//!    built component with `weir filter test NAME.wasm --config config.json --case
//!    cases.toml`, which runs it in weir's real runtime on a virtual clock.
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
//! ```
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
//! And use it in a route:
//!
//! ```toml
//! [filters.stamp]
//! wasm = "stamp.wasm"                 # relative to weir's config file
//! config = { team = "payments" }
//!
//! [[routes]]
//! name = "payments"
//! upstream = "payments"
//! filters = ["stamp"]                 # or { use = "stamp", config = { team = "billing" } }
//! ```
//!
//! # Testing without wasm
//!
//! The SDK builds on the host target too, so a filter's logic runs under plain `cargo
//! test`. In weir, [`Request`], [`RequestInfo`] and the [`Response`] in an [`Outcome`]
//! read from the host what the filter asks for; in a test, [`Request::new`],
//! [`RequestInfo::new`] and [`Response::new`] build them with their data. [`build_filter`] does what weir's `init` does (parse the JSON config, call
//! [`Filter::new`], prefix errors with [`Filter::NAME`]), and the trait methods are
//! ordinary calls. Only the calls into weir ([`state`], [`log`], [`metrics`],
//! [`outbound`]) need wasm: off wasm they panic, so keep them out of the code paths a
//! unit test takes, or put them behind a small trait of your own with a test double (the
//! standard `limiter` and `breaker` filters do this). [`export_filter!`] exports nothing
//! off wasm.
//!
//! ```
//! # use serde::Deserialize;
//! # use weir_filter::{Filter, Request, RequestAction, RequestEdit, RequestInfo};
//! # #[derive(Deserialize)]
//! # #[serde(deny_unknown_fields)]
//! # struct Config { team: String }
//! # struct Stamp(Config);
//! # impl Filter for Stamp {
//! #     type Config = Config;
//! #     const NAME: &'static str = "stamp";
//! #     fn new(config: Config) -> Result<Self, String> { Ok(Stamp(config)) }
//! #     fn on_request(&mut self, _info: &RequestInfo, _req: &Request) -> RequestAction {
//! #         RequestAction::proceed_with_edit(RequestEdit::new().set_header("x-team", self.0.team.as_str()))
//! #     }
//! # }
//! use weir_filter::build_filter;
//!
//! let info = RequestInfo::new("req-1").with_route("payments");
//! let req = Request::new("GET", "/charges").with_header("accept", "application/json");
//!
//! let mut stamp = build_filter::<Stamp>(r#"{"team": "payments"}"#).unwrap();
//! assert_eq!(
//!     stamp.on_request(&info, &req),
//!     RequestAction::proceed_with_edit(RequestEdit::new().set_header("x-team", "payments")),
//! );
//! // The error weir prints at `weir check` when the key is missing:
//! assert_eq!(build_filter::<Stamp>("{}").err().unwrap(), "stamp: missing field `team`");
//! ```
//!
//! # Instances, and the memo
//!
//! weir keeps a pool of instances per (route, filter). Each instance is initialised once
//! (`init` parses the config and calls [`Filter::new`]) and then serves one call at a
//! time, so `&mut self` needs no locks. An instance is lent out for a single call and
//! never across the wait for the upstream: the `on_request` and the `on_response` of one
//! request usually run on different instances, and an instance may be thrown away and
//! replaced at any time. So keep in `self` only what `new` derived from the config (and
//! caches that are fine to lose), never anything about a request.
//!
//! What `on_response` needs from `on_request` goes in the **memo**: the bytes given to
//! [`RequestAction::proceed_with`] come back as the `memo` argument of this filter's
//! `on_response` for the same request. It is `None` when `on_request` gave none, or when
//! `on_request` failed and the filter is configured `on_error = "fail-open"`; decode it
//! defensively. [`codec`] has a small encoding for it. A filter that times the upstream:
//!
//! ```
//! use std::time::{SystemTime, UNIX_EPOCH};
//! use weir_filter::{
//!     Filter, NoConfig, Outcome, Request, RequestAction, RequestInfo, ResponseAction, metrics,
//! };
//!
//! struct Timer;
//!
//! fn now_ms() -> u64 {
//!     // WASI clocks: real time in weir, virtual time under `weir filter test`.
//!     SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
//! }
//!
//! impl Filter for Timer {
//!     type Config = NoConfig;
//!     const NAME: &'static str = "timer";
//!
//!     fn new(_: NoConfig) -> Result<Self, String> {
//!         Ok(Timer)
//!     }
//!
//!     fn on_request(&mut self, _info: &RequestInfo, _req: &Request) -> RequestAction {
//!         let started = now_ms().to_be_bytes().to_vec();
//!         RequestAction::proceed_with(None, Some(started))
//!     }
//!
//!     fn on_response(
//!         &mut self,
//!         _info: &RequestInfo,
//!         _req: &Request,
//!         memo: Option<Vec<u8>>,
//!         outcome: &Outcome,
//!     ) -> ResponseAction {
//!         let started = memo.and_then(|m| <[u8; 8]>::try_from(m).ok()).map(u64::from_be_bytes);
//!         if let Some(started) = started {
//!             let class = match outcome.status() {
//!                 Some(s) if s < 500 => "ok",
//!                 _ => "failed",
//!             };
//!             let seconds = now_ms().saturating_sub(started) as f64 / 1000.0;
//!             metrics::histogram_observe("upstream_seconds", &[("result", class)], seconds);
//!         }
//!         ResponseAction::proceed()
//!     }
//! }
//! ```
//!
//! # Shared state
//!
//! Data shared between requests (counters, windows, cached tokens) lives in weir's
//! [`state`] store, not in the instance. Keys are namespaced by weir per filter; values
//! are bytes with optional TTLs; [`state::incr`] and [`state::compare_and_swap`] are
//! atomic, and the only safe way to update a value that other instances update at the
//! same time. The store may evict entries when it is full, and every call can fail:
//! decide what the filter does then. See [`state`] for a complete example.
//!
//! # Logs and metrics
//!
//! [`log`] writes to weir's log (stderr), at a level, tagged by weir with the route and
//! the filter's configured name; stdout and stderr (`println!`, `eprintln!`) also reach
//! the log, at `info`, but without levels. [`metrics`] adds Prometheus series that weir
//! exports as `weir_filter_<name>` with `route` and `filter` labels.
//!
//! ```
//! use weir_filter::{log, metrics};
//!
//! fn rejected(reason: &str, client: &str) {
//!     metrics::counter_add("rejected_total", &[("reason", reason)], 1);
//!     log::debug(&format!("rejected {client}: {reason}"));
//! }
//! ```
//!
//! # Limits and failures
//!
//! Each instance runs under limits set per filter in weir's config:
//!
//! | setting | default | bounds |
//! | --- | --- | --- |
//! | `max_call_time` | `"100ms"` | one `on_request` or `on_response` call (time blocked in [`outbound::send`] excluded); instantiation plus `init` get ten times it, at least 5 s |
//! | `max_memory` | `"64MiB"` | each linear memory of an instance |
//! | `max_instances` | `64` | instances per route: calls at once |
//! | `min_instances` | `2` | instances initialised when the config loads |
//!
//! A panic traps the instance; so does running past `max_call_time` (weir interrupts
//! the guest wherever it is) or growing memory past `max_memory` (an allocation failure,
//! which Rust turns into an abort). weir then throws the instance away (the next call
//! gets a fresh one, [`Filter::new`] included), logs `filter call failed; instance
//! discarded` once, counts `weir_filter_failures_total{route,filter,phase,kind}` (`kind`
//! = `trap`, `timeout` or `memory`; an answer the host cannot apply, such as an invalid
//! header name in an edit, counts as `invalid`), and applies the filter's `on_error`.
//! A call that finds no free instance before the route's deadline is not a failure of
//! the filter: the client gets 504 and the count is `kind="busy"`, whatever `on_error`
//! says. `on_error`:
//!
//! - `"fail-closed"` (default): the client gets 503 `{"error":"filter_failed",…}` naming
//!   the filter; filters before this one see that response in `on_response`.
//! - `"fail-open"`: weir carries on as if the filter had let the request through
//!   unchanged (with no memo).
//!
//! An invalid answer (a header name or value HTTP does not allow, a path that does not
//! start with `/`, a status outside 100–999) is handled by `on_error` in the same way.
//! weir never goes down because of a filter; still, return [`Result`]s rather than
//! panicking on input from the network: a trap also throws away a warm instance.
//!
//! # What a filter can rely on
//!
//! - Besides the imports wrapped here, a filter gets WASI clocks and random numbers, and
//!   nothing else: no files, no sockets, no environment variables. Secrets reach the
//!   filter through its config (`{ env = "NAME" }` and `{ file = "path" }` in weir's
//!   TOML are replaced by their values before `init`).
//! - stdout and stderr go to weir's log; prefer [`log`], which has levels.
//! - The only network access is [`outbound`], to the upstreams listed in the filter's
//!   `[filters.NAME] outbound = [...]` setting.
//! - The SDK keeps the unsafe ABI glue to itself: a filter crate can
//!   `#![forbid(unsafe_code)]`.

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

pub use bindings::weir::filter0_1_2::types::{Fields, UpstreamError};
pub use config::{NoConfig, build_filter, parse_config};
pub use http::{
    FieldsExt, HeaderBlock, Outcome, Request, RequestAction, RequestEdit, RequestInfo, Response,
    ResponseAction, ResponseEdit,
};
/// Re-exported so filters can build JSON bodies (`serde_json::json!`) for
/// [`Response::json`] without a dependency of their own.
pub use serde_json;

/// What a filter asks of the host, returned by [`Filter::info`].
///
/// The name comes from [`Filter::NAME`] and the version from the filter crate's
/// `Cargo.toml`; these are the knobs that change how weir treats the filter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    /// The phases weir calls. Default: both. A filter with nothing to do on the way back
    /// says [`Phases::REQUEST`], and weir skips its `on_response` altogether.
    pub phases: Phases,
    /// Buffer the whole request body and pass it in [`Request::body`] to `on_request`.
    /// Default `false`: the body streams past this filter and `body` is `None`. weir
    /// buffers up to its `[listen] max_body_bytes`; a larger body gets 413.
    pub wants_request_body: bool,
    /// Buffer the whole upstream response body and pass it in the outcome's
    /// [`Response::body`]. Default `false`: the body streams to the client and `body` is
    /// `None`. weir buffers up to `max_body_bytes` (after decompression); a larger body
    /// gets 502 `response_too_large`.
    pub wants_response_body: bool,
    /// This filter may answer [`ResponseAction::Retry`]; weir then keeps the request body
    /// so it can send it again. Default `false`: a retry from this filter is ignored.
    pub may_retry: bool,
}

/// The phases weir calls a filter in ([`Info::phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// [`Filter::on_request`].
    pub request: bool,
    /// [`Filter::on_response`].
    pub response: bool,
}

impl Phases {
    /// Both phases: the default.
    pub const BOTH: Phases = Phases {
        request: true,
        response: true,
    };
    /// `on_request` only.
    pub const REQUEST: Phases = Phases {
        request: true,
        response: false,
    };
    /// `on_response` only.
    pub const RESPONSE: Phases = Phases {
        request: false,
        response: true,
    };
}

impl Default for Phases {
    fn default() -> Phases {
        Phases::BOTH
    }
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

    /// A short name for the filter, e.g. `"retry"`, reported in `filter-info`. It also
    /// prefixes every init error this filter reports. weir's logs, metrics and state keys
    /// use the name the operator gave in `[filters.NAME]`, which may differ.
    const NAME: &'static str;

    /// Builds the filter from its parsed config; called once per instance, so once per
    /// route at least, and again whenever weir replaces an instance.
    ///
    /// Validate here: an `Err` rejects the config, so `weir check` and start-up fail and a
    /// reload keeps the old config, with the message shown. The SDK prefixes the message
    /// with `NAME: `. `new` runs within the `init` time budget (ten times
    /// `max_call_time`, at least 5 s).
    fn new(config: Self::Config) -> Result<Self, String>;

    /// What this filter asks of the host. Called once, right after [`new`](Filter::new).
    ///
    /// Default: [`Info::default()`], no bodies and no retries.
    fn info(&self) -> Info {
        Info::default()
    }

    /// Decides what happens to a request, in chain order, before it goes upstream. Called
    /// again for every retry that passes this filter, with a higher
    /// [`RequestInfo::attempt`], and again after a [`RequestAction::Wait`].
    ///
    /// `req` is the request as the filters before this one left it; its `body` is there
    /// only if [`Info::wants_request_body`]. Answer [`RequestAction::Continue`] (an
    /// optional edit and an optional memo for [`on_response`](Filter::on_response)),
    /// [`RequestAction::Respond`] to answer without calling upstream (the filters before
    /// this one see that response; this one gets no `on_response`), or
    /// [`RequestAction::Wait`] to be asked again after that many milliseconds.
    ///
    /// Default: [`RequestAction::proceed()`], pass the request on unchanged, no memo.
    fn on_request(&mut self, info: &RequestInfo, req: &Request) -> RequestAction {
        let _ = (info, req);
        RequestAction::proceed()
    }

    /// Decides what happens to what came back, in reverse chain order.
    ///
    /// - `memo` is what this filter's `on_request` gave in [`RequestAction::Continue`]
    ///   for this request; `None` if it gave none, or if `on_request` failed under
    ///   `on_error = "fail-open"`. After a retry by this filter, it is still the memo of
    ///   its one `on_request`: a retry re-runs only the filters after the retrying one.
    /// - `req` is the request as the walk through the chain left it (what went upstream,
    ///   if it did): the edits of this filter and of the filters after it that ran are
    ///   applied, and [`Request::body`] is the body as it went upstream (only if
    ///   [`Info::wants_request_body`]).
    /// - `outcome` is the upstream's response (its body only if [`Info::wants_response_body`]),
    ///   a response a later filter made, or [`Outcome::Error`] when there is no response.
    ///
    /// Answer [`ResponseAction::Continue`] (optionally with a header edit; on an error
    /// outcome the edit applies to weir's JSON error response), [`ResponseAction::Respond`]
    /// with a replacement, or [`ResponseAction::Retry`] (only honoured with
    /// [`Info::may_retry`], within the route deadline and 10 tries).
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
/// ```
/// use weir_filter::{Filter, NoConfig};
///
/// /// Lets every request through: every method but `new` keeps its default.
/// struct Pass;
///
/// impl Filter for Pass {
///     type Config = NoConfig;
///     const NAME: &'static str = "pass";
///
///     fn new(_: NoConfig) -> Result<Self, String> {
///         Ok(Pass)
///     }
/// }
///
/// weir_filter::export_filter!(Pass);
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
                ) -> ::core::result::Result<$crate::__private::FilterInfo, ::std::string::String>
                {
                    $crate::__private::init(
                        &WEIR_FILTER,
                        &config,
                        ::core::env!("CARGO_PKG_VERSION"),
                    )
                }

                fn on_request(
                    req: &$crate::__private::RequestHandle,
                ) -> $crate::__private::WitRequestAction {
                    $crate::__private::on_request(&WEIR_FILTER, req)
                }

                fn on_response(
                    req: &$crate::__private::RequestHandle,
                    resp: &$crate::__private::ResponseHandle,
                ) -> $crate::__private::WitResponseAction {
                    $crate::__private::on_response(&WEIR_FILTER, req, resp)
                }
            }

            // Only a wasm linker takes export names like "weir:filter/filter@0.2.1#init";
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
