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

use crate::config::{Config, ConfigErrors, RawConfig};
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
            Opts::new("weir_reloads_total", "Config reloads, by result (ok or error)"),
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

/// `time` as RFC 3339 UTC with milliseconds, e.g. `2026-11-22T04:15:01.123Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let d = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_320_901_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:15:01.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

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
}
