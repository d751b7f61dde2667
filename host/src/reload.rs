//! Hot reload: what is loaded now, how the last reload went, and the task that reloads.
//!
//! [`ReloadStatus`] is what `/status` and `/metrics` show about the running config.
//! [`Reloader`] rebuilds the route table when the config file or a filter component it
//! names changes on disk, or on `SIGHUP`:
//!
//! 1. [`Reloader::new`] (in [`crate::Server::start`], before weir says it is listening)
//!    installs the `SIGHUP` handler and watches the directories of those files.
//! 2. [`Reloader::run`] (spawned by [`crate::Server::run`]) waits for a change to settle
//!    ([`DEBOUNCE`]), then parses, validates, compiles and initialises the new config on a
//!    blocking thread, away from the request path.
//! 3. Only a config that built completely replaces the route table ([`Proxy::swap`]);
//!    requests in flight finish on the table they started with. Anything wrong leaves
//!    the running config serving, logged with file, line and column, and counted.
//!
//! Filter state (breakers, limiters, caches) lives in the runtime's state store, which a
//! reload shares, so it survives. The listeners, the admin settings, the state store and
//! the runtime are bound at start: a reload that changes them says so in `needs_restart`.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc;

use crate::clock::rfc3339;
use crate::config::{Admin, Config, ConfigErrors, Listen, RawConfig, RuntimeConfig, StateConfig};
use crate::listener::Proxy;
use crate::router::Router;
use crate::telemetry::Telemetry;
use crate::wasm::Runtime;

/// How long the watched files must stay quiet before a reload. Editors replace a file by
/// writing a temporary one and renaming it, and builds write a component in several
/// steps: one reload for the whole burst, of the finished files.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// The config that is serving now.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The config file.
    pub path: PathBuf,
    /// A hash of the config text and of every filter component it names.
    pub hash: String,
    /// The config file's modification time when it was read.
    pub modified: Option<SystemTime>,
    /// When this config started serving.
    pub loaded_at: SystemTime,
}

/// A reload that was refused; the previous config kept serving.
#[derive(Debug, Clone)]
pub struct Failure {
    /// When it was tried.
    pub at: SystemTime,
    /// Every error, one per line, with file, line and column where known.
    pub message: String,
}

/// The running config and the reload history, shared with the admin endpoints.
pub struct ReloadStatus {
    inner: Mutex<Inner>,
    reloads: IntCounterVec,
}

struct Inner {
    loaded: Loaded,
    last_error: Option<Failure>,
    /// Changes that only take effect after a restart (listener address or TLS files).
    needs_restart: Option<String>,
}

impl ReloadStatus {
    /// Starts with `loaded`, registering `weir_reloads_total{result}` in `registry`.
    pub fn new(loaded: Loaded, registry: &Registry) -> prometheus::Result<ReloadStatus> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "weir_reloads_total",
                "Config reloads, by result (ok or error)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(reloads.clone()))?;
        // Both series exist from the start, so a dashboard sees zeros, not gaps.
        reloads.with_label_values(&["ok"]);
        reloads.with_label_values(&["error"]);
        Ok(ReloadStatus {
            inner: Mutex::new(Inner {
                loaded,
                last_error: None,
                needs_restart: None,
            }),
            reloads,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a successful reload; `needs_restart` names settings that changed but only
    /// apply after a restart.
    pub fn succeeded(&self, loaded: Loaded, needs_restart: Option<String>) {
        self.reloads.with_label_values(&["ok"]).inc();
        let mut inner = self.lock();
        inner.loaded = loaded;
        inner.needs_restart = needs_restart;
    }

    /// Records a refused reload.
    pub fn failed(&self, message: String) {
        self.reloads.with_label_values(&["error"]).inc();
        self.lock().last_error = Some(Failure {
            at: SystemTime::now(),
            message,
        });
    }

    /// The config serving now.
    pub fn loaded(&self) -> Loaded {
        self.lock().loaded.clone()
    }

    /// The last refused reload, if any.
    pub fn last_error(&self) -> Option<Failure> {
        self.lock().last_error.clone()
    }

    /// The `config` part of `/status`.
    pub fn snapshot(&self) -> serde_json::Value {
        let inner = self.lock();
        let l = &inner.loaded;
        serde_json::json!({
            "path": l.path.display().to_string(),
            "hash": l.hash,
            "modified": l.modified.map(rfc3339),
            "loaded_at": rfc3339(l.loaded_at),
            "needs_restart": inner.needs_restart,
            "last_reload_error": inner.last_error.as_ref().map(|f| serde_json::json!({
                "at": rfc3339(f.at),
                "message": f.message,
            })),
        })
    }
}

/// A hash of the config text and of every filter component file it names, so `/status`
/// shows when anything that makes up the running config changed.
pub fn fingerprint(config: &crate::config::Config) -> String {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: stable across runs of the same build.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    config.text.hash(&mut h);
    for f in config.raw.filters.values() {
        if let Some(path) = &f.get_ref().wasm {
            path.hash(&mut h);
            std::fs::read(path).unwrap_or_default().hash(&mut h);
        }
    }
    format!("{:016x}", h.finish())
}

/// What is loaded now, read off `config`.
pub fn loaded(config: &crate::config::Config) -> Loaded {
    Loaded {
        path: config.path.clone(),
        hash: fingerprint(config),
        modified: modified(&config.path),
        loaded_at: SystemTime::now(),
    }
}

/// The modification time of `path`, if it can be read.
pub fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

// === impl Reloader ===

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trigger {
    /// A watched file changed. Skipped when none of the files changed in content, so a
    /// `touch` or a rebuild that wrote the same bytes does not rebuild every pool.
    Files,
    /// `SIGHUP`: always reloads.
    Hangup,
}

/// What woke the reload task.
enum Wake {
    Event(Option<notify::Result<Event>>),
    Settled,
    Hangup,
}

/// Reloads the config when it or a filter component it names changes, or on `SIGHUP`.
pub struct Reloader {
    path: PathBuf,
    proxy: Arc<Proxy>,
    runtime: Arc<Runtime>,
    telemetry: Arc<Telemetry>,
    status: Arc<ReloadStatus>,
    fixed: Fixed,
    hangup: Option<Signal>,
    events: mpsc::UnboundedReceiver<notify::Result<Event>>,
    /// `None` if the OS refused a watcher: then only `SIGHUP` reloads.
    watcher: Option<notify::RecommendedWatcher>,
    watched: Watched,
    /// The thread that builds every reloaded router, started at the first reload.
    builder: Option<std::sync::mpsc::Sender<Build>>,
}

/// A router to build on the builder thread.
type Build = Box<dyn FnOnce() + Send>;

/// Starts the one thread every reload builds its router on.
///
/// glibc's malloc gives each thread an arena and keeps what is freed in the arena it came
/// from. Built on tokio's blocking threads (a new one when the last sat idle for 10 s),
/// each reload's router landed in another arena, and the memory of the router it replaced
/// stayed behind in the old one: RSS rose by about a router's size at each reload until
/// every arena (8 per core) held one. Built on one thread, a reload reuses what the
/// router before it freed. The thread ends when the reloader is dropped.
fn builder() -> std::io::Result<std::sync::mpsc::Sender<Build>> {
    let (tx, rx) = std::sync::mpsc::channel::<Build>();
    std::thread::Builder::new()
        .name("weir-reload".to_owned())
        .spawn(move || {
            for build in rx {
                build();
            }
        })?;
    Ok(tx)
}

impl Reloader {
    /// Installs the `SIGHUP` handler and starts watching the files `config` reads. Call it
    /// before announcing readiness: until the handler is installed, `SIGHUP` kills weir.
    /// Must be called within a tokio runtime.
    pub fn new(
        config: &Config,
        proxy: Arc<Proxy>,
        runtime: Arc<Runtime>,
        telemetry: Arc<Telemetry>,
        status: Arc<ReloadStatus>,
    ) -> Reloader {
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP"))
            .ok();
        let (tx, events) = mpsc::unbounded_channel();
        // The watcher calls back on its own thread; the reload task does the filtering,
        // since it knows the current set of files.
        let watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .inspect_err(|e| {
            tracing::warn!(error = %e, "cannot watch the config for changes; send SIGHUP to reload")
        })
        .ok();
        let mut reloader = Reloader {
            path: config.path.clone(),
            proxy,
            runtime,
            telemetry,
            status,
            fixed: Fixed::of(config),
            hangup,
            events,
            watcher,
            watched: Watched::default(),
            builder: None,
        };
        reloader.watch(config);
        reloader
    }

    /// Waits for changes and reloads, until the task is dropped.
    pub async fn run(mut self) {
        let mut due: Option<tokio::time::Instant> = None;
        let mut events_open = true;
        loop {
            let wake = tokio::select! {
                event = self.events.recv(), if events_open => Wake::Event(event),
                () = settle(due) => Wake::Settled,
                () = hangup(&mut self.hangup) => Wake::Hangup,
            };
            match wake {
                Wake::Event(None) => events_open = false,
                Wake::Event(Some(Ok(event))) => {
                    if self.watched.is_relevant(&event) {
                        due = Some(tokio::time::Instant::now() + DEBOUNCE);
                    }
                }
                Wake::Event(Some(Err(e))) => {
                    tracing::warn!(error = %e, "watching the config files failed; reloading to be safe");
                    due = Some(tokio::time::Instant::now() + DEBOUNCE);
                }
                Wake::Settled => {
                    due = None;
                    self.reload(Trigger::Files).await;
                }
                Wake::Hangup => {
                    tracing::info!("SIGHUP: reloading the config");
                    due = None;
                    self.reload(Trigger::Hangup).await;
                }
            }
        }
    }

    /// One reload: read, build, swap; or keep the running config and say why.
    async fn reload(&mut self, trigger: Trigger) {
        let started = Instant::now();
        let path = self.path.clone();
        // File reads and hashing are blocking I/O: keep them off the async workers.
        let read = tokio::task::spawn_blocking(move || Config::load(&path).map(Read::of)).await;
        let read = match read {
            Ok(Ok(read)) => read,
            Ok(Err(errors)) => return self.refuse(errors.to_string()),
            Err(e) => {
                return self.refuse(format!(
                    "{}: reading the config failed: {e}",
                    self.path.display()
                ));
            }
        };
        // Watch what this config names even if it fails to build: the missing component
        // it names may be about to appear.
        self.watch(&read.config);
        if trigger == Trigger::Files && read.hash == self.status.loaded().hash {
            tracing::debug!("config files unchanged; not reloading");
            return;
        }
        let config = Arc::new(read.config);
        // Compiling and initialising filters is CPU work: run it on the builder thread
        // (in the runtime's context, for its timers), never on a worker serving requests.
        let build = {
            let (config, runtime, telemetry) =
                (config.clone(), self.runtime.clone(), self.telemetry.clone());
            let handle = tokio::runtime::Handle::current();
            let (done, built) = tokio::sync::oneshot::channel();
            let job: Build = Box::new(move || {
                let _ = done.send(handle.block_on(Router::build(&config, &runtime, &telemetry)));
            });
            let sent = match &self.builder {
                Some(tx) => tx.send(job).map_err(|e| e.0),
                None => Err(job),
            };
            if let Err(job) = sent {
                // Not started yet, or gone with a panic: a new thread takes the job.
                match builder() {
                    Ok(tx) => {
                        let _ = tx.send(job);
                        self.builder = Some(tx);
                    }
                    Err(e) => {
                        return self.refuse(format!(
                            "{}: cannot start a thread to build the config: {e}",
                            self.path.display()
                        ));
                    }
                }
            }
            built.await
        };
        let router = match build {
            Ok(Ok(router)) => router,
            Ok(Err(errors)) => return self.refuse(ConfigErrors(errors).to_string()),
            Err(_) => {
                // The job was dropped unanswered: the build panicked, taking the thread
                // with it; the next reload starts another.
                self.builder = None;
                return self.refuse(format!(
                    "{}: building the config failed: the build panicked",
                    self.path.display()
                ));
            }
        };
        self.proxy.swap(router);
        let needs_restart = self.fixed.changes(&config.raw, read.tls_files);
        for change in &needs_restart {
            tracing::warn!("{change}");
        }
        let needs_restart = (!needs_restart.is_empty()).then(|| needs_restart.join("; "));
        self.status.succeeded(
            Loaded {
                path: config.path.clone(),
                hash: read.hash.clone(),
                modified: read.modified,
                loaded_at: SystemTime::now(),
            },
            needs_restart,
        );
        tracing::info!(
            hash = %read.hash,
            took_ms = started.elapsed().as_millis() as u64,
            "config reloaded"
        );
    }

    /// Records a refused reload; the running config keeps serving.
    fn refuse(&self, message: String) {
        for line in message.lines() {
            tracing::error!("reload refused: {line}");
        }
        tracing::warn!("the running config keeps serving");
        self.status.failed(message);
    }

    /// Makes the watched set what `config` reads: watches new directories, drops old ones.
    fn watch(&mut self, config: &Config) {
        let files: HashSet<PathBuf> = inputs(config).iter().flat_map(|p| event_paths(p)).collect();
        let want: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .collect();
        self.watched.files = files;
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        for gone in self.watched.dirs.difference(&want) {
            let _ = watcher.unwatch(gone);
        }
        let mut dirs = BTreeSet::new();
        for dir in want {
            if self.watched.dirs.contains(&dir) {
                dirs.insert(dir);
                continue;
            }
            // Directories, not the files: an editor's rename replaces the file, and a
            // watch on the old file would see nothing after the first save.
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    dirs.insert(dir);
                }
                // Not kept: the next reload tries again.
                Err(e) => tracing::warn!(
                    dir = %dir.display(),
                    error = %e,
                    "cannot watch for changes; send SIGHUP to reload"
                ),
            }
        }
        self.watched.dirs = dirs;
    }
}

/// Resolves at `due`, or never.
async fn settle(due: Option<tokio::time::Instant>) {
    match due {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Resolves on the next `SIGHUP`, or never.
async fn hangup(signal: &mut Option<Signal>) {
    if let Some(s) = signal
        && s.recv().await.is_some()
    {
        return;
    }
    std::future::pending().await
}

/// A config as read for a reload, with what was hashed alongside it.
struct Read {
    config: Config,
    hash: String,
    modified: Option<SystemTime>,
    tls_files: u64,
}

impl Read {
    /// Hashes the files before the build reads them: a file that changes during the build
    /// then differs from this hash, and its event reloads again.
    fn of(config: Config) -> Read {
        Read {
            hash: fingerprint(&config),
            modified: modified(&config.path),
            tls_files: tls_files(&config.raw),
            config,
        }
    }
}

/// Every file a reload reads: the config itself and each filter component it names.
fn inputs(config: &Config) -> Vec<PathBuf> {
    std::iter::once(config.path.clone())
        .chain(
            config
                .raw
                .filters
                .values()
                .filter_map(|f| f.get_ref().wasm.clone()),
        )
        .collect()
}

/// The paths an event about `path` may carry: the file in its (absolute, symlink-free)
/// directory and, when the file is a symlink, its target. A Kubernetes ConfigMap is a
/// symlink whose target's directory is swapped; the old target's removal is the event.
fn event_paths(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    if let (Some(dir), Some(name)) = (abs.parent(), abs.file_name()) {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_owned());
        out.push(dir.join(name));
    }
    if let Ok(target) = std::fs::canonicalize(path)
        && !out.contains(&target)
    {
        out.push(target);
    }
    out
}

/// The files a reload reads, and the directories watched to see them change.
#[derive(Default)]
struct Watched {
    files: HashSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
}

impl Watched {
    /// Whether `event` may have changed a file a reload reads. Opening and reading files
    /// (weir's own reloads do both) are not changes; finishing a write is.
    fn is_relevant(&self, event: &Event) -> bool {
        let change = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        // An overflowed event queue may have dropped anything.
        event.need_rescan() || (change && event.paths.iter().any(|p| self.files.contains(p)))
    }
}

/// The settings weir bound at start, which a reload cannot change: the listener and its
/// TLS files, the admin listener, the state store and the wasm runtime.
struct Fixed {
    listen: Listen,
    admin: Option<Admin>,
    state: StateConfig,
    runtime: RuntimeConfig,
    log: crate::config::LogConfig,
    /// `[jobs]`, compared by value: an inline webhook secret that changed is a change.
    jobs: Option<crate::config::JobsConfig>,
    /// `[batch]`, as Debug text.
    batch: String,
    /// `[telemetry]`, compared by value: an inline secret that changed is a change.
    telemetry: crate::config::TelemetryConfig,
    tls_files: u64,
}

impl Fixed {
    fn of(config: &Config) -> Fixed {
        let raw = &config.raw;
        Fixed {
            listen: raw.listen.clone(),
            admin: raw.admin.clone(),
            state: raw.state.clone(),
            runtime: raw.runtime.clone(),
            log: raw.log.clone(),
            jobs: raw.jobs.clone(),
            batch: format!("{:?}", raw.batch),
            telemetry: raw.telemetry.clone(),
            tls_files: tls_files(raw),
        }
    }

    /// What `new` (whose listener TLS files hash to `tls_files`) changes in the settings
    /// bound at start, one sentence each.
    fn changes(&self, new: &RawConfig, tls_files: u64) -> Vec<String> {
        let path = |p: Option<&PathBuf>| {
            p.map_or_else(|| "(none)".to_owned(), |p| p.display().to_string())
        };
        let tls = |l: &Listen| {
            let t = l.tls.as_ref();
            [
                path(t.map(|t| &t.cert)),
                path(t.map(|t| &t.key)),
                path(t.and_then(|t| t.client_ca.as_ref())),
            ]
        };
        let admin = |a: &Option<Admin>| match a {
            None => [
                "(none)".to_owned(),
                String::new(),
                String::new(),
                String::new(),
            ],
            Some(a) => [
                a.addr.0.to_string(),
                a.recent_requests.to_string(),
                a.recent_body_bytes.0.to_string(),
                format!("{:?}", a.redact_headers),
            ],
        };
        let (old_tls, new_tls) = (tls(&self.listen), tls(&new.listen));
        let (old_admin, new_admin) = (admin(&self.admin), admin(&new.admin));
        let settings = [
            (
                "listen.addr",
                self.listen.addr.0.to_string(),
                new.listen.addr.0.to_string(),
            ),
            ("listen.tls.cert", old_tls[0].clone(), new_tls[0].clone()),
            ("listen.tls.key", old_tls[1].clone(), new_tls[1].clone()),
            (
                "listen.tls.client_ca",
                old_tls[2].clone(),
                new_tls[2].clone(),
            ),
            (
                "listen.max_header_bytes",
                self.listen.max_header_bytes.0.to_string(),
                new.listen.max_header_bytes.0.to_string(),
            ),
            (
                "listen.max_body_bytes",
                self.listen.max_body_bytes.0.to_string(),
                new.listen.max_body_bytes.0.to_string(),
            ),
            (
                "listen.header_read_timeout",
                format!("{:?}", self.listen.header_read_timeout.0),
                format!("{:?}", new.listen.header_read_timeout.0),
            ),
            (
                "listen.send_timeout",
                format!("{:?}", self.listen.send_timeout.0),
                format!("{:?}", new.listen.send_timeout.0),
            ),
            (
                "listen.body_read_timeout",
                format!("{:?}", self.listen.body_read_timeout.0),
                format!("{:?}", new.listen.body_read_timeout.0),
            ),
            (
                "listen.min_body_rate",
                self.listen.min_body_rate.0.to_string(),
                new.listen.min_body_rate.0.to_string(),
            ),
            (
                "listen.max_connections",
                self.listen.max_connections.to_string(),
                new.listen.max_connections.to_string(),
            ),
            (
                "listen.drain_timeout",
                format!("{:?}", self.listen.drain_timeout.0),
                format!("{:?}", new.listen.drain_timeout.0),
            ),
            (
                "listen.workers",
                self.listen.worker_count().to_string(),
                new.listen.worker_count().to_string(),
            ),
            ("admin.addr", old_admin[0].clone(), new_admin[0].clone()),
            (
                "admin.recent_requests",
                old_admin[1].clone(),
                new_admin[1].clone(),
            ),
            (
                "admin.recent_body_bytes",
                old_admin[2].clone(),
                new_admin[2].clone(),
            ),
            (
                "admin.redact_headers",
                old_admin[3].clone(),
                new_admin[3].clone(),
            ),
            (
                "state.backend",
                format!("{:?}", self.state.backend),
                format!("{:?}", new.state.backend),
            ),
            (
                "state.max_bytes",
                self.state.max_bytes.0.to_string(),
                new.state.max_bytes.0.to_string(),
            ),
            (
                "runtime.cache_dir",
                path(self.runtime.cache_dir.as_ref()),
                path(new.runtime.cache_dir.as_ref()),
            ),
            (
                "log.level",
                format!("{:?}", self.log.level),
                format!("{:?}", new.log.level),
            ),
            (
                "log.format",
                format!("{:?}", self.log.format),
                format!("{:?}", new.log.format),
            ),
        ];
        let mut out: Vec<String> = settings
            .into_iter()
            .filter(|(_, old, new)| old != new)
            .map(|(key, old, new)| {
                format!("{key} changed from {old} to {new}: restart weir to apply")
            })
            .collect();
        if self.jobs != new.jobs {
            // The journal and its workers are bound at start; routes' `async` reloads.
            out.push("[jobs] changed: restart weir to apply".to_owned());
        }
        if self.batch != format!("{:?}", new.batch) {
            out.push("[batch] changed: restart weir to apply".to_owned());
        }
        if self.telemetry != new.telemetry {
            // Never the values: the headers may hold secrets.
            out.push("[telemetry] changed: restart weir to apply".to_owned());
        }
        if self.state.redis != new.state.redis {
            // Never the values: the table may hold a password.
            out.push("[state.redis] changed: restart weir to apply".to_owned());
        }
        let token = |a: &Option<Admin>| a.as_ref().and_then(|a| a.token.clone());
        if token(&self.admin) != token(&new.admin) {
            // Never the value: it is a secret.
            out.push("admin.token changed: restart weir to apply".to_owned());
        }
        if old_tls == new_tls && self.tls_files != tls_files {
            out.push("the listener's TLS files changed on disk: restart weir to apply".to_owned());
        }
        out
    }
}

/// A hash of the listener's certificate, key and client CA files (0 without TLS).
fn tls_files(raw: &RawConfig) -> u64 {
    use std::hash::{Hash, Hasher};
    let Some(tls) = &raw.listen.tls else {
        return 0;
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in [Some(&tls.cert), Some(&tls.key), tls.client_ca.as_ref()]
        .into_iter()
        .flatten()
    {
        std::fs::read(p).unwrap_or_default().hash(&mut h);
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_kept_and_counted() {
        let registry = Registry::new();
        let loaded = Loaded {
            path: "weir.toml".into(),
            hash: "abc".into(),
            modified: None,
            loaded_at: SystemTime::UNIX_EPOCH,
        };
        let status = ReloadStatus::new(loaded.clone(), &registry).unwrap();
        status.failed("weir.toml:3:1: bad".into());
        status.succeeded(loaded, None);
        let snap = status.snapshot();
        assert_eq!(snap["hash"], "abc");
        assert_eq!(snap["last_reload_error"]["message"], "weir.toml:3:1: bad");
        assert_eq!(status.reloads.with_label_values(&["ok"]).get(), 1);
        assert_eq!(status.reloads.with_label_values(&["error"]).get(), 1);
    }

    fn parse(text: &str) -> Config {
        let base = "[upstreams.api]\nurl = \"http://127.0.0.1:9\"\n\n[[routes]]\nname = \"r\"\nupstream = \"api\"\n";
        Config::parse(Path::new("/etc/weir/weir.toml"), &format!("{text}\n{base}")).unwrap()
    }

    #[test]
    fn settings_bound_at_start_are_reported_not_applied() {
        let start =
            parse("[listen]\naddr = \"127.0.0.1:8080\"\n[admin]\naddr = \"127.0.0.1:9901\"");
        let fixed = Fixed::of(&start);
        assert!(fixed.changes(&start.raw, tls_files(&start.raw)).is_empty());
        let new = parse(
            "[listen]\naddr = \"127.0.0.1:8081\"\ndrain_timeout = \"5s\"\n[admin]\naddr = \"127.0.0.1:9901\"\ntoken = \"s3cret\"\n[state]\nmax_bytes = \"1MiB\"",
        );
        assert_eq!(
            fixed.changes(&new.raw, 0),
            [
                "listen.addr changed from 127.0.0.1:8080 to 127.0.0.1:8081: restart weir to apply",
                "listen.drain_timeout changed from 30s to 5s: restart weir to apply",
                "state.max_bytes changed from 67108864 to 1048576: restart weir to apply",
                "admin.token changed: restart weir to apply",
            ]
        );
        let no_admin = parse("[listen]\naddr = \"127.0.0.1:8080\"");
        assert_eq!(
            fixed.changes(&no_admin.raw, 0)[0],
            "admin.addr changed from 127.0.0.1:9901 to (none): restart weir to apply"
        );
        let traced = parse(
            "[listen]\naddr = \"127.0.0.1:8080\"\n[admin]\naddr = \"127.0.0.1:9901\"\n[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\nheaders = { x-key = \"t0ps3cret\" }",
        );
        let changes = fixed.changes(&traced.raw, 0);
        assert_eq!(changes, ["[telemetry] changed: restart weir to apply"]);
        // A header's value is never shown, and a new inline value is a change too.
        assert!(changes.iter().all(|c| !c.contains("t0ps3cret")));
        let rekeyed = parse(
            "[listen]\naddr = \"127.0.0.1:8080\"\n[admin]\naddr = \"127.0.0.1:9901\"\n[telemetry.otlp]\nendpoint = \"http://127.0.0.1:4318\"\nheaders = { x-key = \"n3wsecret\" }",
        );
        let changes = Fixed::of(&traced).changes(&rekeyed.raw, 0);
        assert_eq!(changes, ["[telemetry] changed: restart weir to apply"]);
        assert!(Fixed::of(&traced).changes(&traced.raw, 0).is_empty());
        // The same for an inline webhook secret in `[jobs]`.
        let jobs = |secret: &str| {
            parse(&format!(
                "[listen]\naddr = \"127.0.0.1:8080\"\n[admin]\naddr = \"127.0.0.1:9901\"\n[jobs]\njournal = \"/var/lib/weir/jobs.redb\"\n[jobs.webhooks]\norigins = [\"https://hooks.example.com\"]\nsecret = \"{secret}\""
            ))
        };
        let (old, new) = (
            jobs("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            jobs("whsec_c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"),
        );
        let changes = Fixed::of(&old).changes(&new.raw, 0);
        assert_eq!(changes, ["[jobs] changed: restart weir to apply"]);
        assert!(Fixed::of(&old).changes(&old.raw, 0).is_empty());
    }

    #[test]
    fn only_changes_to_watched_files_are_relevant() {
        use notify::event::{CreateKind, DataChange, ModifyKind, RenameMode};
        let watched = Watched {
            files: [PathBuf::from("/etc/weir/weir.toml")].into(),
            dirs: [PathBuf::from("/etc/weir")].into(),
        };
        let event = |kind, path: &str| Event::new(kind).add_path(PathBuf::from(path));
        let config = "/etc/weir/weir.toml";
        // An editor's save: a temporary file renamed over the config.
        assert!(!watched.is_relevant(&event(
            EventKind::Create(CreateKind::File),
            "/etc/weir/.weir.toml.swp"
        )));
        assert!(
            watched.is_relevant(
                &event(
                    EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
                    "/etc/weir/.weir.toml.tmp"
                )
                .add_path(PathBuf::from(config))
            )
        );
        assert!(watched.is_relevant(&event(
            EventKind::Modify(ModifyKind::Data(DataChange::Any)),
            config
        )));
        assert!(watched.is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            config
        )));
        // weir reading the file for a reload is not a change.
        assert!(!watched.is_relevant(&event(
            EventKind::Access(AccessKind::Open(AccessMode::Any)),
            config
        )));
        assert!(!watched.is_relevant(&event(
            EventKind::Access(AccessKind::Close(AccessMode::Read)),
            config
        )));
        // A dropped event queue may hide anything.
        assert!(
            watched
                .is_relevant(&Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan))
        );
    }
}
