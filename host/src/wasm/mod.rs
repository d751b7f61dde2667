//! The wasm runtime: one engine, one `InstancePre` per component, and a pool of
//! initialised instances per (route, filter).
//!
//! A call checks an instance out for that one call only, never across the upstream wait,
//! which is why per-request data travels in the memo and shared data lives in `state`.
//! Every call runs under a time limit (epoch interruption, checked every millisecond)
//! and a memory cap. A guest that traps, overruns or runs out of memory loses its
//! instance; the host logs it once, counts it, and the filter's `on_error` decides what
//! the request gets.

mod bindings;
pub mod builtin;
mod log_impl;
mod metrics_impl;
mod outbound_impl;
mod state_impl;
mod stdio;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Cache, CacheConfig, Engine, InstanceAllocationStrategy, PoolingAllocationConfig,
    ResourceLimiter, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

pub use bindings::{
    FilterInfo, Outcome, Request, RequestAction, RequestEdit, RequestInfo, Response,
    ResponseAction, ResponseEdit, UpstreamError,
};
pub use metrics_impl::FilterMetrics;
pub use outbound_impl::Outbound;

use crate::clock::VirtualClock;
use crate::config::{FilterConfig, MAX_FILTER_MEMORY, OnError};
use crate::state::StateBackend;
use bindings::{HttpFilter, HttpFilterPre};

/// How often the epoch advances; a call's time limit is checked at this granularity.
const EPOCH_TICK: Duration = Duration::from_millis(1);

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
}

// === impl Runtime ===

/// The process-wide wasm engine, linker and epoch ticker.
pub struct Runtime {
    engine: Engine,
    linker: Linker<GuestState>,
    state: Arc<dyn StateBackend>,
    metrics: Arc<FilterMetrics>,
    ticker_stop: Arc<AtomicBool>,
    /// The guests' clocks: real time, or a virtual clock under the filter harness.
    clock: Option<VirtualClock>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
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
            .total_core_instances(POOL_SLOTS)
            .total_component_instances(POOL_SLOTS)
            .total_stacks(POOL_SLOTS)
            .max_memories_per_component(16)
            .max_tables_per_component(16)
            .max_core_instances_per_component(64)
            .max_core_instance_size(16 << 20)
            .max_component_instance_size(16 << 20)
            .table_elements(200_000);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        if let Some(dir) = cache_dir {
            let mut cc = CacheConfig::new();
            cc.with_directory(dir);
            cfg.cache(Some(Cache::new(cc).map_err(err)?));
        }
        let engine = Engine::new(&cfg).map_err(err)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(err)?;
        HttpFilter::add_to_linker::<_, HasSelf<GuestHost>>(&mut linker, |s: &mut GuestState| {
            &mut s.host
        })
        .map_err(err)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("weir-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| LoadError::Engine(e.to_string()))?;
        }
        Ok(Arc::new(Runtime {
            engine,
            linker,
            state,
            metrics,
            ticker_stop,
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
        let pre = HttpFilterPre::new(pre).map_err(invalid)?;
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
    pub async fn pool(
        self: &Arc<Self>,
        loaded: Arc<Loaded>,
        filter: &str,
        route: &str,
        config_json: String,
        settings: &FilterConfig,
        outbound: Option<Arc<Outbound>>,
    ) -> Result<Arc<FilterPool>, LoadError> {
        let mut pool = FilterPool {
            runtime: self.clone(),
            loaded,
            outbound,
            meta: Arc::new(FilterMeta {
                filter: filter.to_owned(),
                route: route.to_owned(),
                max_memory: settings.max_memory.0,
                max_call_time: settings.max_call_time.0,
            }),
            on_error: settings.on_error,
            config_json,
            info: FilterInfo {
                name: filter.to_owned(),
                version: String::new(),
                wants_request_body: false,
                wants_response_body: false,
                may_retry: false,
            },
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(settings.max_instances as usize),
            timers: [
                self.metrics.call_timer(route, filter, "on_request"),
                self.metrics.call_timer(route, filter, "on_response"),
            ],
        };
        let init_err = |detail: String| LoadError::Init {
            filter: filter.to_owned(),
            route: route.to_owned(),
            detail,
        };
        let (first, info) = pool.instantiate().await.map_err(init_err)?;
        pool.info = info;
        let mut idle = vec![first];
        for _ in 1..settings.min_instances.max(1) {
            idle.push(pool.instantiate().await.map_err(init_err)?.0);
        }
        *pool.idle.get_mut().unwrap_or_else(|p| p.into_inner()) = idle;
        Ok(Arc::new(pool))
    }
}

/// A compiled, linked component, ready to instantiate.
pub struct Loaded {
    pre: HttpFilterPre<GuestState>,
}

// === impl FilterPool ===

/// The facts about a (route, filter) pair that its instances need.
#[derive(Debug)]
struct FilterMeta {
    filter: String,
    route: String,
    max_memory: u64,
    max_call_time: Duration,
}

/// Which export a call goes to.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Request = 0,
    Response = 1,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Request => "on_request",
            Phase::Response => "on_response",
        }
    }
}

struct Instance {
    store: Store<GuestState>,
    guest: HttpFilter,
}

/// Initialised instances of one filter for one route.
pub struct FilterPool {
    runtime: Arc<Runtime>,
    loaded: Arc<Loaded>,
    /// The upstreams this filter may call, if any.
    outbound: Option<Arc<Outbound>>,
    meta: Arc<FilterMeta>,
    on_error: OnError,
    config_json: String,
    info: FilterInfo,
    idle: Mutex<Vec<Instance>>,
    permits: Semaphore,
    /// Call-duration histograms for `on_request` and `on_response`.
    timers: [prometheus::Histogram; 2],
}

impl FilterPool {
    /// The filter's name as configured.
    pub fn name(&self) -> &str {
        &self.meta.filter
    }

    /// What the guest said about itself in `init`.
    pub fn info(&self) -> &FilterInfo {
        &self.info
    }

    /// What to do when a call fails.
    pub fn on_error(&self) -> OnError {
        self.on_error
    }

    /// Calls `on-request` on a pooled instance.
    pub async fn on_request(
        &self,
        info: &RequestInfo,
        req: &Request,
    ) -> Result<RequestAction, CallError> {
        let (mut inst, _permit) = self.checkout(Phase::Request).await?;
        let started = self.begin(&mut inst);
        let result = inst
            .guest
            .weir_filter_filter()
            .call_on_request(&mut inst.store, info, req)
            .await;
        self.finish(Phase::Request, inst, started, result)
    }

    /// Calls `on-response` on a pooled instance.
    pub async fn on_response(
        &self,
        info: &RequestInfo,
        req: &Request,
        memo: Option<&[u8]>,
        outcome: &Outcome,
    ) -> Result<ResponseAction, CallError> {
        let (mut inst, _permit) = self.checkout(Phase::Response).await?;
        let started = self.begin(&mut inst);
        let result = inst
            .guest
            .weir_filter_filter()
            .call_on_response(&mut inst.store, info, req, memo, outcome)
            .await;
        self.finish(Phase::Response, inst, started, result)
    }

    /// Takes an idle instance, or makes one when all are busy (up to `max_instances`;
    /// beyond that, waits for one to come back).
    async fn checkout(
        &self,
        phase: Phase,
    ) -> Result<(Instance, Option<tokio::sync::SemaphorePermit<'_>>), CallError> {
        // The semaphore is never closed, so acquiring cannot fail.
        let permit = self.permits.acquire().await.ok();
        let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match popped {
            Some(i) => Ok((i, permit)),
            None => match self.instantiate().await {
                Ok((i, _)) => Ok((i, permit)),
                Err(detail) => {
                    let err = CallError::Trap(detail);
                    self.fail(phase, &err);
                    Err(err)
                }
            },
        }
    }

    fn begin(&self, inst: &mut Instance) -> Instant {
        inst.store
            .data_mut()
            .host
            .begin_call(self.meta.max_call_time);
        inst.store.set_epoch_deadline(1);
        Instant::now()
    }

    /// Returns a healthy instance to the pool; a failed one is dropped.
    fn finish<R>(
        &self,
        phase: Phase,
        inst: Instance,
        started: Instant,
        result: wasmtime::Result<R>,
    ) -> Result<R, CallError> {
        self.timers[phase as usize].observe(started.elapsed().as_secs_f64());
        match result {
            Ok(r) => {
                self.idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(inst);
                Ok(r)
            }
            Err(e) => {
                let err = inst.store.data().classify(&e, &self.meta);
                self.fail(phase, &err);
                Err(err)
            }
        }
    }

    fn fail(&self, phase: Phase, err: &CallError) {
        let phase = phase.name();
        self.runtime
            .metrics
            .count_failure(&self.meta.route, &self.meta.filter, phase, err);
        tracing::warn!(
            route = %self.meta.route,
            filter = %self.meta.filter,
            phase,
            error = %err,
            "filter call failed; instance discarded"
        );
    }

    /// Creates and initialises one instance. The error is the guest's `init` error or a
    /// trap, as text.
    async fn instantiate(&self) -> Result<(Instance, FilterInfo), String> {
        let meta = &self.meta;
        let data = GuestState::new(meta.clone(), &self.runtime, self.outbound.clone());
        let mut store = Store::new(&self.runtime.engine, data);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|mut ctx| {
            let call = &mut ctx.data_mut().host.call;
            // Time the guest spent waiting on the host (an outbound call) is not its own.
            if call.started.elapsed().saturating_sub(call.waited) > call.limit {
                call.timed_out = true;
                Err(wasmtime::format_err!("filter call time exceeded"))
            } else {
                // Let other tasks run on this thread while a long call goes on.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        // Instantiation and `init` may do real work (a Python or JavaScript runtime
        // starting), so they get a wider budget than a request-path call.
        let budget = (meta.max_call_time * 10).max(Duration::from_secs(5));
        store.data_mut().host.begin_call(budget);
        store.set_epoch_deadline(1);
        let describe = |store: &Store<GuestState>, e: wasmtime::Error| {
            store.data().classify(&e, meta).to_string()
        };
        let guest = match self.loaded.pre.instantiate_async(&mut store).await {
            Ok(g) => g,
            Err(e) => return Err(describe(&store, e)),
        };
        let result = guest
            .weir_filter_filter()
            .call_init(&mut store, &self.config_json)
            .await;
        match result {
            Ok(Ok(info)) => Ok((Instance { store, guest }, info)),
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

/// The per-call clock that the epoch callback checks.
struct CallClock {
    started: Instant,
    limit: Duration,
    timed_out: bool,
    /// Time spent in host calls that wait (outbound HTTP), excluded from the limit.
    waited: Duration,
}

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
    call: CallClock,
}

impl GuestHost {
    fn begin_call(&mut self, limit: Duration) {
        self.call = CallClock {
            started: Instant::now(),
            limit,
            timed_out: false,
            waited: Duration::ZERO,
        };
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
                call: CallClock {
                    started: Instant::now(),
                    limit: meta.max_call_time,
                    timed_out: false,
                    waited: Duration::ZERO,
                },
                meta,
                state: runtime.state.clone(),
                metrics: runtime.metrics.clone(),
                outbound,
            },
        }
    }

    /// Turns a failed call into what happened, using what the limiter and the clock saw.
    fn classify(&self, e: &wasmtime::Error, meta: &FilterMeta) -> CallError {
        if self.host.call.timed_out {
            CallError::Timeout(self.host.call.limit)
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
