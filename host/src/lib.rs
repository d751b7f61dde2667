//! weir: an egress proxy that runs WebAssembly-component filters.
//!
//! An application sends its outbound HTTP calls to weir. weir matches each call to a
//! route, runs the route's chain of filters (retry, breaker, limiter, cache, auth, or a
//! team's own, each a component built against `wit/`), and forwards the call over one
//! shared, pooled, TLS-verifying upstream client.
//!
//! Using the library:
//!
//! 1. [`config::Config::load`] reads and validates a TOML file; its errors carry file,
//!    line and column.
//! 2. [`Server::start`] builds the wasm runtime, loads and initialises every filter,
//!    binds the listeners and returns their addresses.
//! 3. [`Server::run`] serves until the shutdown future resolves, then drains. While it
//!    serves, it reloads the config on change or `SIGHUP` ([`reload`]).
//!
//! [`check`] does steps 1 and 2 without binding, for `weir check`.
//!
//! The tools for filter authors (the harness, `weir filter test`, `weir filter new`)
//! live apart from the request path, in [`authoring`].
//!
//! The modules follow a request's path: [`listener`] accepts it, [`path`] normalises its
//! path, [`router`] picks the route, [`chain`] runs the filters (through [`wasm`]) around
//! the [`upstream`] call, and [`error`] turns any failure into a JSON response.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accept;
pub mod admin;
pub mod authoring;
pub mod batch;
mod bindings;
pub mod body;
pub mod builtin;
pub mod chain;
pub mod clock;
pub mod compress;
pub mod config;
pub mod dashboard;
pub mod deadline;
pub mod drain;
pub mod error;
pub mod fanout;
pub mod headers;
pub mod jobs;
pub mod listener;
pub mod otlp;
pub mod path;
pub mod recent;
pub mod reload;
pub mod router;
pub mod slow_clients;
pub mod state;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod wasm;
pub mod workers;

/// Locks `m`, taking the data of a mutex that a panicking thread poisoned: the locks this
/// is for guard plain lists and stacks, which a panic leaves whole.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, ConfigError, StateBackendKind};
use crate::jobs::Jobs;
use crate::listener::Proxy;
use crate::otlp::Otlp;
use crate::reload::{ReloadStatus, Reloader};
use crate::router::Router;
use crate::state::{MemoryBackend, RedisBackend, StateBackend};
use crate::telemetry::Telemetry;
use crate::wasm::{FilterMetrics, Runtime};

/// How often the memory state backend drops expired entries.
const STATE_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why weir could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config, or something it names, is wrong.
    #[error("{}", config::ConfigErrors(.0.clone()))]
    Config(Vec<ConfigError>),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The process could not set something up (metrics registry, engine).
    #[error("{0}")]
    Internal(String),
}

/// A started weir: listeners bound, filters ready.
pub struct Server {
    config: Config,
    proxy: Arc<Proxy>,
    telemetry: Arc<Telemetry>,
    listen_addr: SocketAddr,
    /// The proxy listener, served by the workers since [`Server::start`].
    serving: listener::Serving,
    admin: Option<TcpListener>,
    reload: Arc<ReloadStatus>,
    reloader: Reloader,
    /// The state backend, for `/status`.
    state: Arc<dyn StateBackend>,
}

/// The `[state]` backend. A Redis backend connects lazily, so weir starts while Redis is
/// down; `weir check` asks for the server at once.
async fn state_backend(
    config: &Config,
    telemetry: &Telemetry,
) -> Result<Arc<dyn StateBackend>, StartError> {
    let state = &config.raw.state;
    Ok(match (state.backend, &state.redis) {
        (StateBackendKind::Redis, Some(redis)) => {
            let up = prometheus::IntGauge::new(
                "weir_state_up",
                "1 while the shared state backend (Redis) answers, 0 while it does not",
            )
            .and_then(|g| telemetry.registry.register(Box::new(g.clone())).map(|()| g))
            .map_err(|e| StartError::Internal(e.to_string()))?;
            let span = config.key_span(&["state", "redis"]);
            RedisBackend::new(redis, up)
                .map_err(|e| StartError::Config(vec![config.error_at(span, e)]))?
        }
        _ => {
            let m = MemoryBackend::new(state.max_bytes.0);
            m.spawn_sweeper(STATE_SWEEP_EVERY);
            m
        }
    })
}

/// Everything `check` and `start` share: the runtime and a built route table.
async fn prepare(
    config: &Config,
) -> Result<(Arc<Runtime>, Router, Arc<Telemetry>, Option<TlsAcceptor>), StartError> {
    let telemetry = Telemetry::new().map_err(|e| StartError::Internal(e.to_string()))?;
    let state = state_backend(config, &telemetry).await?;
    let cache_dir = config
        .raw
        .runtime
        .cache_dir
        .clone()
        .or_else(Runtime::default_cache_dir);
    let filter_metrics =
        FilterMetrics::new(&telemetry.registry).map_err(|e| StartError::Internal(e.to_string()))?;
    let runtime = Runtime::new(cache_dir.as_deref(), state, Arc::new(filter_metrics))
        .map_err(|e| StartError::Internal(e.to_string()))?;
    let mut errors = Vec::new();
    let tls = match &config.raw.listen.tls {
        None => None,
        Some(t) => match tls::server_config(t) {
            Ok(cfg) => Some(TlsAcceptor::from(cfg)),
            Err(e) => {
                // `e.setting()` is a path like `listen.tls.cert`: point at that key.
                let path: Vec<&str> = e.setting().split('.').collect();
                let span = config.key_span(&path);
                errors.push(config.error_at(span, e.to_string()));
                None
            }
        },
    };
    let router = match Router::build(config, &runtime, &telemetry).await {
        Ok(r) => Some(r),
        Err(mut e) => {
            errors.append(&mut e);
            None
        }
    };
    match router {
        Some(router) if errors.is_empty() => Ok((runtime, router, telemetry, tls)),
        _ => Err(StartError::Config(errors)),
    }
}

/// Validates `config` fully: loads every filter and calls each `init`.
pub async fn check(config: &Config) -> Result<(), StartError> {
    let (runtime, ..) = prepare(config).await?;
    runtime.state().ping().await.map_err(|e| {
        let span = config.key_span(&["state", "redis"]);
        StartError::Config(vec![config.error_at(span, format!("[state.redis]: {e}"))])
    })
}

impl Server {
    /// Loads everything and binds the listeners.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        // First: the upstream pools built next keep idle connections per worker.
        let workers = workers::Workers::build(config.raw.listen.worker_count())
            .map_err(|e| StartError::Internal(format!("cannot start the worker runtimes: {e}")))?;
        let (runtime, router, telemetry, tls) = prepare(&config).await?;
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })
        };
        let listener = bind(config.raw.listen.addr.0).await?;
        let admin = match &config.raw.admin {
            Some(a) => Some(bind(a.addr.0).await?),
            None => None,
        };
        let jobs = match &config.raw.jobs {
            None => None,
            Some(j) => {
                // The key an error points at: the journal file, or the Redis it uses.
                let (redis, key) = match j.store_kind(&config.raw.state) {
                    crate::config::JobStoreKind::Redis => {
                        (config.raw.state.redis.as_ref(), ["state", "redis"])
                    }
                    crate::config::JobStoreKind::Journal => (None, ["jobs", "journal"]),
                };
                Some(Jobs::open(j, redis, &telemetry).map_err(|e| {
                    let span = config.key_span(&key);
                    StartError::Config(vec![config.error_at(span, e)])
                })?)
            }
        };
        let otlp = match &config.raw.telemetry.otlp {
            None => None,
            Some(o) => Some(Otlp::start(o, &telemetry.registry).map_err(|e| {
                let span = config.key_span(&["telemetry", "otlp"]);
                StartError::Config(vec![config.error_at(span, e)])
            })?),
        };
        let proxy = Proxy::new(
            router,
            &config.raw.listen,
            config.raw.admin.as_ref(),
            telemetry.clone(),
            jobs.clone(),
            config.raw.batch.as_ref(),
            otlp,
        );
        if let Some(jobs) = &jobs {
            jobs.start(proxy.clone());
        }
        let reload = ReloadStatus::new(reload::loaded(&config), &telemetry.registry)
            .map_err(|e| StartError::Internal(e.to_string()))?;
        let reload = Arc::new(reload);
        // Before weir announces it is ready: SIGHUP kills a process without a handler,
        // and a file written right after the announcement must be seen.
        let state = runtime.state().clone();
        let reloader = Reloader::new(
            &config,
            proxy.clone(),
            runtime,
            telemetry.clone(),
            reload.clone(),
        );
        let listen_addr = listener
            .local_addr()
            .map_err(|e| StartError::Internal(format!("the listener has no address: {e}")))?;
        // Last: from here on, the workers serve.
        let serving = listener::serve_on_workers(
            workers,
            listener,
            tls,
            proxy.clone(),
            &config.raw.listen,
        )
        .map_err(|e| StartError::Internal(format!("cannot start the worker threads: {e}")))?;
        Ok(Server {
            config,
            proxy,
            telemetry,
            listen_addr,
            serving,
            admin,
            reload,
            reloader,
            state,
        })
    }

    /// The proxy listener's address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.listen_addr)
    }

    /// The admin listener's address, if configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests (up to the
    /// listener's `drain_timeout`) and returns. Meanwhile it reloads the config when it
    /// or a filter component changes on disk, or on `SIGHUP` (see [`reload`]).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let reloader = tokio::spawn(self.reloader.run());
        let admin = self.admin.map(|l| {
            let token = self
                .config
                .raw
                .admin
                .as_ref()
                .and_then(|a| a.token.as_ref())
                // validate() resolved it once already; a secret that vanished since
                // locks the admin API rather than opening it.
                .map(|t| {
                    t.resolve()
                        .unwrap_or_else(|_| rand::random::<u128>().to_string())
                });
            let state = Arc::new(admin::Admin {
                telemetry: self.telemetry.clone(),
                state: self.state.clone(),
                proxy: self.proxy.clone(),
                reload: self.reload.clone(),
                token,
                streams: Default::default(),
            });
            tokio::spawn(admin::serve(l, state))
        });
        let jobs = self.proxy.jobs().cloned();
        let otlp = self.proxy.otlp().cloned();
        let stop_jobs = jobs.clone();
        // New async requests stop at once: a 202 after the signal could be for a job
        // that this process will not run.
        shutdown.await;
        if let Some(j) = &stop_jobs {
            j.stop_accepting();
        }
        let mut serving = self.serving;
        serving.drain().await;
        if let Some(jobs) = jobs {
            jobs.shutdown(self.config.raw.listen.drain_timeout.0).await;
        }
        if let Some(otlp) = otlp {
            // The spans of the requests just drained.
            otlp.flush(crate::otlp::FLUSH_TIMEOUT).await;
        }
        serving.exit().await;
        reloader.abort();
        if let Some(a) = admin {
            a.abort();
        }
    }
}
