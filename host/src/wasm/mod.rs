//! The wasm runtime: one engine, one `InstancePre` per component, and a pool of
//! initialised instances per (route, filter).
//!
//! A call checks an instance out for that one call only, never across the upstream wait,
//! which is why per-request data travels in the memo and shared data lives in `state`.
//! Every call runs under a limit on the guest's own CPU time (see `guest_time.rs`),
//! checked every millisecond by epoch interruption, and a memory cap. A guest that
//! traps, overruns or runs out of memory loses its instance; the host logs it once,
//! counts it, and the filter's `on_error` decides what the request gets.

pub mod call;
mod guest_time;
mod log_impl;
mod metrics_impl;
mod outbound_impl;
mod state_impl;
mod stdio;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use guest_time::GuestTime;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, Resource, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, CallHook, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    ResourceLimiter, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bindings::{
    FilterInfo, Outcome, Request, RequestAction, RequestEdit, RequestInfo, Response,
    ResponseAction, ResponseEdit, UpstreamError,
};
pub use metrics_impl::FilterMetrics;
pub use outbound_impl::Outbound;

use crate::bindings::{self, v2};
use crate::clock::VirtualClock;
use crate::config::{FilterConfig, MAX_FILTER_MEMORY, OnError};
use crate::state::StateBackend;
use bindings::{HttpFilter, HttpFilterPre};

/// How often the epoch advances; a call's time limit is checked at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(1);

/// After this many ticks with no guest running, the ticker sleeps until one starts: an
/// idle weir, or a route with no filters, is not woken a thousand times a second.
const IDLE_TICKS: u32 = 100;

/// Set to `1`, the engine allocates instances on demand instead of from the pooling
/// allocator's reservation (see `bench/profile.sh`, which runs weir under valgrind).
pub const ON_DEMAND_ENV: &str = "WEIR_WASM_ON_DEMAND";

/// Set to `1`, the engine writes `/tmp/perf-<pid>.map`, naming the guests' compiled
/// functions for `perf report` (see `bench/README.md`, "Where a filter call's time goes").
pub const PERF_MAP_ENV: &str = "WEIR_WASM_PERF_MAP";

/// How many memories, tables and instances the pooling allocator keeps slots for, across
/// all filters of all loaded configs.
const POOL_SLOTS: u32 = 2000;

/// Why a component could not be loaded or initialised.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The engine could not be set up.
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a valid component for the `http-filter` world.
    #[error("{what} is not a valid weir filter component: {detail}")]
    Invalid {
        /// The file or built-in name.
        what: String,
        /// What wasmtime said.
        detail: String,
    },
    /// Instantiation or the guest's `init` failed.
    #[error("filter `{filter}` on route `{route}`: {detail}")]
    Init {
        /// The filter's name.
        filter: String,
        /// The route.
        route: String,
        /// What failed: the guest's own error text, or a trap.
        detail: String,
    },
}

/// Why a single call into a guest failed. The instance is gone after any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The guest trapped (a panic, an unreachable, a bad memory access).
    #[error("trapped: {0}")]
    Trap(String),
    /// The call ran past the filter's `max_call_time`.
    #[error("exceeded its call time of {0:?}")]
    Timeout(Duration),
    /// The guest tried to grow its memory past `max_memory`.
    #[error("exceeded its memory cap of {0} bytes")]
    Memory(u64),
    /// The guest answered something weir cannot apply (a header HTTP does not allow, a
    /// path without its `/`): the instance, which is healthy, stays in the pool.
    #[error("answered something invalid: {0}")]
    Invalid(String),
}

impl CallError {
    /// The failure's kind, for spans: `trap`, `timeout` or `memory`.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
            CallError::Memory(_) => "memory",
            CallError::Invalid(_) => "invalid",
        }
    }
}

/// A state or outbound call a filter made during one of its calls, timed for the
/// request's exported spans.
#[derive(Debug, Clone)]
pub struct HostCall {
    /// What was called.
    pub what: HostCallKind,
    /// When it started.
    pub at: tokio::time::Instant,
    /// How long it took.
    pub took: Duration,
    /// Why it failed, if it did: the state error's kind (`unavailable`, `too_large`),
    /// or the outbound error's (`not_allowed`, `invalid`, `too_large`, or the upstream
    /// error's kind).
    pub error: Option<&'static str>,
}

/// What a [`HostCall`] called.
#[derive(Debug, Clone)]
pub enum HostCallKind {
    /// A `weir:filter/state` operation: `get`, `incr`, `bucket_take`, …
    State(&'static str),
    /// A `weir:filter/outbound` call.
    Outbound {
        /// The upstream's name.
        upstream: String,
        /// The upstream's origin (empty when the filter named one it may not call).
        origin: String,
        /// The method.
        method: String,
        /// The path, without the query.
        path: String,
        /// The response status, if one came.
        status: Option<u16>,
    },
}

/// Why a call whose wait for an instance has a bound got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unanswered {
    /// Every instance stayed busy (`max_instances` of them in calls) until the bound:
    /// the guest was never called, so this is no failure of the filter's own.
    #[error("no instance of the filter became free in time")]
    Busy,
    /// The call was made and failed; the instance is gone unless the failure is
    /// [`CallError::Invalid`].
    #[error(transparent)]
    Failed(#[from] CallError),
}

/// The phases weir calls a filter in: both for a 0.1 filter, those its `filter-info`
/// names for a 0.2 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// `on-request`.
    pub request: bool,
    /// `on-response`.
    pub response: bool,
}

/// The request as the chain carries it from filter to filter and sends it upstream. Its
/// headers stay the `HeaderMap` they came in as: a 0.2 filter reads and changes them in
/// place, so a call converts nothing, and only a 0.1 filter's call copies them into the
/// WIT's list ([`ChainRequest::to_wit`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainRequest {
    /// The method, in upper case.
    pub method: String,
    /// The upstream's origin.
    pub upstream: String,
    /// The path and query to send upstream.
    pub path_with_query: String,
    /// The headers, hop-by-hop ones removed.
    pub headers: http::HeaderMap,
}

impl ChainRequest {
    /// The request in the WIT's shape, with `body`: what a 0.1 call gets.
    pub fn to_wit(&self, body: Option<Vec<u8>>) -> Request {
        Request {
            method: self.method.clone(),
            upstream: self.upstream.clone(),
            path_with_query: self.path_with_query.clone(),
            headers: crate::headers::to_fields(&self.headers),
            body,
        }
    }

    /// The request a WIT `request` describes (its body aside).
    pub fn from_wit(req: &Request) -> ChainRequest {
        ChainRequest {
            method: req.method.clone(),
            upstream: req.upstream.clone(),
            path_with_query: req.path_with_query.clone(),
            headers: crate::headers::from_fields(&req.headers),
        }
    }
}

/// What came back, as the chain carries it through the filters' `on-response`: a
/// response keeps the `HeaderMap` it came in as, as [`ChainRequest`] does, and only a
/// 0.1 filter's call copies it into the WIT's shape ([`ChainOutcome::lend_wit`]).
#[derive(Debug, Clone, PartialEq)]
pub enum ChainOutcome {
    /// A response: the upstream's, a filter's, or weir's own error response.
    Response(ChainResponse),
    /// No response.
    Error(UpstreamError),
}

/// A response in the chain.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ChainResponse {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: http::HeaderMap,
    /// The body, when it was buffered for the filters.
    pub body: Option<Vec<u8>>,
}

impl ChainResponse {
    /// A response in the WIT's shape, taken over. A filter's reply is checked before it
    /// gets here ([`crate::headers::validate_response`]); anything else drops what
    /// [`crate::headers::from_fields`] drops.
    pub fn from_wit(resp: Response) -> ChainResponse {
        ChainResponse {
            status: resp.status,
            headers: crate::headers::from_fields(&resp.headers),
            body: resp.body,
        }
    }

    /// In the WIT's shape.
    pub fn into_wit(self) -> Response {
        Response {
            status: self.status,
            headers: crate::headers::to_fields(&self.headers),
            body: self.body,
        }
    }
}

impl ChainOutcome {
    /// The outcome a WIT `outcome` describes.
    pub fn from_wit(outcome: &Outcome) -> ChainOutcome {
        match outcome {
            Outcome::Response(r) => ChainOutcome::Response(ChainResponse::from_wit(r.clone())),
            Outcome::Error(kind) => ChainOutcome::Error(*kind),
        }
    }

    /// The outcome in the WIT's shape, for a 0.1 call: the body moves into it, and back
    /// with [`ChainOutcome::take_back`], rather than being copied.
    fn lend_wit(&mut self) -> Outcome {
        match self {
            ChainOutcome::Response(r) => Outcome::Response(Response {
                status: r.status,
                headers: crate::headers::to_fields(&r.headers),
                body: r.body.take(),
            }),
            ChainOutcome::Error(kind) => Outcome::Error(*kind),
        }
    }

    /// Takes back the body [`ChainOutcome::lend_wit`] lent.
    fn take_back(&mut self, lent: Outcome) {
        if let (ChainOutcome::Response(r), Outcome::Response(lent)) = (self, lent) {
            r.body = lent.body;
        }
    }
}

/// What `on-response` works on besides the request: the memo of this filter's
/// `on-request`, and what came back.
pub struct Returned<'a> {
    /// The memo this filter's `on-request` kept for the try.
    pub memo: Option<&'a Bytes>,
    /// The request body as it went upstream, for a 0.2 filter that asked for request
    /// bodies (0.1's `on-response` gets none).
    pub body: Option<&'a Bytes>,
    /// The outcome as the client would get it now.
    pub outcome: &'a mut ChainOutcome,
    /// Headers for weir's error response (a 0.2 filter's header changes go here when
    /// there is no response to change, or `fixed`).
    pub error_headers: &'a mut http::HeaderMap,
    /// weir ended the request itself: filters may add headers, nothing else.
    pub fixed: bool,
}

/// Which export a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `on-request`.
    Request = 0,
    /// `on-response`.
    Response = 1,
}

impl Phase {
    /// The phase as metrics and logs name it: `on_request` or `on_response`.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Request => "on_request",
            Phase::Response => "on_response",
        }
    }
}

// === impl Runtime ===

/// The process-wide wasm engine, linker and epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    state: Arc<dyn StateBackend>,
    metrics: Arc<FilterMetrics>,
    ticker: Arc<Ticker>,
    /// The guests' clocks: real time, or a virtual clock under the filter harness.
    clock: Option<VirtualClock>,
}

impl Runtime {
    /// The state backend every filter shares.
    pub fn state(&self) -> &Arc<dyn StateBackend> {
        &self.state
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.ticker.thread.get() {
            t.unpark();
        }
    }
}

impl Runtime {
    /// Builds the engine (pooling allocator, epoch interruption, compile cache in
    /// `cache_dir`, or none) and links the host interfaces once.
    pub fn new(
        cache_dir: Option<&Path>,
        state: Arc<dyn StateBackend>,
        metrics: Arc<FilterMetrics>,
    ) -> Result<Arc<Runtime>, LoadError> {
        Runtime::build(cache_dir, state, metrics, None)
    }

    /// Like [`Runtime::new`], but guests read `clock` as their wall and monotonic clocks.
    pub fn with_clock(
        cache_dir: Option<&Path>,
        state: Arc<dyn StateBackend>,
        metrics: Arc<FilterMetrics>,
        clock: VirtualClock,
    ) -> Result<Arc<Runtime>, LoadError> {
        Runtime::build(cache_dir, state, metrics, Some(clock))
    }

    fn build(
        cache_dir: Option<&Path>,
        state: Arc<dyn StateBackend>,
        metrics: Arc<FilterMetrics>,
        clock: Option<VirtualClock>,
    ) -> Result<Arc<Runtime>, LoadError> {
        let err = |e: wasmtime::Error| LoadError::Engine(format!("{e:#}"));
        let mut cfg = wasmtime::Config::new();
        cfg.wasm_component_model(true);
        cfg.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.max_memory_size(MAX_FILTER_MEMORY as usize)
            .total_memories(POOL_SLOTS)
            .total_tables(POOL_SLOTS)
            // Only a count (core instances' metadata is allocated on demand), and a
            // componentize-js or componentize-py component instantiates 15 to 30 core
            // instances per component instance.
            .total_core_instances(POOL_SLOTS * 32)
            .total_component_instances(POOL_SLOTS)
            .total_stacks(POOL_SLOTS)
            .max_memories_per_component(16)
            .max_tables_per_component(16)
            .max_core_instances_per_component(64)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .table_elements(200_000);
        if std::env::var_os(ON_DEMAND_ENV).is_some_and(|v| v == "1") {
            // For tools that cannot map the pool's terabytes of address space (valgrind
            // stops near 128 GiB): each memory reserves only what it may grow to, so
            // guest code checks its bounds explicitly and runs somewhat slower.
            cfg.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            cfg.memory_reservation(MAX_FILTER_MEMORY);
            cfg.memory_guard_size(0);
        } else {
            cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        if std::env::var_os(PERF_MAP_ENV).is_some_and(|v| v == "1") {
            cfg.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
        if let Some(dir) = cache_dir {
            let mut cc = CacheConfig::new();
            cc.with_directory(dir);
            cfg.cache(Some(Cache::new(cc).map_err(err)?));
        }
        let engine = Engine::new(&cfg).map_err(err)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        HttpFilter::add_to_linker::<_, HasSelf<GuestHost>>(&mut linker, |s: &mut GuestState| {
            // Every call of a weir import (state, log, metrics, outbound) starts here: the
            // host's work until it returns to the guest is not the guest's time.
            s.host.time.import_called();
            &mut s.host
        })
        .map_err(err)?;
        // 0.2's world imports the same 0.1.2 interfaces linked above; only its handles'
        // methods are new.
        v2::weir::filter0_2_1::types::add_to_linker::<_, HasSelf<GuestHost>>(
            &mut linker,
            |s: &mut GuestState| {
                s.host.time.import_called();
                &mut s.host
            },
        )
        .map_err(err)?;

        let ticker = Arc::new(Ticker::default());
        {
            let engine = engine.clone();
            let ticker_ = ticker.clone();
            let handle = std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || ticker_.run(&engine))
                .map_err(|e| LoadError::Engine(e.to_string()))?;
            let _ = ticker.thread.set(handle.thread().clone());
        }
        Ok(Arc::new(Runtime {
            engine,
            linker,
            state,
            metrics,
            ticker,
            clock,
        }))
    }

    /// The default compile-cache directory: `$XDG_CACHE_HOME/weir` or `~/.cache/weir`.
    pub fn default_cache_dir() -> Option<std::path::PathBuf> {
        std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .map(|d| d.join("weir"))
    }

    /// Compiles `bytes` (through the compile cache) and links it once.
    pub fn load(&self, what: &str, bytes: &[u8]) -> Result<Arc<Loaded>, LoadError> {
        let invalid = |detail: &str| LoadError::Invalid {
            what: what.to_owned(),
            detail: detail.to_owned(),
        };
        // The two common mistakes, in words rather than as wasmtime's parser errors.
        if !bytes.starts_with(b"\0asm") {
            return Err(invalid("it is not a WebAssembly binary"));
        }
        if bytes.get(4..8) == Some(&[1, 0, 0, 0]) {
            return Err(invalid(
                "it is a core WebAssembly module, not a component; build it for the `wasm32-wasip2` target",
            ));
        }
        // One line: `weir check` prints each line of an error as its own `error:`.
        let invalid = |e: wasmtime::Error| {
            let text = format!("{e:#}");
            let lines: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            invalid(&lines.join(" "))
        };
        let component = Component::new(&self.engine, bytes).map_err(invalid)?;
        let pre = self.linker.instantiate_pre(&component).map_err(invalid)?;
        // A component exports one version's `filter`; 0.2 is tried first.
        let pre = match v2::HttpFilterPre::new(pre.clone()) {
            Ok(v2) => Pre::V2(v2),
            Err(e2) => match HttpFilterPre::new(pre) {
                Ok(v1) => Pre::V1(v1),
                Err(_) => {
                    return Err(invalid(e2.context(
                        "it exports neither weir:filter/filter@0.2.x nor weir:filter/filter@0.1.x",
                    )));
                }
            },
        };
        Ok(Arc::new(Loaded { pre }))
    }

    /// Reads and loads a `.wasm` file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<Loaded>, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.load(&path.display().to_string(), &bytes)
    }

    /// Creates the pool for one (route, filter), with `min_instances` initialised.
    /// `max_body` is the most body bytes weir buffers (`[listen] max_body_bytes`): a
    /// filter that reads bodies gets room for them on top of its `max_memory` (see
    /// `memory_cap`).
    #[allow(clippy::too_many_arguments)]
    pub async fn pool(
        self: &Arc<Self>,
        loaded: Arc<Loaded>,
        filter: &str,
        route: &str,
        config_json: String,
        settings: &FilterConfig,
        outbound: Option<Arc<Outbound>>,
        max_body: u64,
    ) -> Result<Arc<FilterPool>, LoadError> {
        let mut maker = Maker {
            runtime: self.clone(),
            loaded,
            outbound,
            meta: Arc::new(FilterMeta {
                filter: filter.to_owned(),
                route: route.to_owned(),
                max_memory: settings.max_memory.0,
                max_call_time: settings.max_call_time.0,
            }),
            config_json,
            #[cfg(test)]
            made_in: Mutex::new(Vec::new()),
        };
        let init_err = |detail: String| LoadError::Init {
            filter: filter.to_owned(),
            route: route.to_owned(),
            detail,
        };
        let (mut first, info, phases) = maker.instantiate().await.map_err(init_err)?;
        // Only `init` says whether the filter reads bodies; the first instance, which
        // has not had one yet, gets the room from now on like every later one.
        let cap = memory_cap(
            settings.max_memory.0,
            &info,
            maker.outbound.is_some(),
            max_body,
        );
        if cap != maker.meta.max_memory {
            maker.meta = Arc::new(FilterMeta {
                max_memory: cap,
                ..(*maker.meta).clone()
            });
            let data = first.store.data_mut();
            data.limiter.max = cap;
            data.host.meta = maker.meta.clone();
        }
        let maker = Arc::new(maker);
        let mut idle = vec![first];
        for _ in 1..settings.min_instances.max(1) {
            idle.push(maker.instantiate().await.map_err(init_err)?.0);
        }
        tracing::info!(
            route,
            filter,
            guest = %info.name,
            version = %info.version,
            wit = maker.loaded.wit_version(),
            instances = idle.len(),
            "filter ready"
        );
        let slots = Slots {
            ready: Semaphore::new(idle.len()),
            state: Mutex::new(SlotState {
                total: idle.len(),
                idle,
                building: 0,
                waiting: 0,
                failures: 0,
                peak: 0,
                last_failure: String::new(),
            }),
            spares: settings.min_instances as usize,
            max: settings.max_instances.max(1) as usize,
        };
        Ok(Arc::new(FilterPool {
            maker,
            slots: Arc::new(slots),
            on_error: settings.on_error,
            info,
            phases,
            timers: [
                self.metrics.call_timer(route, filter, "on_request"),
                self.metrics.call_timer(route, filter, "on_response"),
            ],
        }))
    }
}

/// The memory cap of each linear memory of a filter's instances: `own` (`max_memory`,
/// the guest's own use) plus, for a filter that reads bodies (the request's or the
/// response's, or responses to its `outbound` calls), twice `max_body`: room for a body
/// as large as weir buffers and one copy of it, so that raising `max_body_bytes` never
/// starves a body-reading filter of memory. At most [`MAX_FILTER_MEMORY`].
fn memory_cap(own: u64, info: &FilterInfo, outbound: bool, max_body: u64) -> u64 {
    let reads_bodies = info.wants_request_body || info.wants_response_body || outbound;
    let room = if reads_bodies {
        max_body.saturating_mul(2)
    } else {
        0
    };
    own.saturating_add(room).min(MAX_FILTER_MEMORY)
}

/// A compiled, linked component, ready to instantiate.
pub struct Loaded {
    pre: Pre,
}

/// A component of either WIT version.
enum Pre {
    V1(HttpFilterPre<GuestState>),
    V2(v2::HttpFilterPre<GuestState>),
}

impl Loaded {
    /// The WIT version the component was built against: `"0.1"` or `"0.2"`.
    pub fn wit_version(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => "0.1",
            Pre::V2(_) => "0.2",
        }
    }
}

// === impl Ticker ===

/// The thread that advances the engine's epoch every [`EPOCH_TICK`] while guests run,
/// and sleeps while none does.
#[derive(Default)]
struct Ticker {
    /// Guest calls and instantiations running now.
    active: AtomicUsize,
    /// The ticker is asleep, or about to be: a guest starting must wake it.
    parked: AtomicBool,
    stop: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// A guest running; the ticker keeps ticking until every one has ended.
struct Ticking<'a>(&'a Ticker);

impl Ticker {
    fn run(&self, engine: &Engine) {
        let mut idle = 0;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(EPOCH_TICK);
            engine.increment_epoch();
            if self.active.load(Ordering::SeqCst) > 0 {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle < IDLE_TICKS {
                continue;
            }
            // `parked` is set before `active` is read again, and `enter` raises `active`
            // before it reads `parked` (all SeqCst): either this sees the new guest, or
            // the guest sees `parked` and unparks, which a later `park` returns from.
            self.parked.store(true, Ordering::SeqCst);
            if self.active.load(Ordering::SeqCst) == 0 && !self.stop.load(Ordering::SeqCst) {
                std::thread::park();
            }
            self.parked.store(false, Ordering::SeqCst);
            idle = 0;
        }
    }

    /// Marks a guest as running, waking the ticker if it sleeps.
    fn enter(&self) -> Ticking<'_> {
        self.active.fetch_add(1, Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
        Ticking(self)
    }
}

impl Drop for Ticking<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

// === impl FilterPool ===

/// The facts about a (route, filter) pair that its instances need.
#[derive(Debug, Clone)]
struct FilterMeta {
    filter: String,
    route: String,
    /// The memory cap: `max_memory`, plus room for bodies (`memory_cap`).
    max_memory: u64,
    max_call_time: Duration,
}

struct Instance {
    store: Store<GuestState>,
    guest: Guest,
}

enum Guest {
    V1(HttpFilter),
    V2(v2::HttpFilter),
}

/// Initialised instances of one filter for one route.
///
/// A call checks out an idle instance, or waits for one to come back or to be built:
/// instances are only ever created at load and by background builds (on tokio's
/// blocking threads), never inside a call. A checkout that leaves fewer than
/// `min_instances` idle, or has to wait, starts a build while there are fewer than
/// `max_instances`; so a route keeps `min_instances` spares warm, and grows towards
/// `max_instances` as calls overlap. A failed instance is dropped, and builds replace it
/// the same way. When a build fails and no instance is left, the waiting calls fail
/// with its error (and the filter's `on_error` decides) rather than wait for nothing.
pub struct FilterPool {
    maker: Arc<Maker>,
    slots: Arc<Slots>,
    on_error: OnError,
    info: FilterInfo,
    phases: Phases,
    /// Call-duration histograms for `on_request` and `on_response`.
    timers: [prometheus::Histogram; 2],
}

/// What creating an instance needs: shared by the pool and its background builds.
struct Maker {
    runtime: Arc<Runtime>,
    loaded: Arc<Loaded>,
    /// The upstreams this filter may call, if any.
    outbound: Option<Arc<Outbound>>,
    meta: Arc<FilterMeta>,
    config_json: String,
    /// The task each instance was created in (`None`: outside any task), so the tests
    /// can check that no call creates one.
    #[cfg(test)]
    made_in: Mutex<Vec<Option<tokio::task::Id>>>,
}

/// The instances of a pool, and the counts that decide when to build more.
struct Slots {
    state: Mutex<SlotState>,
    /// One permit per idle instance, plus one per failed build that a waiting call must
    /// hear about ([`SlotState::failures`]).
    ready: Semaphore,
    /// Idle instances to keep: `min_instances`.
    spares: usize,
    /// The most instances: `max_instances`.
    max: usize,
}

struct SlotState {
    /// Most recently returned last: a checkout takes the warmest.
    idle: Vec<Instance>,
    /// Idle, in use and being built.
    total: usize,
    building: usize,
    /// Calls waiting for an instance.
    waiting: usize,
    /// Permits of `ready` that stand for a failed build rather than an instance.
    failures: usize,
    /// Why the last build failed.
    last_failure: String,
    /// The most instances there were at once since the pool was created.
    peak: usize,
}

/// The size of a pool at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSize {
    /// Instances ready for a call.
    pub idle: usize,
    /// Instances in all: idle, in a call, and being built.
    pub total: usize,
    /// Instances being built in the background.
    pub building: usize,
    /// The most instances there were at once since the pool was created.
    pub peak: usize,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts background builds while fewer instances are idle or coming than the spares
    /// and the waiting calls need, up to `max`.
    fn top_up(self: &Arc<Self>, maker: &Arc<Maker>, state: &mut SlotState) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        while state.idle.len() + state.building < self.spares.max(1) + state.waiting
            && state.total < self.max
        {
            state.total += 1;
            state.peak = state.peak.max(state.total);
            state.building += 1;
            // On a blocking-pool thread, not a worker: instantiating and `init` may take
            // milliseconds (a Python runtime starting), and on a worker they would run
            // between the polls of requests, whose guest calls yield every epoch tick and
            // would see that time counted against their `max_call_time`.
            let (slots, maker, rt) = (self.clone(), maker.clone(), handle.clone());
            handle.spawn_blocking(move || rt.block_on(slots.build(maker)));
        }
    }

    async fn build(self: Arc<Self>, maker: Arc<Maker>) {
        let made = maker.instantiate().await;
        let mut state = self.lock();
        state.building -= 1;
        match made {
            Ok((instance, ..)) => {
                // Below the returned ones: a call keeps getting the instance it warmed.
                state.idle.insert(0, instance);
                self.ready.add_permits(1);
            }
            Err(detail) => {
                state.total -= 1;
                tracing::warn!(
                    route = %maker.meta.route,
                    filter = %maker.meta.filter,
                    error = %detail,
                    "cannot create a filter instance"
                );
                // With no instance left to come back, the waiting calls fail now
                // rather than at their deadline.
                if state.total == 0 && state.waiting > state.failures {
                    let n = state.waiting - state.failures;
                    state.failures += n;
                    state.last_failure = detail;
                    self.ready.add_permits(n);
                }
            }
        }
    }
}

/// A call waiting for an instance; counted so that builds keep up with the waiters.
struct Waiting<'a> {
    pool: &'a FilterPool,
}

impl<'a> Waiting<'a> {
    fn new(pool: &'a FilterPool) -> Waiting<'a> {
        let mut state = pool.slots.lock();
        state.waiting += 1;
        pool.slots.top_up(&pool.maker, &mut state);
        Waiting { pool }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.pool.slots.lock().waiting -= 1;
    }
}

impl FilterPool {
    /// The filter's name as configured.
    pub fn name(&self) -> &str {
        &self.maker.meta.filter
    }

    /// What the guest said about itself in `init`.
    pub fn info(&self) -> &FilterInfo {
        &self.info
    }

    /// What to do when a call fails.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// How many instances the pool has now.
    pub fn size(&self) -> PoolSize {
        let state = self.slots.lock();
        PoolSize {
            idle: state.idle.len(),
            total: state.total,
            building: state.building,
            peak: state.peak.max(state.total),
        }
    }

    /// The longest one call may run (`max_call_time`).
    pub fn max_call_time(&self) -> Duration {
        self.maker.meta.max_call_time
    }

    /// The phases weir calls this filter in.
    pub fn phases(&self) -> Phases {
        self.phases
    }

    /// Calls `on-request` on a pooled instance, waiting as long as it takes for one.
    ///
    /// The answer has 0.1's shape whatever the filter's version: a 0.2 filter's changes
    /// come back as the edit that makes them, and its memo in `continue`. Meant for
    /// tests and tools; the chain calls [`FilterPool::on_request_until`].
    /// `req.body` is the body the filter gets if it asked for it.
    pub async fn on_request(
        &self,
        info: &RequestInfo,
        req: &Request,
    ) -> Result<RequestAction, CallError> {
        let (mut info, mut edited) = (info.clone(), ChainRequest::from_wit(req));
        let body = req.body.clone().map(Bytes::from);
        let action = unbounded(
            self.on_request_until(&mut info, &mut edited, body.as_ref(), None, None)
                .await,
        )?;
        Ok(match (action, self.maker.loaded.pre.is_v2()) {
            (RequestAction::Continue((edit, memo)), true) => {
                let mut edit = edit.unwrap_or_else(no_edit);
                let after = crate::headers::to_fields(&edited.headers);
                (edit.set_headers, edit.remove_headers) = diff(&req.headers, &after);
                if edited.path_with_query != req.path_with_query {
                    edit.path_with_query = Some(edited.path_with_query);
                }
                let changed = !edit.set_headers.is_empty()
                    || !edit.remove_headers.is_empty()
                    || edit.path_with_query.is_some()
                    || edit.body.is_some()
                    || edit.try_timeout_ms.is_some();
                RequestAction::Continue((changed.then_some(edit), memo))
            }
            (action, _) => action,
        })
    }

    /// Calls `on-response` on a pooled instance, waiting as long as it takes for one;
    /// the answer has 0.1's shape, as [`FilterPool::on_request`]'s has (a 0.2 filter's
    /// new status comes back as `respond` with the changed response).
    pub async fn on_response(
        &self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<&[u8]>,
        outcome: &Outcome,
    ) -> Result<ResponseAction, CallError> {
        let (mut info, mut chained) = (info.clone(), ChainRequest::from_wit(req));
        let mut changed = ChainOutcome::from_wit(outcome);
        let mut error_headers = http::HeaderMap::new();
        let body = req.body.clone().map(Bytes::from);
        let memo = memo.map(Bytes::copy_from_slice);
        let returned = Returned {
            memo: memo.as_ref(),
            body: body.as_ref(),
            outcome: &mut changed,
            error_headers: &mut error_headers,
            fixed: false,
        };
        let action = unbounded(
            self.on_response_until(&mut info, &mut chained, returned, None, None)
                .await,
        )?;
        if !matches!(action, ResponseAction::Continue(None)) || !self.maker.loaded.pre.is_v2() {
            return Ok(action);
        }
        Ok(match (outcome, changed) {
            (Outcome::Response(before), ChainOutcome::Response(after))
                if after.status != before.status =>
            {
                ResponseAction::Respond(after.into_wit())
            }
            (Outcome::Response(before), ChainOutcome::Response(after)) => {
                let after = crate::headers::to_fields(&after.headers);
                let (set_headers, remove_headers) = diff(&before.headers, &after);
                let edit = ResponseEdit {
                    set_headers,
                    remove_headers,
                };
                let changed = !edit.set_headers.is_empty() || !edit.remove_headers.is_empty();
                ResponseAction::Continue(changed.then_some(edit))
            }
            _ => {
                let changed = !error_headers.is_empty();
                ResponseAction::Continue(changed.then_some(ResponseEdit {
                    set_headers: crate::headers::to_fields(&error_headers),
                    remove_headers: Vec::new(),
                }))
            }
        })
    }

    /// Calls `on-request` on a pooled instance; with every instance busy, waits for one
    /// until `until` at most (the request's deadline), then gives up with
    /// [`Unanswered::Busy`].
    ///
    /// `body` is the request body, for a filter that asked for it. A 0.1 filter's answer
    /// comes back as it gave it. A 0.2 filter changes `req` in place; its new body and
    /// per-try timeout come back as the `continue` edit (which has no header or path
    /// change), with its memo; a change the host refused makes the answer
    /// [`CallError::Invalid`]. `info` and `req` are lent to the call: they are as they
    /// were (but for the filter's changes) when it returns, whatever happened.
    ///
    /// With `calls`, the state and outbound calls the guest makes are timed and put
    /// there (for a request whose spans are exported).
    pub async fn on_request_until(
        &self,
        info: &mut RequestInfo,
        req: &mut ChainRequest,
        body: Option<&Bytes>,
        until: Option<tokio::time::Instant>,
        calls: Option<&mut Vec<HostCall>>,
    ) -> Result<RequestAction, Unanswered> {
        let mut inst = self.checkout(Phase::Request, until).await?;
        let _ticking = self.maker.runtime.ticker.enter();
        let (started, time) = self.begin(&mut inst);
        inst.store
            .data_mut()
            .host
            .request_deadline(info, calls.is_some());
        let result = match &inst.guest {
            Guest::V1(g) => {
                let wit = req.to_wit(body.map(|b| b.to_vec()));
                let call = g
                    .weir_filter_filter()
                    .call_on_request(&mut inst.store, info, &wit);
                time.time(call).await.map(Ok)
            }
            Guest::V2(g) => {
                let lent = &mut inst.store.data_mut().host.call;
                lent.swap_request(info, req);
                lent.req_body = body.cloned();
                let call = g
                    .weir_filter0_2_1_filter()
                    .call_on_request(&mut inst.store, Resource::new_borrow(0));
                let result = time.time(call).await;
                let lent = &mut inst.store.data_mut().host.call;
                lent.swap_request(info, req);
                let lent = std::mem::take(lent);
                result.map(|action| from_v2_request(action, lent))
            }
        };
        inst.store.data_mut().host.hand_over_calls(calls);
        self.finish(Phase::Request, inst, started, result)
    }

    /// Calls `on-response` on a pooled instance; waits for an instance until `until` at
    /// most, as [`FilterPool::on_request_until`] does. A 0.2 filter changes
    /// `returned.outcome` (or, with no response to change, `returned.error_headers`) in
    /// place and answers `continue(none)` for them.
    pub async fn on_response_until(
        &self,
        info: &mut RequestInfo,
        req: &mut ChainRequest,
        returned: Returned<'_>,
        until: Option<tokio::time::Instant>,
        calls: Option<&mut Vec<HostCall>>,
    ) -> Result<ResponseAction, Unanswered> {
        let mut inst = self.checkout(Phase::Response, until).await?;
        let _ticking = self.maker.runtime.ticker.enter();
        let (started, time) = self.begin(&mut inst);
        inst.store
            .data_mut()
            .host
            .request_deadline(info, calls.is_some());
        let result = match &inst.guest {
            Guest::V1(g) => {
                let wit = req.to_wit(None);
                let outcome = returned.outcome.lend_wit();
                let call = g.weir_filter_filter().call_on_response(
                    &mut inst.store,
                    info,
                    &wit,
                    returned.memo.map(|m| &m[..]),
                    &outcome,
                );
                let result = time.time(call).await.map(Ok);
                returned.outcome.take_back(outcome);
                result
            }
            Guest::V2(g) => {
                let lent = &mut inst.store.data_mut().host.call;
                lent.swap_request(info, req);
                lent.memo = returned.memo.cloned();
                lent.req_body = returned.body.cloned();
                let outcome =
                    std::mem::replace(returned.outcome, ChainOutcome::Error(UpstreamError::Reset));
                lent.outcome = Some(outcome);
                std::mem::swap(&mut lent.error_headers, returned.error_headers);
                lent.fixed = returned.fixed;
                let call = g.weir_filter0_2_1_filter().call_on_response(
                    &mut inst.store,
                    Resource::new_borrow(0),
                    Resource::new_borrow(0),
                );
                let result = time.time(call).await;
                let lent = &mut inst.store.data_mut().host.call;
                lent.swap_request(info, req);
                std::mem::swap(&mut lent.error_headers, returned.error_headers);
                let mut lent = std::mem::take(lent);
                if let Some(outcome) = lent.outcome.take() {
                    *returned.outcome = outcome;
                }
                result.map(|action| from_v2_response(action, lent))
            }
        };
        inst.store.data_mut().host.hand_over_calls(calls);
        self.finish(Phase::Response, inst, started, result)
    }

    /// Logs and counts (`kind = "invalid"`) an answer the host could not apply: a header
    /// HTTP does not allow, a path without its `/`, a status outside 100–999. The
    /// instance, which is healthy, stays in the pool.
    pub fn invalid_answer(&self, phase: Phase, detail: &str) {
        let meta = &self.maker.meta;
        self.maker.runtime.metrics.count_failure_kind(
            &meta.route,
            &meta.filter,
            phase.name(),
            "invalid",
        );
        tracing::warn!(
            route = %meta.route,
            filter = %meta.filter,
            phase = phase.name(),
            error = %detail,
            "filter answered something invalid"
        );
    }

    /// Takes an idle instance, or waits for one to come back or to be built: until
    /// `until` at most, when given.
    async fn checkout(
        &self,
        phase: Phase,
        until: Option<tokio::time::Instant>,
    ) -> Result<Instance, Unanswered> {
        let permit = match self.slots.ready.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                let _waiting = Waiting::new(self);
                // Dropping `acquire` on the timeout loses no permit (tokio's semaphore
                // is cancel-safe), and `_waiting` stops counting this call.
                let acquire = self.slots.ready.acquire();
                let acquired = match until {
                    None => acquire.await,
                    Some(t) => match tokio::time::timeout_at(t, acquire).await {
                        Ok(a) => a,
                        Err(_) => {
                            self.busy(phase);
                            return Err(Unanswered::Busy);
                        }
                    },
                };
                // The semaphore is never closed.
                acquired.map_err(|e| CallError::Trap(e.to_string()))?
            }
        };
        // The instance leaves the pool with its permit; returning it adds one.
        permit.forget();
        let mut state = self.slots.lock();
        let popped = state.idle.pop();
        if popped.is_none() {
            state.failures -= 1;
        }
        self.slots.top_up(&self.maker, &mut state);
        let failure = popped.is_none().then(|| state.last_failure.clone());
        drop(state);
        match popped {
            Some(i) => Ok(i),
            None => {
                let err = CallError::Trap(format!(
                    "no instance to call: creating one failed: {}",
                    failure.unwrap_or_default()
                ));
                self.fail(phase, &err);
                Err(err.into())
            }
        }
    }

    /// Logs and counts (`kind = "busy"`) a call that found no free instance in time.
    fn busy(&self, phase: Phase) {
        let meta = &self.maker.meta;
        self.maker.runtime.metrics.count_failure_kind(
            &meta.route,
            &meta.filter,
            phase.name(),
            "busy",
        );
        tracing::warn!(
            route = %meta.route,
            filter = %meta.filter,
            phase = phase.name(),
            max_instances = self.slots.max,
            "no instance of the filter became free before the request's deadline; raise max_instances if this recurs"
        );
    }

    /// Starts a call's clock: when it started (for the duration metric), and the clock
    /// that times the guest's part of it.
    fn begin(&self, inst: &mut Instance) -> (Instant, Arc<GuestTime>) {
        let time = inst.store.data().host.time.clone();
        time.begin(self.maker.meta.max_call_time);
        inst.store.set_epoch_deadline(1);
        (Instant::now(), time)
    }

    /// Returns a healthy instance to the pool; a failed one is dropped, and a build
    /// replaces it if the pool needs one. `Ok(Err(why))` is an answer the host refused
    /// (from a healthy instance).
    fn finish<R>(
        &self,
        phase: Phase,
        inst: Instance,
        started: Instant,
        result: wasmtime::Result<Result<R, String>>,
    ) -> Result<R, Unanswered> {
        self.timers[phase as usize].observe(started.elapsed().as_secs_f64());
        match result {
            Ok(answer) => {
                self.slots.lock().idle.push(inst);
                self.slots.ready.add_permits(1);
                Ok(answer.map_err(CallError::Invalid)?)
            }
            Err(e) => {
                let err = inst.store.data().classify(&e, &self.maker.meta);
                drop(inst);
                {
                    let mut state = self.slots.lock();
                    state.total -= 1;
                    self.slots.top_up(&self.maker, &mut state);
                }
                self.fail(phase, &err);
                Err(err.into())
            }
        }
    }

    fn fail(&self, phase: Phase, err: &CallError) {
        let phase = phase.name();
        let meta = &self.maker.meta;
        self.maker
            .runtime
            .metrics
            .count_failure(&meta.route, &meta.filter, phase, err);
        tracing::warn!(
            route = %meta.route,
            filter = %meta.filter,
            phase,
            error = %err,
            "filter call failed; instance discarded"
        );
    }
}

impl Pre {
    fn is_v2(&self) -> bool {
        matches!(self, Pre::V2(_))
    }
}

/// A 0.2 `filter-info` as the host keeps it.
fn from_v2_info(info: v2::FilterInfo) -> (FilterInfo, Phases) {
    let phases = Phases {
        request: info.phases.contains(v2::Phases::REQUEST),
        response: info.phases.contains(v2::Phases::RESPONSE),
    };
    let info = FilterInfo {
        name: info.name,
        version: info.version,
        wants_request_body: info.wants_request_body,
        wants_response_body: info.wants_response_body,
        may_retry: info.may_retry,
    };
    (info, phases)
}

fn from_v2_reply(reply: v2::Reply) -> Response {
    Response {
        status: reply.status,
        headers: reply.headers,
        body: reply.body,
    }
}

/// A 0.2 `on-request` answer in 0.1's shape; `Err` when the guest made a change the
/// host refused.
fn from_v2_request(
    action: v2::RequestAction,
    lent: call::CallData,
) -> Result<RequestAction, String> {
    if let Some(why) = lent.invalid {
        return Err(why);
    }
    Ok(match action {
        v2::RequestAction::Continue => {
            let edit =
                (lent.new_body.is_some() || lent.try_timeout_ms.is_some()).then(|| RequestEdit {
                    body: lent.new_body,
                    try_timeout_ms: lent.try_timeout_ms,
                    ..no_edit()
                });
            RequestAction::Continue((edit, lent.memo.map(Vec::from)))
        }
        v2::RequestAction::Respond(reply) => RequestAction::Respond(from_v2_reply(reply)),
        v2::RequestAction::Wait(ms) => RequestAction::Wait(ms),
    })
}

/// A 0.2 `on-response` answer in 0.1's shape, as [`from_v2_request`].
fn from_v2_response(
    action: v2::ResponseAction,
    lent: call::CallData,
) -> Result<ResponseAction, String> {
    if let Some(why) = lent.invalid {
        return Err(why);
    }
    Ok(match action {
        v2::ResponseAction::Continue => ResponseAction::Continue(None),
        v2::ResponseAction::Respond(reply) => ResponseAction::Respond(from_v2_reply(reply)),
        v2::ResponseAction::Retry(ms) => ResponseAction::Retry(ms),
    })
}

fn no_edit() -> RequestEdit {
    RequestEdit {
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
        path_with_query: None,
        body: None,
        try_timeout_ms: None,
    }
}

/// The header edit that turns `before` into `after`: every value of each name whose
/// values changed, and the names that went.
fn diff(
    before: &[(String, Vec<u8>)],
    after: &[(String, Vec<u8>)],
) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let of = |fields: &[(String, Vec<u8>)], name: &str| -> Vec<Vec<u8>> {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    };
    let mut set = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for (n, _) in after {
        if seen.iter().any(|s| s.eq_ignore_ascii_case(n)) {
            continue;
        }
        seen.push(n);
        let now = of(after, n);
        if now != of(before, n) {
            set.extend(now.into_iter().map(|v| (n.clone(), v)));
        }
    }
    let mut removed: Vec<String> = Vec::new();
    for (n, _) in before {
        if !after.iter().any(|(a, _)| a.eq_ignore_ascii_case(n))
            && !removed.iter().any(|r| r.eq_ignore_ascii_case(n))
        {
            removed.push(n.clone());
        }
    }
    (set, removed)
}

/// The answer of a call that waited without a bound, which therefore cannot be
/// [`Unanswered::Busy`].
fn unbounded<T>(r: Result<T, Unanswered>) -> Result<T, CallError> {
    r.map_err(|e| match e {
        Unanswered::Failed(e) => e,
        Unanswered::Busy => CallError::Trap(e.to_string()),
    })
}

impl Maker {
    /// Creates and initialises one instance. The error is the guest's `init` error or a
    /// trap, as text.
    async fn instantiate(&self) -> Result<(Instance, FilterInfo, Phases), String> {
        #[cfg(test)]
        self.made_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::task::try_id());
        let _ticking = self.runtime.ticker.enter();
        let meta = &self.meta;
        let data = GuestState::new(meta.clone(), &self.runtime, self.outbound.clone());
        let mut store = Store::new(&self.runtime.engine, data);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| {
            if ctx.data().host.time.tick() {
                // Let other tasks run on this thread while a long call goes on.
                Ok(UpdateDeadline::Yield(1))
            } else {
                Err(wasmtime::format_err!("filter call time exceeded"))
            }
        });
        // Tells the call clock when guest code starts and stops running. `CallingHost`
        // is not used: runtime calls (memory.grow, bulk memory) come through it too, and
        // they are the guest's work; weir's imports are told apart by the linker.
        store.call_hook(|ctx, hook| {
            let time = &ctx.data().host.time;
            match hook {
                CallHook::CallingWasm => time.entered_guest(),
                CallHook::ReturningFromWasm => time.left_guest(),
                CallHook::ReturningFromHost => time.host_returned(),
                CallHook::CallingHost => {}
            }
            Ok(())
        });
        // Instantiation and `init` may do real work (a Python or JavaScript runtime
        // starting), so they get a wider budget than a request-path call.
        let budget = (meta.max_call_time * 10).max(Duration::from_secs(5));
        let time = store.data().host.time.clone();
        time.begin(budget);
        store.set_epoch_deadline(1);
        let describe = |store: &Store<GuestState>, e: wasmtime::Error| {
            store.data().classify(&e, meta).to_string()
        };
        let instantiated = match &self.loaded.pre {
            Pre::V1(pre) => time
                .time(pre.instantiate_async(&mut store))
                .await
                .map(Guest::V1),
            Pre::V2(pre) => time
                .time(pre.instantiate_async(&mut store))
                .await
                .map(Guest::V2),
        };
        let guest = match instantiated {
            Ok(g) => g,
            Err(e) => return Err(describe(&store, e)),
        };
        let result = match &guest {
            Guest::V1(g) => {
                let call = g
                    .weir_filter_filter()
                    .call_init(&mut store, &self.config_json);
                time.time(call).await.map(|r| {
                    r.map(|info| {
                        let both = Phases {
                            request: true,
                            response: true,
                        };
                        (info, both)
                    })
                })
            }
            Guest::V2(g) => {
                let call = g
                    .weir_filter0_2_1_filter()
                    .call_init(&mut store, &self.config_json);
                time.time(call).await.map(|r| r.map(from_v2_info))
            }
        };
        match result {
            Ok(Ok((info, phases))) => Ok((Instance { store, guest }, info, phases)),
            Ok(Err(msg)) => {
                // The SDK starts the message with the filter's own name; when that is the
                // configured name too, the error already says it.
                let prefix = format!("{}: ", meta.filter);
                let msg = msg.strip_prefix(&prefix).unwrap_or(&msg);
                Err(format!("init rejected its config: {msg}"))
            }
            Err(e) => Err(format!("init {}", describe(&store, e))),
        }
    }
}

// === impl GuestState ===

/// A memory cap per linear memory; remembers that it refused so the trap that follows can
/// be reported as what it is.
struct MemoryCap {
    max: u64,
    refused: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max {
            self.refused = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// What the weir interfaces' host side needs: the view the `*_impl.rs` files implement
/// their traits on.
pub struct GuestHost {
    meta: Arc<FilterMeta>,
    state: Arc<dyn StateBackend>,
    metrics: Arc<FilterMetrics>,
    outbound: Option<Arc<Outbound>>,
    /// The clock of the call in progress, which the epoch callback checks.
    time: Arc<GuestTime>,
    /// When the request the current call works on runs out of time (its
    /// `remaining-ms` from the call's start); `None` in `init`. Bounds outbound calls.
    deadline: Option<tokio::time::Instant>,
    /// Until when the current call's state operations may wait: the deadline, or, for a
    /// call that starts with no time left (the `on-response` of a request that timed
    /// out, which a breaker must still record), [`STATE_GRACE`] from its start.
    state_deadline: Option<tokio::time::Instant>,
    /// Whether the current call's state and outbound calls are timed into `calls`.
    record_calls: bool,
    /// What a 0.2 call's handles stand for, while the call runs.
    call: call::CallData,
    /// The current call's state and outbound calls, with `record_calls`. A lock, not a
    /// plain field, because state operations run on a shared borrow; it is only taken
    /// while recording.
    calls: Mutex<Vec<HostCall>>,
    /// The metric series this instance has written, so writing one again takes no lock.
    series: metrics_impl::SeriesCache,
}

/// How long the state operations of a call that starts past its request's deadline may
/// take in all.
pub const STATE_GRACE: Duration = Duration::from_millis(100);

impl GuestHost {
    /// Notes a state or outbound call made since `at`, when the current call records
    /// them.
    fn note_call(&self, what: HostCallKind, at: tokio::time::Instant, error: Option<&'static str>) {
        let call = HostCall {
            what,
            at,
            took: at.elapsed(),
            error,
        };
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(call);
    }

    /// Puts the calls the guest made into `sink`, when the call recorded them.
    fn hand_over_calls(&mut self, sink: Option<&mut Vec<HostCall>>) {
        if let Some(sink) = sink {
            let calls = self.calls.get_mut().unwrap_or_else(|p| p.into_inner());
            *sink = std::mem::take(calls);
        }
    }

    /// Notes the deadline of the request that the call about to start works on, and
    /// whether its state and outbound calls are recorded.
    fn request_deadline(&mut self, info: &RequestInfo, record_calls: bool) {
        self.record_calls = record_calls;
        let now = tokio::time::Instant::now();
        let remaining = Duration::from_millis(info.remaining_ms);
        self.deadline = Some(now + remaining);
        self.state_deadline = Some(
            now + if remaining.is_zero() {
                STATE_GRACE
            } else {
                remaining
            },
        );
    }
}

/// The data of one instance's store.
pub struct GuestState {
    wasi: WasiCtx,
    table: ResourceTable,
    host: GuestHost,
    limiter: MemoryCap,
}

impl GuestState {
    fn new(
        meta: Arc<FilterMeta>,
        runtime: &Runtime,
        outbound: Option<Arc<Outbound>>,
    ) -> GuestState {
        // Clocks and random numbers only: no files, sockets or environment. Output goes
        // to weir's log, tagged with the filter.
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdio::LogOutput::new(&meta.filter, &meta.route, "stdout"))
            .stderr(stdio::LogOutput::new(&meta.filter, &meta.route, "stderr"))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        if let Some(clock) = &runtime.clock {
            wasi.wall_clock(clock.clone())
                .monotonic_clock(clock.clone());
        }
        let wasi = wasi.build();
        GuestState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryCap {
                max: meta.max_memory,
                refused: false,
            },
            host: GuestHost {
                time: Arc::new(GuestTime::new()),
                meta,
                state: runtime.state.clone(),
                metrics: runtime.metrics.clone(),
                outbound,
                deadline: None,
                state_deadline: None,
                record_calls: false,
                call: call::CallData::default(),
                calls: Mutex::new(Vec::new()),
                series: metrics_impl::SeriesCache::default(),
            },
        }
    }

    /// Turns a failed call into what happened, using what the limiter and the clock saw.
    fn classify(&self, e: &wasmtime::Error, meta: &FilterMeta) -> CallError {
        if self.host.time.timed_out() {
            CallError::Timeout(self.host.time.limit())
        } else if self.limiter.refused {
            CallError::Memory(meta.max_memory)
        } else {
            let text = match e.downcast_ref::<wasmtime::Trap>() {
                Some(trap) => trap.to_string(),
                None => format!("{e:#}"),
            };
            CallError::Trap(text)
        }
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ByteSize, HumanDuration};
    use crate::state::MemoryBackend;

    const MISBEHAVE: &[u8] = include_bytes!(env!("WEIR_TEST_MISBEHAVE"));

    async fn pool_of(
        wasm: &[u8],
        config: serde_json::Value,
        settings: FilterConfig,
    ) -> Arc<FilterPool> {
        pool_in(&prometheus::Registry::new(), wasm, config, settings).await
    }

    /// A pool whose host metrics go to `registry`.
    async fn pool_in(
        registry: &prometheus::Registry,
        wasm: &[u8],
        config: serde_json::Value,
        settings: FilterConfig,
    ) -> Arc<FilterPool> {
        pool_on(
            registry,
            MemoryBackend::new(1 << 20),
            wasm,
            config,
            settings,
        )
        .await
    }

    /// A pool whose host metrics go to `registry` and state to `state`.
    async fn pool_on(
        registry: &prometheus::Registry,
        state: Arc<dyn StateBackend>,
        wasm: &[u8],
        config: serde_json::Value,
        settings: FilterConfig,
    ) -> Arc<FilterPool> {
        let metrics = FilterMetrics::new(registry).unwrap();
        let runtime = Runtime::new(
            Runtime::default_cache_dir().as_deref(),
            state,
            Arc::new(metrics),
        )
        .unwrap();
        let loaded = runtime.load("the test filter", wasm).unwrap();
        runtime
            .pool(loaded, "f", "r", config.to_string(), &settings, None, 0)
            .await
            .unwrap()
    }

    fn request() -> Request {
        Request {
            method: "GET".into(),
            upstream: "http://127.0.0.1:1".into(),
            path_with_query: "/".into(),
            headers: Vec::new(),
            body: None,
        }
    }

    fn info() -> RequestInfo {
        RequestInfo {
            id: "1".into(),
            route: "r".into(),
            attempt: 1,
            remaining_ms: 1000,
            client_addr: "127.0.0.1:2".into(),
        }
    }

    /// Runs one `on-request` in its own task; returns that task's id with the result.
    fn call_in_task(
        pool: &Arc<FilterPool>,
    ) -> tokio::task::JoinHandle<(tokio::task::Id, Result<RequestAction, CallError>)> {
        let pool = pool.clone();
        tokio::spawn(async move {
            let id = tokio::task::id();
            (id, pool.on_request(&info(), &request()).await)
        })
    }

    /// Where the pool's instances were created; `None` is the test's own body (the load).
    fn made_in(pool: &FilterPool) -> Vec<Option<tokio::task::Id>> {
        pool.maker.made_in.lock().unwrap().clone()
    }

    /// Waits, without a time limit of its own (the test harness has one), until `done`.
    async fn until(pool: &FilterPool, done: impl Fn(PoolSize) -> bool) -> PoolSize {
        loop {
            let size = pool.size();
            if done(size) {
                return size;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    #[tokio::test]
    async fn spares_are_built_in_the_background_and_a_call_keeps_its_warm_instance() {
        let settings = FilterConfig {
            min_instances: 2,
            max_instances: 4,
            ..FilterConfig::default()
        };
        let pool = pool_of(
            crate::builtin::lookup("headers").unwrap().wasm,
            serde_json::json!({}),
            settings,
        )
        .await;
        let size = |idle, total| PoolSize {
            idle,
            total,
            building: 0,
            peak: total,
        };
        assert_eq!(pool.size(), size(2, 2));
        let (task, result) = call_in_task(&pool).await.unwrap();
        assert!(result.is_ok());
        // The call left one idle, under min_instances: a spare is on its way (or built).
        assert_eq!(pool.size().total, 3);
        let built = until(&pool, |s| s.building == 0).await;
        assert_eq!(built, size(3, 3));
        assert!(
            !made_in(&pool).contains(&Some(task)),
            "the call created an instance"
        );
        // One call at a time leaves two spares idle each time: no more builds.
        for _ in 0..5 {
            assert!(call_in_task(&pool).await.unwrap().1.is_ok());
        }
        assert_eq!(pool.size(), size(3, 3));
        assert_eq!(made_in(&pool).len(), 3);
    }

    #[tokio::test]
    async fn the_ticker_sleeps_while_no_guest_runs_and_wakes_for_a_call() {
        let settings = FilterConfig {
            min_instances: 1,
            max_call_time: HumanDuration(Duration::from_millis(50)),
            max_memory: ByteSize(16 << 20),
            ..FilterConfig::default()
        };
        let pool = pool_of(MISBEHAVE, serde_json::json!({ "mode": "loop" }), settings).await;
        let ticker = &pool.maker.runtime.ticker;
        while !ticker.parked.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A guest that never returns is still stopped at its time limit.
        let result = pool.on_request(&info(), &request()).await;
        assert!(matches!(result, Err(CallError::Timeout(_))), "{result:?}");
        assert_eq!(ticker.active.load(Ordering::SeqCst), 0);
    }

    /// `misbehave`'s `pass` mode, the bench's no-op filter (`bench/configs/weir-noop.toml`):
    /// it asks for both calls, and each returns `continue` with nothing changed.
    #[tokio::test]
    async fn the_pass_mode_declares_both_phases_and_neither_call_changes_anything() {
        let pool = pool_of(
            MISBEHAVE,
            serde_json::json!({ "mode": "pass" }),
            FilterConfig::default(),
        )
        .await;
        assert_eq!(
            pool.phases(),
            Phases {
                request: true,
                response: true
            }
        );
        let answer = pool.on_request(&info(), &request()).await.unwrap();
        assert!(
            matches!(answer, RequestAction::Continue((None, None))),
            "{answer:?}"
        );
        let outcome = Outcome::Response(Response {
            status: 200,
            headers: vec![("server".into(), b"up".to_vec())],
            body: None,
        });
        let answer = pool
            .on_response(&info(), &request(), None, &outcome)
            .await
            .unwrap();
        assert!(
            matches!(answer, ResponseAction::Continue(None)),
            "{answer:?}"
        );
        // `ok`, by contrast, edits the request: the two modes are told apart.
        let ok = pool_of(
            MISBEHAVE,
            serde_json::json!({ "mode": "ok" }),
            FilterConfig::default(),
        )
        .await;
        let answer = ok.on_request(&info(), &request()).await.unwrap();
        assert!(
            matches!(answer, RequestAction::Continue((Some(_), None))),
            "{answer:?}"
        );
    }

    #[test]
    fn body_readers_get_room_for_two_bodies_within_the_pool_slot() {
        let info = |request, response| FilterInfo {
            name: "f".into(),
            version: "1".into(),
            wants_request_body: request,
            wants_response_body: response,
            may_retry: false,
        };
        let (own, mib) = (64 << 20, 1 << 20);
        assert_eq!(memory_cap(own, &info(false, false), false, 10 * mib), own);
        assert_eq!(
            memory_cap(own, &info(true, false), false, 64 * mib),
            192 * mib
        );
        assert_eq!(
            memory_cap(own, &info(false, true), false, 10 * mib),
            84 * mib
        );
        // Responses to outbound calls are bodies too.
        assert_eq!(
            memory_cap(own, &info(false, false), true, 10 * mib),
            84 * mib
        );
        assert_eq!(
            memory_cap(own, &info(true, true), false, 1 << 30),
            MAX_FILTER_MEMORY
        );
    }

    /// A POST with an `Idempotency-Key` and `body`: the idempotency filter fingerprints
    /// the body and claims the key in state.
    fn keyed_post(body: Vec<u8>) -> Request {
        Request {
            method: "POST".into(),
            headers: vec![("idempotency-key".into(), b"k-1".to_vec())],
            body: Some(body),
            ..request()
        }
    }

    #[tokio::test]
    async fn copying_a_large_body_into_the_guest_does_not_count_against_it() {
        // Lowering 32 MiB into the guest takes the host milliseconds; the filter itself
        // does not look at the body and returns in microseconds.
        let settings = FilterConfig {
            min_instances: 1,
            max_call_time: HumanDuration(Duration::from_millis(1)),
            ..FilterConfig::default()
        };
        let pool = pool_of(
            crate::builtin::lookup("headers").unwrap().wasm,
            serde_json::json!({}),
            settings,
        )
        .await;
        let req = Request {
            body: Some(vec![7; 32 << 20]),
            ..request()
        };
        for _ in 0..2 {
            let result = pool.on_request(&info(), &req).await;
            assert!(
                matches!(result, Ok(RequestAction::Continue(_))),
                "{result:?}"
            );
        }
    }

    /// A state store that burns `cost` of the calling thread's CPU in every operation,
    /// as a slow backend or a slow host would.
    struct Slow {
        inner: Arc<MemoryBackend>,
        cost: Duration,
    }

    impl Slow {
        fn burn(&self) {
            let start = Instant::now();
            while start.elapsed() < self.cost {
                std::hint::spin_loop();
            }
        }
    }

    impl StateBackend for Slow {
        fn get<'a>(
            &'a self,
            key: &'a str,
        ) -> crate::state::BoxFuture<'a, Result<Option<Vec<u8>>, crate::state::StateError>>
        {
            self.burn();
            self.inner.get(key)
        }

        fn set<'a>(
            &'a self,
            key: &'a str,
            value: Vec<u8>,
            ttl: Option<Duration>,
        ) -> crate::state::BoxFuture<'a, Result<(), crate::state::StateError>> {
            self.burn();
            self.inner.set(key, value, ttl)
        }

        fn delete<'a>(
            &'a self,
            key: &'a str,
        ) -> crate::state::BoxFuture<'a, Result<(), crate::state::StateError>> {
            self.burn();
            self.inner.delete(key)
        }

        fn incr<'a>(
            &'a self,
            key: &'a str,
            delta: i64,
            ttl: Option<Duration>,
        ) -> crate::state::BoxFuture<'a, Result<i64, crate::state::StateError>> {
            self.burn();
            self.inner.incr(key, delta, ttl)
        }

        fn compare_and_swap<'a>(
            &'a self,
            key: &'a str,
            expected: Option<&'a [u8]>,
            new: Vec<u8>,
            ttl: Option<Duration>,
        ) -> crate::state::BoxFuture<'a, Result<bool, crate::state::StateError>> {
            self.burn();
            self.inner.compare_and_swap(key, expected, new, ttl)
        }

        fn bucket_take<'a>(
            &'a self,
            key: &'a str,
            policy: crate::state::BucketPolicy,
            now_ns: u64,
        ) -> crate::state::BoxFuture<'a, Result<crate::state::TakeResult, crate::state::StateError>>
        {
            self.burn();
            self.inner.bucket_take(key, policy, now_ns)
        }

        fn bucket_pause<'a>(
            &'a self,
            key: &'a str,
            until_ns: u64,
            now_ns: u64,
        ) -> crate::state::BoxFuture<'a, Result<(), crate::state::StateError>> {
            self.burn();
            self.inner.bucket_pause(key, until_ns, now_ns)
        }

        fn window_add<'a>(
            &'a self,
            key: &'a str,
            window: crate::state::Window,
            at_ns: u64,
            now_ns: u64,
            record: Option<&'a [i64]>,
            ttl: Option<Duration>,
        ) -> crate::state::BoxFuture<'a, Result<Vec<i64>, crate::state::StateError>> {
            self.burn();
            self.inner
                .window_add(key, window, at_ns, now_ns, record, ttl)
        }
    }

    #[tokio::test]
    async fn time_in_weirs_imports_does_not_count_against_the_guest() {
        let settings = FilterConfig {
            min_instances: 1,
            max_call_time: HumanDuration(Duration::from_millis(100)),
            ..FilterConfig::default()
        };
        let state = Arc::new(Slow {
            inner: MemoryBackend::new(1 << 20),
            cost: Duration::from_millis(150),
        });
        let pool = pool_on(
            &prometheus::Registry::new(),
            state,
            crate::builtin::lookup("idempotency").unwrap().wasm,
            serde_json::json!({}),
            settings,
        )
        .await;
        // Claiming the key takes a state call of 150 ms, more than the call's limit.
        let result = pool.on_request(&info(), &keyed_post(b"{}".to_vec())).await;
        assert!(
            matches!(&result, Ok(RequestAction::Continue((_, Some(_))))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn other_tasks_on_the_thread_do_not_count_against_the_guest() {
        let settings = FilterConfig {
            min_instances: 1,
            max_call_time: HumanDuration(Duration::from_millis(100)),
            ..FilterConfig::default()
        };
        let pool = pool_of(
            crate::builtin::lookup("idempotency").unwrap().wasm,
            serde_json::json!({}),
            settings,
        )
        .await;
        // Fingerprinting 32 MiB keeps the guest busy for several ticks, well within its
        // limit. At its first yield this task holds the (only) thread for longer than
        // the limit, as a busy worker or a busy machine would.
        let busy = tokio::spawn(async { std::thread::sleep(Duration::from_millis(300)) });
        let started = Instant::now();
        let result = pool
            .on_request(&info(), &keyed_post(vec![7; 32 << 20]))
            .await;
        assert!(
            busy.is_finished(),
            "the other task did not run during the call"
        );
        assert!(started.elapsed() > Duration::from_millis(300));
        assert!(
            matches!(&result, Ok(RequestAction::Continue((_, Some(_))))),
            "{result:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn overlapping_calls_grow_the_pool_to_max_without_instantiating_inline() {
        // Every call spins until its time limit, holding its instance, then traps: the
        // pool grows for the waiting calls, shrinks as instances fail, and refills.
        let settings = FilterConfig {
            min_instances: 1,
            max_instances: 3,
            max_call_time: HumanDuration(Duration::from_millis(200)),
            max_memory: ByteSize(16 << 20),
            ..FilterConfig::default()
        };
        let pool = pool_of(MISBEHAVE, serde_json::json!({ "mode": "loop" }), settings).await;
        let calls: Vec<_> = (0..5).map(|_| call_in_task(&pool)).collect();
        let mut tasks = Vec::new();
        for call in calls {
            let (task, result) = call.await.unwrap();
            assert!(matches!(result, Err(CallError::Timeout(_))), "{result:?}");
            tasks.push(Some(task));
        }
        let made = made_in(&pool);
        assert!(
            made.len() >= 5,
            "each failed instance was replaced: {made:?}"
        );
        assert!(
            made.iter().all(|m| !tasks.contains(m)),
            "a call created an instance: {made:?} vs calls {tasks:?}"
        );
        // Calls waited, so the pool grew to max_instances, and no further.
        // Every instance that failed was dropped; a spare is built again.
        let size = until(&pool, |s| s.building == 0 && s.idle >= 1).await;
        assert_eq!(size.peak, 3, "{size:?}");
        assert!(size.total <= 3, "{size:?}");
    }

    /// `weir_filter_failures_total` for route `r`, filter `f`, this phase and kind.
    fn failures(registry: &prometheus::Registry, phase: &str, kind: &str) -> f64 {
        let want = [
            ("route", "r"),
            ("filter", "f"),
            ("phase", phase),
            ("kind", kind),
        ];
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == "weir_filter_failures_total")
            .flat_map(|family| family.get_metric())
            .find(|m| {
                m.get_label().len() == want.len()
                    && want.iter().all(|(k, v)| {
                        m.get_label()
                            .iter()
                            .any(|l| l.name() == *k && l.value() == *v)
                    })
            })
            .map_or(0.0, |m| m.get_counter().get_value())
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_for_an_instance_ends_at_its_bound_and_the_instance_still_comes_back() {
        let settings = FilterConfig {
            min_instances: 1,
            max_instances: 1,
            ..FilterConfig::default()
        };
        let registry = prometheus::Registry::new();
        let pool = pool_in(
            &registry,
            crate::builtin::lookup("headers").unwrap().wasm,
            serde_json::json!({}),
            settings,
        )
        .await;
        // The test holds the only instance, as a call in progress would.
        let held = pool.checkout(Phase::Request, None).await.unwrap();

        let start = tokio::time::Instant::now();
        let until = start + Duration::from_millis(250);
        let result = pool
            .on_request_until(
                &mut info(),
                &mut ChainRequest::from_wit(&request()),
                None,
                Some(until),
                None,
            )
            .await;
        assert!(matches!(result, Err(Unanswered::Busy)), "{result:?}");
        assert_eq!(
            tokio::time::Instant::now(),
            until,
            "it gave up at its bound, not before or after"
        );
        assert_eq!(failures(&registry, "on_request", "busy"), 1.0);
        let until = tokio::time::Instant::now() + Duration::from_millis(100);
        let mut outcome = ChainOutcome::Error(UpstreamError::Timeout);
        let mut error_headers = http::HeaderMap::new();
        let returned = Returned {
            memo: None,
            body: None,
            outcome: &mut outcome,
            error_headers: &mut error_headers,
            fixed: false,
        };
        let result = pool
            .on_response_until(
                &mut info(),
                &mut ChainRequest::from_wit(&request()),
                returned,
                Some(until),
                None,
            )
            .await;
        assert!(matches!(result, Err(Unanswered::Busy)), "{result:?}");
        assert_eq!(failures(&registry, "on_response", "busy"), 1.0);
        // Giving up built nothing: max_instances is 1, and no waiter is left counted.
        assert_eq!(pool.size().total, 1);
        assert_eq!(pool.slots.lock().waiting, 0);

        // A waiter whose instance comes back before its bound gets it.
        let waiter = {
            let pool = pool.clone();
            let until = tokio::time::Instant::now() + Duration::from_millis(250);
            tokio::spawn(async move {
                pool.on_request_until(
                    &mut info(),
                    &mut ChainRequest::from_wit(&request()),
                    None,
                    Some(until),
                    None,
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished());
        // Back to the pool, as at the end of a call.
        pool.finish(Phase::Request, held, Instant::now(), Ok(Ok(())))
            .unwrap();
        let result = waiter.await.unwrap();
        assert!(
            matches!(result, Ok(RequestAction::Continue(_))),
            "{result:?}"
        );
        assert_eq!(failures(&registry, "on_request", "busy"), 1.0);
    }
}
