//! The TOML configuration: parsing, validation and error locations.
//!
//! Parsing happens in two steps. Serde turns the text into [`RawConfig`], rejecting unknown
//! keys and malformed values (durations, sizes, addresses, URLs) at their line and column.
//! [`Config::validate`] then checks what one value cannot know alone: that every route names
//! an upstream and filters that exist. Both steps report [`ConfigError`]s that name the file,
//! line and column, so `weir check` can print every problem at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use toml::Spanned;

use crate::builtin;

/// Every problem found in one config file.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", .pos.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    /// The file, as given on the command line.
    pub file: PathBuf,
    /// 1-based line and column, when the problem has a place in the file.
    pub pos: Option<(usize, usize)>,
    /// What is wrong and what was expected.
    pub message: String,
}

/// A duration written as `"250ms"`, `"2s"`, `"1m"` or `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HumanDuration(pub Duration);

impl TryFrom<String> for HumanDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid duration {s:?}: expected a number and a unit, like \"250ms\", \"2s\", \"1m\" or \"1h\""
            )
        };
        let t = s.trim();
        let split = t
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(bad()),
        };
        Duration::try_from_secs_f64(secs)
            .map(HumanDuration)
            .map_err(|_| bad())
    }
}

/// A size in bytes: an integer, or a string such as `"64KiB"`, `"10MiB"`, `"1GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 65536, \"64KiB\", \"10MiB\" or \"1GiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                parse_size(s).map(ByteSize).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number and a unit such as \"64KiB\", \"10MiB\" or \"1GiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1 << 10,
        "MiB" | "MB" | "M" => 1 << 20,
        "GiB" | "GB" | "G" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?}; use B, KiB, MiB or GiB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// A socket address such as `"127.0.0.1:8080"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ListenAddr(pub SocketAddr);

impl TryFrom<String> for ListenAddr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse().map(ListenAddr).map_err(|_| {
            format!(
                "invalid address {s:?}: expected an IP address and a port, like \"127.0.0.1:8080\""
            )
        })
    }
}

/// An upstream origin: `http://host[:port]` or `https://host[:port]`, nothing after it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Origin {
    /// `http` or `https`.
    pub scheme: http::uri::Scheme,
    /// `host[:port]`.
    pub authority: http::uri::Authority,
}

impl Origin {
    /// Whether connections use TLS.
    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

impl TryFrom<String> for Origin {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let uri: http::Uri = s.parse().map_err(|e| format!("invalid url {s:?}: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some("http") => http::uri::Scheme::HTTP,
            Some("https") => http::uri::Scheme::HTTPS,
            _ => {
                return Err(format!(
                    "invalid url {s:?}: the scheme must be http or https"
                ));
            }
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("invalid url {s:?}: no host"))?;
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(format!(
                "invalid url {s:?}: an upstream is an origin (scheme, host, port) without a path; use a route's `strip_prefix` and paths instead"
            ));
        }
        if authority.as_str().contains('@') {
            return Err(format!(
                "invalid url {s:?}: credentials in the url are not allowed; use the `headers` or `auth` filter"
            ));
        }
        Ok(Origin { scheme, authority })
    }
}

/// What a filter does when its guest traps, times out or runs out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Answer 503 with a JSON body naming the filter.
    #[default]
    FailClosed,
    /// Skip the filter and go on.
    FailOpen,
}

/// The file as written, before cross-checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The proxy listener.
    pub listen: Listen,
    /// The admin listener.
    #[serde(default)]
    pub admin: Option<Admin>,
    /// The state backend.
    #[serde(default)]
    pub state: StateConfig,
    /// The wasm runtime's process-wide settings.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Logging: level and format (applied at start; `RUST_LOG` and `--log-format` win).
    #[serde(default)]
    pub log: LogConfig,
    /// Traces: spans exported over OTLP; off when absent.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Upstreams by name.
    #[serde(default)]
    pub upstreams: BTreeMap<String, Spanned<UpstreamConfig>>,
    /// Filters by name: custom ones, or settings for built-in ones.
    #[serde(default)]
    pub filters: BTreeMap<String, Spanned<FilterConfig>>,
    /// Routes, tried in order.
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// Async requests: the journal and its bounds (see [`crate::jobs`]).
    #[serde(default)]
    pub jobs: Option<JobsConfig>,
    /// Batch requests at [`crate::batch::PATH`]; off when absent.
    #[serde(default)]
    pub batch: Option<BatchConfig>,
}

/// `[batch]`: many calls in one client request, each routed as if sent alone (see
/// [`crate::batch`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// The most calls in one batch; more get 400.
    #[serde(default = "defaults::batch_max_items")]
    pub max_items: usize,
    /// The most bytes of the batch's JSON body; more get 413.
    #[serde(default = "defaults::batch_max_bytes")]
    pub max_bytes: ByteSize,
    /// How many calls of one batch run at once.
    #[serde(default = "defaults::batch_concurrency")]
    pub concurrency: usize,
}

/// `[jobs]`: where accepted async requests are kept, and how many.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsConfig {
    /// Where jobs are kept: `journal` (the embedded redb file, one process) or `redis`
    /// (Redis Streams on the `[state.redis]` server, shared by a fleet). The default
    /// follows `[state] backend`.
    #[serde(default)]
    pub store: Option<JobStoreKind>,
    /// The journal file (redb), relative to the config file, with `store = "journal"`.
    /// Created when missing; kept across restarts and reloads.
    #[serde(default)]
    pub journal: Option<PathBuf>,
    /// With `store = "redis"`: how long a job (or a webhook) claimed by a process that
    /// stopped answering waits before another process takes it over. A live process
    /// renews its claims every third of this.
    #[serde(default = "defaults::jobs_visibility_timeout")]
    pub visibility_timeout: HumanDuration,
    /// The most jobs queued or running at once; more get 503 `queue_full`.
    #[serde(default = "defaults::jobs_max_pending")]
    pub max_pending: u64,
    /// The most request bytes (headers and bodies) of queued or running jobs.
    #[serde(default = "defaults::jobs_max_pending_bytes")]
    pub max_pending_bytes: ByteSize,
    /// How long a finished job stays readable at its URL before it is purged.
    #[serde(default = "defaults::jobs_retention")]
    pub retention: HumanDuration,
    /// How many jobs run at once.
    #[serde(default = "defaults::jobs_workers")]
    pub workers: usize,
    /// Callbacks: where they may go and how they are signed; none are allowed without it.
    #[serde(default)]
    pub webhooks: Option<WebhooksConfig>,
}

/// `[jobs] store`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStoreKind {
    /// The embedded redb journal.
    Journal,
    /// Redis Streams, through `[state.redis]`.
    Redis,
}

impl JobsConfig {
    /// Where jobs are kept, the default applied.
    pub fn store_kind(&self, state: &StateConfig) -> JobStoreKind {
        self.store.unwrap_or(match state.backend {
            StateBackendKind::Redis => JobStoreKind::Redis,
            StateBackendKind::Memory => JobStoreKind::Journal,
        })
    }
}

/// `[jobs.webhooks]`: signed deliveries of a job's result to a client's callback URL.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The origins a callback URL may point at; any other is refused with 400.
    pub origins: Vec<Origin>,
    /// The signing secret, `whsec_` and base64 (Standard Webhooks).
    pub secret: Secret,
    /// The waits between delivery attempts; after the last one fails, the job is dead.
    #[serde(default = "defaults::webhook_schedule")]
    pub schedule: Vec<HumanDuration>,
    /// How long one delivery attempt may take.
    #[serde(default = "defaults::webhook_timeout")]
    pub timeout: HumanDuration,
}

/// `[[routes]] async = { mode = "prefer" | "always" }`.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AsyncConfig {
    /// When a request becomes a job.
    #[serde(default)]
    pub mode: AsyncMode,
}

/// When a request to an async route becomes a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AsyncMode {
    /// Only with `Prefer: respond-async` (RFC 7240); others are served synchronously.
    #[default]
    Prefer,
    /// Every request.
    Always,
}

/// `[listen]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Where to accept client connections. Port 0 picks a free port.
    pub addr: ListenAddr,
    /// TLS for clients; plain HTTP (with h2c) when absent.
    #[serde(default)]
    pub tls: Option<ListenTls>,
    /// The largest request head (request line and headers) accepted; larger gets 431.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// The largest request body accepted; larger gets 413. Also the most weir buffers.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// How long a connection may wait for a request head: from its accept (the TLS
    /// handshake included) and, on a keep-alive connection, from the end of each
    /// response. A connection still without a head is closed soon after: a check runs
    /// every quarter of the timeout, and at least once a second. On HTTP/2 it is the wait
    /// for the next stream: a connection with no stream in hand for this long is closed.
    #[serde(default = "defaults::header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// How long a connection's socket may take none of the bytes weir is sending it (a
    /// response the client does not read); one that takes none for longer is closed,
    /// which frees the upstream connection its response holds. A client still reading,
    /// at more than about a third of weir's send buffer per timeout, is not closed by it.
    /// Checked as `header_read_timeout` is.
    #[serde(default = "defaults::send_timeout")]
    pub send_timeout: HumanDuration,
    /// How long weir waits for the next piece of a request body; a client that stalls
    /// longer gets 408. The clock runs only while weir is waiting for the client.
    #[serde(default = "defaults::body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    /// The least a request body must average, in bytes per second of waiting for it,
    /// once `body_read_timeout` of waiting has passed; a slower client gets 408. `0`
    /// turns the check off.
    #[serde(default = "defaults::min_body_rate")]
    pub min_body_rate: ByteSize,
    /// The most client connections open at once; one more is answered 503
    /// `too_many_connections` (plain HTTP) or closed (TLS) at once.
    #[serde(default = "defaults::listen_max_connections")]
    pub max_connections: usize,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "defaults::drain_timeout")]
    pub drain_timeout: HumanDuration,
    /// How many threads serve client connections, each with its own event loop; by
    /// default one per CPU weir may run on.
    #[serde(default)]
    pub workers: Option<usize>,
}

/// The most `[listen] workers` a config may ask for.
pub const MAX_WORKERS: usize = 1024;

impl Listen {
    /// `workers`, or one per CPU weir may run on.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(crate::workers::default_count)
    }
}

/// `[listen] tls`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenTls {
    /// PEM certificate chain, relative to the config file.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where the admin endpoints listen.
    #[serde(default = "defaults::admin_addr")]
    pub addr: ListenAddr,
    /// When set, every admin endpoint requires `Authorization: Bearer <token>`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// How many recent requests `/requests` keeps.
    #[serde(default = "defaults::recent_requests")]
    pub recent_requests: usize,
    /// The most body bytes kept per recorded request (a longer body cannot be replayed).
    #[serde(default = "defaults::recent_body_bytes")]
    pub recent_body_bytes: ByteSize,
    /// More headers to redact in `/requests`, besides Authorization, Cookie, Set-Cookie,
    /// Proxy-Authorization and X-API-Key.
    #[serde(default)]
    pub redact_headers: Vec<String>,
}

/// A secret: written inline, or read from an environment variable or a file at load.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(
    untagged,
    expecting = "a string, { env = \"NAME\" } or { file = \"path\" }"
)]
pub enum Secret {
    /// The value itself.
    Inline(String),
    /// The value of an environment variable.
    Env {
        /// The variable's name.
        env: String,
    },
    /// The contents of a file (trailing newlines removed).
    File {
        /// The file, relative to the config file.
        file: PathBuf,
    },
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never print the value itself.
            Secret::Inline(_) => f.write_str("Secret(inline)"),
            Secret::Env { env } => write!(f, "Secret(env {env})"),
            Secret::File { file } => write!(f, "Secret(file {})", file.display()),
        }
    }
}

impl Secret {
    /// The value; the error says which variable or file is missing.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Secret::Inline(v) => Ok(v.clone()),
            Secret::Env { env } => {
                std::env::var(env).map_err(|_| format!("environment variable {env} is not set"))
            }
            Secret::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
                .map_err(|e| format!("cannot read {}: {e}", file.display())),
        }
    }
}

/// `[state]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `memory` (the default) or `redis`.
    #[serde(default)]
    pub backend: StateBackendKind,
    /// The most memory the memory backend may hold (keys and values); a full store
    /// evicts by LRU.
    #[serde(default = "defaults::state_max_bytes")]
    pub max_bytes: ByteSize,
    /// `[state.redis]`: the server or cluster, with `backend = "redis"`.
    #[serde(default)]
    pub redis: Option<RedisConfig>,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackendKind::Memory,
            max_bytes: defaults::state_max_bytes(),
            redis: None,
        }
    }
}

/// Which state backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StateBackendKind {
    /// An in-process map with TTLs.
    #[default]
    Memory,
    /// A Redis server or Redis Cluster, shared by several weir processes.
    Redis,
}

/// `[state.redis]`: where the Redis state backend connects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server: `redis://host:6379/0`, or `rediss://` for TLS (verified).
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster: some of its nodes, as `redis://` or `rediss://` URLs.
    #[serde(default)]
    pub cluster: Option<Vec<String>>,
    /// The ACL user, if not `default`.
    #[serde(default)]
    pub username: Option<String>,
    /// The password, best from `{ env = "…" }` or `{ file = "…" }`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// Put before every key, so deployments sharing a server do not share state.
    #[serde(default = "defaults::redis_prefix")]
    pub prefix: String,
    /// The longest one operation may take, connecting included; then it fails as
    /// unavailable.
    #[serde(default = "defaults::redis_timeout")]
    pub timeout: HumanDuration,
    /// With `rediss://`: trust only this PEM CA bundle instead of the public web roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
}

/// `[log]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter directive: `"info"`, `"warn"`, `"warn,weir=debug"`.
    #[serde(default)]
    pub level: Option<String>,
    /// `"pretty"` or `"json"`.
    #[serde(default)]
    pub format: Option<LogFormat>,
}

/// `[telemetry]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `[telemetry.otlp]`: export each request's spans over OTLP/HTTP; off when absent.
    #[serde(default)]
    pub otlp: Option<OtlpConfig>,
}

/// `[telemetry.otlp]`: where and how spans are exported (see [`crate::otlp`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP traces URL; one without a path gets `/v1/traces`.
    pub endpoint: OtlpEndpoint,
    /// Headers sent with every export, such as an API key; values may be secrets.
    #[serde(default)]
    pub headers: BTreeMap<String, Secret>,
    /// The `service.name` resource attribute.
    #[serde(default = "defaults::otlp_service_name")]
    pub service_name: String,
    /// The share of new traces exported, from 0 to 1. A request that continues a trace
    /// follows its `traceparent`'s sampled flag instead.
    #[serde(default = "defaults::otlp_sample_ratio")]
    pub sample_ratio: f64,
    /// TLS settings for an https collector: a private CA, a client certificate.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// An OTLP/HTTP URL: `http://` or `https://`, a host, a path (`/v1/traces` when none).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct OtlpEndpoint {
    /// The collector's origin, which exports are sent to.
    pub origin: Origin,
    /// The path and query.
    pub path: String,
}

impl fmt::Display for OtlpEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.origin, self.path)
    }
}

impl TryFrom<String> for OtlpEndpoint {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let key = "telemetry.otlp.endpoint";
        let expected = "expected http:// or https://, a host and a path, like \"http://127.0.0.1:4318/v1/traces\"";
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("{key}: invalid url {s:?}: {e}; {expected}"))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(format!("{key}: invalid url {s:?}: {expected}"));
        };
        if authority.as_str().contains('@') {
            // Not repeated: it holds a credential.
            return Err(format!(
                "{key}: credentials in the url are not allowed; send them in `headers`, from {{ env = \"…\" }} or {{ file = \"…\" }}"
            ));
        }
        if !matches!(scheme, "http" | "https") {
            return Err(format!(
                "{key}: invalid url {s:?}: the scheme must be http or https (weir exports OTLP over HTTP, the collector's port 4318, not gRPC)"
            ));
        }
        let origin = Origin::try_from(format!("{scheme}://{authority}"))
            .map_err(|e| format!("{key}: {e}"))?;
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("" | "/") => "/v1/traces".to_owned(),
            Some(p) => p.to_owned(),
        };
        Ok(OtlpEndpoint { origin, path })
    }
}

/// `[runtime]`: process-wide wasm settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Where compiled components are cached; defaults to `$XDG_CACHE_HOME/weir` or
    /// `~/.cache/weir`.
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The origin, e.g. `https://api.example.com`.
    pub url: Origin,
    /// How long a TCP connect and TLS handshake may take.
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// The most requests in flight to this upstream; more wait, then get 503.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: u32,
    /// How long weir waits for the next piece of a response body; then the body fails
    /// (the client's connection is cut, or a filter that reads it gets 502).
    #[serde(default = "defaults::upstream_read_timeout")]
    pub read_timeout: HumanDuration,
    /// TLS settings for an https upstream.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
}

/// `[upstreams.NAME] tls`, and `[telemetry.otlp] tls`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA bundle to trust instead of the public roots.
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain to present.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key for `client_cert`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

/// `[filters.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The component, relative to the config file. Absent for a built-in filter.
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    /// What to do when the guest fails.
    #[serde(default)]
    pub on_error: OnError,
    /// Config for every route that uses the filter; a route's own config is merged on top.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// The most linear memory one instance may use.
    #[serde(default = "defaults::max_memory")]
    pub max_memory: ByteSize,
    /// The most time one call into the filter may take.
    #[serde(default = "defaults::max_call_time")]
    pub max_call_time: HumanDuration,
    /// The most instances per route (concurrent calls); more calls wait for one.
    #[serde(default = "defaults::max_instances")]
    pub max_instances: u32,
    /// Instances created and initialised at load, before traffic.
    #[serde(default = "defaults::min_instances")]
    pub min_instances: u32,
    /// The upstreams this filter may call through `weir:filter/outbound` (e.g. an OAuth2
    /// token endpoint); none by default.
    #[serde(default)]
    pub outbound: Vec<String>,
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            wasm: None,
            on_error: OnError::default(),
            config: None,
            max_memory: defaults::max_memory(),
            max_call_time: defaults::max_call_time(),
            outbound: Vec::new(),
            max_instances: defaults::max_instances(),
            min_instances: defaults::min_instances(),
        }
    }
}

/// `[[routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A unique name, used in logs, metrics and errors.
    pub name: String,
    /// Which requests this route takes; everything when absent.
    #[serde(default, rename = "match")]
    pub matcher: RouteMatch,
    /// The upstream's name; a route has this or `fanout`.
    #[serde(default)]
    pub upstream: Option<Spanned<String>>,
    /// Several upstreams, each sent the request through the chain as its own call.
    #[serde(default)]
    pub fanout: Option<FanoutConfig>,
    /// Remove the matched `path_prefix` before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// What to do with a path that has an encoded slash, a backslash or an encoded dot
    /// segment (see [`crate::path`]): `"reject"` (400 `bad_path`) unless set to `"keep"`.
    #[serde(default)]
    pub escaped_paths: crate::path::EscapedPaths,
    /// The deadline for the whole request, retries included.
    #[serde(default = "defaults::route_timeout")]
    pub timeout: HumanDuration,
    /// The filter chain, in order.
    #[serde(default)]
    pub filters: Vec<Spanned<FilterUse>>,
    /// Content codings on this route; none when absent (bodies pass as they are).
    #[serde(default)]
    pub compression: Option<Compression>,
    /// Async requests on this route (needs `[jobs]`); synchronous only when absent.
    #[serde(default, rename = "async")]
    pub async_jobs: Option<AsyncConfig>,
    /// Read each request's whole body (up to `max_body_bytes`) before the chain runs and
    /// an upstream connection is taken, as nginx's `proxy_request_buffering`: a client
    /// that sends its body slowly then never holds an upstream connection. Off by
    /// default: bodies stream to the upstream as they come.
    #[serde(default)]
    pub buffer_request: bool,
}

/// `[[routes]] fanout = { targets = ["a", "b"], mode = "all" }` (see [`crate::fanout`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FanoutConfig {
    /// The upstreams' names; the first is the primary.
    pub targets: Vec<Spanned<String>>,
    /// What the client gets.
    #[serde(default)]
    pub mode: FanoutMode,
}

/// What a fan-out route answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FanoutMode {
    /// Every target, bounded by the route's deadline: 200 with a JSON summary.
    #[default]
    All,
    /// The first target's response; the others are mirrored in the background.
    Primary,
    /// 202 at once: a job runs every target, and its webhook fires when all are final.
    Async,
}

/// The most targets one fan-out route may name.
pub const MAX_FANOUT_TARGETS: usize = 1000;

/// `[[routes]] compression = { request = "gzip" | "zstd" | "br", response = true }`:
/// content codings done by the host, streamed (see [`crate::compress`]).
///
/// - `request`: encode request bodies sent upstream with this coding and set
///   `Content-Encoding`, for upstreams configured to accept it. An empty body, or one
///   that already has a `Content-Encoding`, is sent as it is. weir never decodes request
///   bodies: filters that read them see what the client sent.
/// - `response` (default `false`): weir asks the upstream for `zstd, br, gzip`. When a
///   filter reads response bodies, weir decodes the body for it first; more than
///   `max_body_bytes` of decoded bytes is refused with 502 `response_too_large` (a
///   decompression bomb never expands in memory). Towards the client weir encodes to the
///   best coding of its `Accept-Encoding` (q-values and `*` honoured; no header, or only
///   `identity`, gets identity), dropping `Content-Length`, weakening a strong `ETag` and
///   adding `Vary: Accept-Encoding`. A body already in a coding the client accepts passes
///   untouched. Partial (206) responses and `Cache-Control: no-transform` are left alone.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compression {
    /// The coding for request bodies sent upstream; none by default.
    #[serde(default)]
    pub request: Option<crate::compress::Coding>,
    /// Negotiate response codings with the upstream and the client.
    #[serde(default)]
    pub response: bool,
}

/// `[[routes]] match`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// The request target's authority (HTTP/2 `:authority`, an absolute-form target), else
    /// `Host`, without port; `*.example.com` matches subdomains.
    #[serde(default)]
    pub host: Option<String>,
    /// The path must start with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The method must be one of these.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Each header must be present with exactly this value.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One entry of a route's `filters`: `"name"` or `{ use = "name", config = { … } }`.
#[derive(Debug, Clone)]
pub struct FilterUse {
    /// The filter's name.
    pub name: String,
    /// This route's config for it, merged over the filter's own.
    pub config: Option<serde_json::Value>,
}

impl<'de> Deserialize<'de> for FilterUse {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(rename = "use")]
            name: String,
            #[serde(default)]
            config: Option<serde_json::Value>,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FilterUse;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a filter name, or a table { use = \"name\", config = { … } }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<FilterUse, E> {
                Ok(FilterUse {
                    name: s.to_owned(),
                    config: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FilterUse, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(FilterUse {
                    name: t.name,
                    config: t.config,
                })
            }
        }
        d.deserialize_any(V)
    }
}

pub(crate) mod defaults {
    use super::{ByteSize, HumanDuration, ListenAddr};
    use std::time::Duration;

    pub fn max_header_bytes() -> ByteSize {
        ByteSize(64 << 10)
    }
    pub fn max_body_bytes() -> ByteSize {
        ByteSize(10 << 20)
    }
    pub fn header_read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn send_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn body_read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
    pub fn min_body_rate() -> ByteSize {
        ByteSize(240)
    }
    pub fn upstream_read_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(60))
    }
    pub fn listen_max_connections() -> usize {
        4096
    }
    pub fn drain_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn batch_max_items() -> usize {
        100
    }
    pub fn batch_max_bytes() -> ByteSize {
        ByteSize(10 << 20)
    }
    pub fn batch_concurrency() -> usize {
        16
    }
    pub fn redis_prefix() -> String {
        "weir:".to_owned()
    }
    pub fn redis_timeout() -> HumanDuration {
        HumanDuration(Duration::from_millis(250))
    }
    pub fn state_max_bytes() -> ByteSize {
        ByteSize(64 << 20)
    }
    pub fn connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    pub fn max_connections() -> u32 {
        100
    }
    pub fn max_memory() -> ByteSize {
        ByteSize(64 << 20)
    }
    pub fn max_call_time() -> HumanDuration {
        HumanDuration(Duration::from_millis(100))
    }
    pub fn max_instances() -> u32 {
        64
    }
    pub fn min_instances() -> u32 {
        2
    }
    pub fn admin_addr() -> ListenAddr {
        ListenAddr(std::net::SocketAddr::from(([127, 0, 0, 1], 9901)))
    }
    pub fn recent_requests() -> usize {
        1000
    }
    pub fn recent_body_bytes() -> ByteSize {
        ByteSize(64 << 10)
    }
    pub fn route_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn jobs_max_pending() -> u64 {
        10_000
    }
    pub fn jobs_max_pending_bytes() -> ByteSize {
        ByteSize(256 << 20)
    }
    pub fn jobs_retention() -> HumanDuration {
        HumanDuration(Duration::from_secs(24 * 3600))
    }
    pub fn jobs_visibility_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    pub fn jobs_workers() -> usize {
        16
    }
    pub fn webhook_schedule() -> Vec<HumanDuration> {
        [5, 30, 120, 600, 1800, 7200]
            .map(|s| HumanDuration(Duration::from_secs(s)))
            .to_vec()
    }
    pub fn otlp_service_name() -> String {
        "weir".to_owned()
    }
    pub fn otlp_sample_ratio() -> f64 {
        1.0
    }
    pub fn webhook_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(10))
    }
}

/// The largest memory cap a filter may ask for; the pooling allocator reserves this much
/// address space per memory slot.
pub const MAX_FILTER_MEMORY: u64 = 1 << 30;

/// A validated config: every name resolves, every path is absolute.
#[derive(Debug)]
pub struct Config {
    /// The file it came from.
    pub path: PathBuf,
    /// The file's text, to place later errors.
    pub text: String,
    /// The parsed file, with paths made absolute.
    pub raw: RawConfig,
}

/// Where a filter's component comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FilterSource {
    /// A component compiled into the weir binary.
    Builtin(&'static str),
    /// A `.wasm` file.
    File(PathBuf),
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_owned(),
                pos: None,
                message: format!("cannot read config: {e}"),
            }])
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates `text`, which came from `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
        let at = |span: Option<std::ops::Range<usize>>, message: String| ConfigError {
            file: path.to_owned(),
            pos: span.map(|s| line_col(text, s.start)),
            message,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let message = e.message().trim();
            // A missing top-level table has no place in the file (toml gives an empty span
            // at its start), and serde calls it a field.
            if e.span() == Some(0..0)
                && let Some(name) = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.strip_suffix('`'))
            {
                return ConfigErrors(vec![at(None, format!("missing required table [{name}]"))]);
            }
            ConfigErrors(vec![at(e.span(), message.to_owned())])
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut errors = Vec::new();
        let raw = validate(raw, base, text, &mut |span, msg| {
            errors.push(at(Some(span), msg))
        });
        // Report in file order, however the checks are grouped.
        errors.sort_by_key(|e| e.pos);
        if errors.is_empty() {
            Ok(Config {
                path: path.to_owned(),
                text: text.to_owned(),
                raw,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// An error about this file, placed at `span` when known.
    pub fn error_at(&self, span: Option<std::ops::Range<usize>>, message: String) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            pos: span.map(|s| line_col(&self.text, s.start)),
            message,
        }
    }

    /// The byte span of the setting at `path`, such as `["listen", "tls", "cert"]` or
    /// `["routes", "0", "name"]` (an index for an array element), to place an error found
    /// after parsing: the key's span, or the element's. `None` if the file has no such key.
    pub fn key_span(&self, path: &[&str]) -> Option<std::ops::Range<usize>> {
        key_span(&self.text, path)
    }

    /// Where the named filter's component comes from.
    pub fn filter_source(&self, name: &str) -> FilterSource {
        match self
            .raw
            .filters
            .get(name)
            .and_then(|f| f.get_ref().wasm.clone())
        {
            Some(path) => FilterSource::File(path),
            None => FilterSource::Builtin(
                builtin::lookup(name)
                    .map(|b| b.name)
                    .expect("validate() checked that filters without wasm are built in"),
            ),
        }
    }

    /// The settings of the named filter: its `[filters.NAME]` table, or the defaults.
    pub fn filter_settings(&self, name: &str) -> FilterConfig {
        self.raw
            .filters
            .get(name)
            .map(|f| f.get_ref().clone())
            .unwrap_or_default()
    }
}

/// Checks `[state]`: a Redis backend needs exactly one of `url` and `cluster`, with
/// `redis://` or `rediss://` URLs that hold no password.
fn validate_state(
    state: &mut StateConfig,
    abs: &dyn Fn(&mut PathBuf),
    err: &mut dyn FnMut(&[&str], String),
) {
    let Some(redis) = &mut state.redis else {
        if state.backend == StateBackendKind::Redis {
            err(
                &["state", "backend"],
                "state.backend = \"redis\" needs a [state.redis] table with `url` or `cluster`"
                    .to_owned(),
            );
        }
        return;
    };
    if state.backend != StateBackendKind::Redis {
        err(
            &["state", "redis"],
            "[state.redis] is set but state.backend is not \"redis\"".to_owned(),
        );
    }
    let urls: Vec<(&str, &String)> = match (&redis.url, &redis.cluster) {
        (Some(url), None) => vec![("url", url)],
        (None, Some(nodes)) if !nodes.is_empty() => nodes.iter().map(|n| ("cluster", n)).collect(),
        (None, Some(_)) => {
            err(
                &["state", "redis", "cluster"],
                "state.redis.cluster lists no nodes".to_owned(),
            );
            Vec::new()
        }
        (None, None) => {
            err(
                &["state", "redis"],
                "[state.redis] needs `url` (one server) or `cluster` (its nodes)".to_owned(),
            );
            Vec::new()
        }
        (Some(_), Some(_)) => {
            err(
                &["state", "redis", "cluster"],
                "state.redis: set `url` (one server) or `cluster` (its nodes), not both".to_owned(),
            );
            Vec::new()
        }
    };
    for (key, url) in urls {
        if let Err(e) = check_redis_url(url) {
            // A URL with credentials is not repeated: it may hold a password.
            let shown = if url.contains('@') {
                String::new()
            } else {
                format!("{url:?}: ")
            };
            err(
                &["state", "redis", key],
                format!("state.redis.{key}: {shown}{e}"),
            );
        }
    }
    if redis.timeout.0.is_zero() {
        err(
            &["state", "redis", "timeout"],
            "state.redis.timeout must be more than zero".to_owned(),
        );
    }
    if let Some(Secret::File { file }) = &mut redis.password {
        abs(file);
    }
    if let Some(Err(e)) = redis.password.as_ref().map(Secret::resolve) {
        err(
            &["state", "redis", "password"],
            format!("state.redis.password: {e}"),
        );
    }
    if let Some(ca) = &mut redis.ca {
        abs(ca);
    }
}

/// Checks `[telemetry.otlp]`: header names and values (each secret resolved once, its
/// value never repeated), the service name and the sample ratio.
fn validate_otlp(
    otlp: &mut OtlpConfig,
    abs: &dyn Fn(&mut PathBuf),
    err: &mut dyn FnMut(&[&str], String),
) {
    for (name, value) in otlp.headers.iter_mut() {
        let at = ["telemetry", "otlp", "headers", name.as_str()];
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            err(
                &at,
                format!("telemetry.otlp.headers: invalid header name {name:?}"),
            );
            continue;
        }
        if let Secret::File { file } = value {
            abs(file);
        }
        match value.resolve() {
            Err(e) => err(&at, format!("telemetry.otlp.headers.{name}: {e}")),
            Ok(v) if http::HeaderValue::from_str(&v).is_err() => err(
                &at,
                format!(
                    "telemetry.otlp.headers.{name}: the value is not a valid header value (visible ASCII, spaces and tabs)"
                ),
            ),
            Ok(_) => {}
        }
    }
    if let Some(tls) = &mut otlp.tls {
        if !otlp.endpoint.origin.is_https() {
            err(
                &["telemetry", "otlp", "tls"],
                "telemetry.otlp: `tls` is set but the endpoint is not https".to_owned(),
            );
        }
        for p in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
            .into_iter()
            .flatten()
        {
            abs(p);
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            err(
                &["telemetry", "otlp", "tls"],
                "telemetry.otlp.tls: `client_cert` and `client_key` go together".to_owned(),
            );
        }
    }
    if otlp.service_name.trim().is_empty() {
        err(
            &["telemetry", "otlp", "service_name"],
            "telemetry.otlp.service_name must not be empty".to_owned(),
        );
    }
    if !(0.0..=1.0).contains(&otlp.sample_ratio) {
        err(
            &["telemetry", "otlp", "sample_ratio"],
            format!(
                "telemetry.otlp.sample_ratio must be between 0 and 1, not {}",
                otlp.sample_ratio
            ),
        );
    }
}

/// Why `url` is not a Redis URL weir takes.
fn check_redis_url(url: &str) -> Result<(), String> {
    let parsed = http::Uri::try_from(url).map_err(|e| e.to_string())?;
    match parsed.scheme_str() {
        Some("redis" | "rediss") => {}
        _ => return Err("the scheme must be redis:// or rediss://".to_owned()),
    }
    let authority = parsed.authority().map(|a| a.as_str()).unwrap_or("");
    if authority.contains('@') {
        return Err(
            "put the user and password in `username` and `password = { env = \"…\" }`, not in the URL"
                .to_owned(),
        );
    }
    if parsed.host().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(())
}

/// Cross-checks the parsed file. `err` receives each problem with its byte span: the
/// setting at fault when it can be found in `text`, else the table it belongs to.
fn validate(
    mut raw: RawConfig,
    base: &Path,
    text: &str,
    err: &mut dyn FnMut(std::ops::Range<usize>, String),
) -> RawConfig {
    let place =
        |path: &[&str], table: std::ops::Range<usize>| key_span(text, path).unwrap_or(table);
    let abs = |p: &mut PathBuf| {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    };
    if let Some(tls) = &mut raw.listen.tls {
        abs(&mut tls.cert);
        abs(&mut tls.key);
        if let Some(ca) = &mut tls.client_ca {
            abs(ca);
        }
    }
    if let Some(dir) = &mut raw.runtime.cache_dir {
        abs(dir);
        // The compile cache wants an absolute path even when the config was given as a
        // relative one (`weir run weir.toml`).
        if dir.is_relative()
            && let Ok(cwd) = std::env::current_dir()
        {
            *dir = cwd.join(&*dir);
        }
    }
    if raw.listen.header_read_timeout.0 < std::time::Duration::from_millis(1) {
        // Zero would close every connection before its first request; the wait is kept
        // in whole milliseconds.
        err(
            place(&["listen", "header_read_timeout"], 0..0),
            "listen.header_read_timeout must be at least 1ms".to_owned(),
        );
    }
    if raw.listen.send_timeout.0 < std::time::Duration::from_millis(1) {
        // Zero would close a connection at the first write its client's window delays.
        err(
            place(&["listen", "send_timeout"], 0..0),
            "listen.send_timeout must be at least 1ms".to_owned(),
        );
    }
    if raw.listen.body_read_timeout.0.is_zero() {
        // Zero would fail every body at its first wait for the network.
        err(
            place(&["listen", "body_read_timeout"], 0..0),
            "listen.body_read_timeout must be more than zero".to_owned(),
        );
    }
    if raw.listen.max_connections == 0 {
        err(
            place(&["listen", "max_connections"], 0..0),
            "listen.max_connections must be at least 1".to_owned(),
        );
    }
    if let Some(n) = raw.listen.workers
        && !(1..=MAX_WORKERS).contains(&n)
    {
        err(
            place(&["listen", "workers"], 0..0),
            format!("listen.workers must be from 1 to {MAX_WORKERS}, not {n}"),
        );
    }
    if let Some(level) = &raw.log.level
        && let Err(e) = check_log_level(level)
    {
        err(place(&["log", "level"], 0..0), format!("log.level: {e}"));
    }
    validate_state(&mut raw.state, &abs, &mut |path: &[&str], msg| {
        err(place(path, 0..0), msg)
    });
    if let Some(otlp) = &mut raw.telemetry.otlp {
        validate_otlp(otlp, &abs, &mut |path: &[&str], msg| {
            err(place(path, 0..0), msg)
        });
    }
    if let Some(admin) = &mut raw.admin {
        let here = place(&["admin", "token"], 0..0);
        if let Some(Secret::File { file }) = &mut admin.token {
            abs(file);
        }
        if let Some(Err(e)) = admin.token.as_ref().map(Secret::resolve) {
            err(here, format!("admin.token: {e}"));
        }
        if admin.token.is_none() && !admin.addr.0.ip().is_loopback() {
            err(
                place(&["admin", "addr"], 0..0),
                format!(
                    "admin.addr {} is not a loopback address, and admin.token is not set: anyone who reaches it could read recorded requests and replay them; set admin.token, or bind to 127.0.0.1",
                    admin.addr.0
                ),
            );
        }
        for h in &admin.redact_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(
                    place(&["admin", "redact_headers"], 0..0),
                    format!("admin.redact_headers: invalid header name {h:?}"),
                );
            }
        }
    }
    if let Some(jobs) = &mut raw.jobs {
        if let Some(j) = &mut jobs.journal {
            abs(j);
        }
        match (jobs.store_kind(&raw.state), &jobs.journal) {
            (JobStoreKind::Journal, None) => err(
                place(&["jobs"], 0..0),
                "[jobs] needs `journal` (the file that keeps accepted requests), or `store = \"redis\"` with [state] backend = \"redis\"".to_owned(),
            ),
            (JobStoreKind::Redis, Some(_)) => err(
                place(&["jobs", "journal"], 0..0),
                "jobs.journal is unused: jobs are kept in Redis (store = \"redis\"); remove it, or set store = \"journal\"".to_owned(),
            ),
            _ => {}
        }
        if jobs.store_kind(&raw.state) == JobStoreKind::Redis
            && raw.state.backend != StateBackendKind::Redis
        {
            err(
                place(&["jobs", "store"], 0..0),
                "jobs.store = \"redis\" needs [state] backend = \"redis\" with [state.redis]"
                    .to_owned(),
            );
        }
        if jobs.visibility_timeout.0 < Duration::from_secs(1) {
            err(
                place(&["jobs", "visibility_timeout"], 0..0),
                "jobs.visibility_timeout must be at least 1s".to_owned(),
            );
        }
        if jobs.max_pending == 0 || jobs.max_pending_bytes.0 == 0 {
            err(
                place(&["jobs", "max_pending"], 0..0),
                "jobs.max_pending and jobs.max_pending_bytes must be more than zero".to_owned(),
            );
        }
        if jobs.workers == 0 {
            err(
                place(&["jobs", "workers"], 0..0),
                "jobs.workers must be at least 1".to_owned(),
            );
        }
        if let Some(hooks) = &mut jobs.webhooks {
            if let Secret::File { file } = &mut hooks.secret {
                abs(file);
            }
            let here = place(&["jobs", "webhooks", "secret"], 0..0);
            match hooks.secret.resolve() {
                Err(e) => err(here, format!("jobs.webhooks.secret: {e}")),
                Ok(s) => {
                    if let Err(e) = crate::jobs::webhook::SigningKey::parse(&s) {
                        err(here, format!("jobs.webhooks.secret: {e}"));
                    }
                }
            }
            if hooks.schedule.is_empty() {
                err(
                    place(&["jobs", "webhooks", "schedule"], 0..0),
                    "jobs.webhooks.schedule needs at least one wait".to_owned(),
                );
            }
            if hooks.timeout.0.is_zero() {
                err(
                    place(&["jobs", "webhooks", "timeout"], 0..0),
                    "jobs.webhooks.timeout must be more than zero".to_owned(),
                );
            }
        }
    }
    if let Some(b) = &raw.batch {
        for (key, value) in [
            ("max_items", b.max_items as u64),
            ("max_bytes", b.max_bytes.0),
            ("concurrency", b.concurrency as u64),
        ] {
            if value == 0 {
                err(
                    place(&["batch", key], 0..0),
                    format!("batch.{key} must be at least 1"),
                );
            }
        }
    }
    let mut origins: BTreeMap<String, &str> = BTreeMap::new();
    for (name, up) in raw.upstreams.iter_mut() {
        let span = up.span();
        let up = up.get_mut();
        if up.max_connections == 0 {
            err(
                place(&["upstreams", name, "max_connections"], span.clone()),
                format!("upstream `{name}`: max_connections must be at least 1"),
            );
        }
        if up.read_timeout.0.is_zero() {
            err(
                place(&["upstreams", name, "read_timeout"], span.clone()),
                format!("upstream `{name}`: read_timeout must be more than zero"),
            );
        }
        if let Some(tls) = &mut up.tls {
            if !up.url.is_https() {
                err(
                    place(&["upstreams", name, "tls"], span.clone()),
                    format!("upstream `{name}`: `tls` is set but the url is not https"),
                );
            }
            for p in [&mut tls.ca, &mut tls.client_cert, &mut tls.client_key]
                .into_iter()
                .flatten()
            {
                abs(p);
            }
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                err(
                    place(&["upstreams", name, "tls"], span.clone()),
                    format!("upstream `{name}`: `client_cert` and `client_key` go together"),
                );
            }
        }
        if let Some(other) = origins.insert(up.url.to_string(), name) {
            err(
                place(&["upstreams", name, "url"], span),
                format!(
                    "upstream `{name}` has the same url as upstream `{other}`; use one upstream for both"
                ),
            );
        }
    }
    for (name, f) in raw.filters.iter_mut() {
        let span = f.span();
        let f = f.get_mut();
        match &mut f.wasm {
            Some(p) => abs(p),
            None if builtin::lookup(name).is_none() => err(
                span.clone(),
                format!(
                    "filter `{name}` has no `wasm` path and is not a built-in filter (built-in: {})",
                    builtin::names().join(", ")
                ),
            ),
            None => {}
        }
        if f.max_memory.0 == 0 || f.max_memory.0 > MAX_FILTER_MEMORY {
            err(
                place(&["filters", name, "max_memory"], span.clone()),
                format!("filter `{name}`: max_memory must be between 1 byte and 1GiB"),
            );
        }
        if f.max_instances == 0 {
            err(
                place(&["filters", name, "max_instances"], span.clone()),
                format!("filter `{name}`: max_instances must be at least 1"),
            );
        }
        if f.min_instances > f.max_instances {
            err(
                place(&["filters", name, "min_instances"], span.clone()),
                format!(
                    "filter `{name}`: min_instances ({}) is more than max_instances ({})",
                    f.min_instances, f.max_instances
                ),
            );
        }
        if f.max_call_time.0.is_zero() {
            err(
                place(&["filters", name, "max_call_time"], span.clone()),
                format!("filter `{name}`: max_call_time must be more than zero"),
            );
        }
        for up in &f.outbound {
            if !raw.upstreams.contains_key(up) {
                err(
                    place(&["filters", name, "outbound"], span.clone()),
                    format!(
                        "filter `{name}`: outbound names unknown upstream `{up}` (defined: {})",
                        list_or_none(raw.upstreams.keys())
                    ),
                );
            }
        }
        if let Some(c) = &f.config
            && !c.is_object()
        {
            err(
                place(&["filters", name, "config"], span),
                format!("filter `{name}`: `config` must be a table"),
            );
        }
    }
    // Each route name, with the index of the route that defined it first.
    let mut route_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let span = route.span();
        let r = route.get_ref();
        let index = i.to_string();
        let at = |path: &[&str]| {
            let mut full = vec!["routes", index.as_str()];
            full.extend_from_slice(path);
            place(&full, span.clone())
        };
        if let Some(&first) = route_names.get(r.name.as_str()) {
            let first_line = key_span(text, &["routes", &first.to_string(), "name"])
                .map(|s| format!(" (first at line {})", line_col(text, s.start).0))
                .unwrap_or_default();
            err(
                at(&["name"]),
                format!(
                    "route `{}` is defined twice{first_line}; route names must be unique",
                    r.name
                ),
            );
        } else {
            route_names.insert(&r.name, i);
        }
        if r.name.is_empty() {
            err(at(&["name"]), "a route's name must not be empty".to_owned());
        }
        if r.name == crate::batch::JOB_ROUTE {
            err(
                at(&["name"]),
                format!(
                    "route name `{}` is reserved: batch jobs are kept under it",
                    r.name
                ),
            );
        }
        let unknown = |name: &Spanned<String>| {
            (!raw.upstreams.contains_key(name.get_ref())).then(|| {
                (
                    name.span(),
                    format!(
                        "route `{}`: unknown upstream `{}` (defined: {})",
                        r.name,
                        name.get_ref(),
                        list_or_none(raw.upstreams.keys())
                    ),
                )
            })
        };
        match (&r.upstream, &r.fanout) {
            (Some(up), None) => {
                if let Some((span, message)) = unknown(up) {
                    err(span, message);
                }
            }
            (None, Some(f)) => {
                if f.targets.is_empty() || f.targets.len() > MAX_FANOUT_TARGETS {
                    err(
                        at(&["fanout", "targets"]),
                        format!(
                            "route `{}`: `fanout.targets` must name 1 to {MAX_FANOUT_TARGETS} upstreams, got {}",
                            r.name,
                            f.targets.len()
                        ),
                    );
                }
                let mut seen = std::collections::HashSet::new();
                for t in &f.targets {
                    if let Some((span, message)) = unknown(t) {
                        err(span, message);
                    } else if !seen.insert(t.get_ref()) {
                        err(
                            t.span(),
                            format!(
                                "route `{}`: `fanout.targets` names upstream `{}` twice",
                                r.name,
                                t.get_ref()
                            ),
                        );
                    }
                }
                if f.mode == FanoutMode::Async {
                    if raw.jobs.is_none() {
                        err(
                            at(&["fanout", "mode"]),
                            format!(
                                "route `{}`: fanout mode \"async\" needs a `[jobs]` table (the journal that keeps accepted requests)",
                                r.name
                            ),
                        );
                    }
                    if r.async_jobs.is_some() {
                        err(
                            at(&["async"]),
                            format!(
                                "route `{}`: fanout mode \"async\" makes every request a job already; remove `async`",
                                r.name
                            ),
                        );
                    }
                }
            }
            (Some(_), Some(_)) => err(
                at(&["fanout"]),
                format!("route `{}`: give `upstream` or `fanout`, not both", r.name),
            ),
            (None, None) => err(
                at(&["name"]),
                format!(
                    "route `{}`: needs `upstream = \"NAME\"`, or `fanout = {{ targets = [\"A\", \"B\"] }}`",
                    r.name
                ),
            ),
        }
        if r.strip_prefix && r.matcher.path_prefix.is_none() {
            err(
                at(&["strip_prefix"]),
                format!(
                    "route `{}`: `strip_prefix` needs `match.path_prefix`",
                    r.name
                ),
            );
        }
        if let Some(p) = &r.matcher.path_prefix
            && !p.starts_with('/')
        {
            err(
                at(&["match", "path_prefix"]),
                format!(
                    "route `{}`: `match.path_prefix` must start with `/`",
                    r.name
                ),
            );
        }
        if let Some(methods) = &r.matcher.methods {
            for (j, m) in methods.iter().enumerate() {
                let problem = if http::Method::from_bytes(m.as_bytes()).is_err() {
                    format!(
                        "invalid method {m:?}: expected an HTTP method such as \"GET\" or \"POST\""
                    )
                } else if m.to_ascii_uppercase() != *m {
                    format!(
                        "method {m:?} must be upper case: {:?}",
                        m.to_ascii_uppercase()
                    )
                } else {
                    continue;
                };
                err(
                    at(&["match", "methods", &j.to_string()]),
                    format!("route `{}`: {problem}", r.name),
                );
            }
        }
        for name in r.matcher.headers.keys() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                err(
                    at(&["match", "headers", name]),
                    format!(
                        "route `{}`: invalid header name {name:?} in `match.headers`",
                        r.name
                    ),
                );
            }
        }
        if let Some(p) = &r.matcher.path_prefix
            && crate::jobs::claims_reserved(p)
        {
            err(
                at(&["match", "path_prefix"]),
                format!(
                    "route `{}`: `match.path_prefix` {p:?} claims weir's reserved prefix `{}` (job and batch URLs)",
                    r.name,
                    crate::jobs::PREFIX
                ),
            );
        }
        if r.async_jobs.is_some() && raw.jobs.is_none() {
            err(
                at(&["async"]),
                format!(
                    "route `{}`: `async` needs a `[jobs]` table (the journal that keeps accepted requests)",
                    r.name
                ),
            );
        }
        if r.timeout.0.is_zero() {
            err(
                at(&["timeout"]),
                format!("route `{}`: timeout must be more than zero", r.name),
            );
        }
        for f in &r.filters {
            let name = &f.get_ref().name;
            let known = raw.filters.contains_key(name) || builtin::lookup(name).is_some();
            if !known {
                err(
                    f.span(),
                    format!(
                        "route `{}`: unknown filter `{name}`: define [filters.{name}] with a `wasm` path, or use a built-in filter ({})",
                        r.name,
                        builtin::names().join(", ")
                    ),
                );
            }
            if let Some(c) = &f.get_ref().config
                && !c.is_object()
            {
                err(
                    f.span(),
                    format!(
                        "route `{}`: the config of filter `{name}` must be a table",
                        r.name
                    ),
                );
            }
        }
    }
    raw
}

/// Checks a `[log] level`: comma-separated parts, each a level (`info`) or
/// `target=level` (`weir=debug`). `EnvFilter` would take a bare word as a target name and
/// silently log nothing at the default level, so weir is stricter.
fn check_log_level(text: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for part in text.split(',').map(str::trim) {
        let level = part.rsplit_once('=').map_or(part, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid level {part:?} in {text:?}: use trace, debug, info, warn, error or off, optionally per target (\"warn,weir=debug\")"
            ));
        }
    }
    Ok(())
}

fn list_or_none<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<_> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none".to_owned()
    } else {
        v.join(", ")
    }
}

/// The byte span of the setting at `path` in the TOML `text`: of its key, or for an array
/// element (a path segment that is an index, like `"0"`) of the element. `None` when the
/// text does not parse or has nothing at `path` (a default value, say).
pub(crate) fn key_span(text: &str, path: &[&str]) -> Option<std::ops::Range<usize>> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut span = None;
    let mut here: Option<&DeValue<'_>> = None;
    for seg in path {
        let (s, v) = match here {
            None => {
                let (k, v) = doc.get_ref().get_key_value(*seg)?;
                (k.span(), v.get_ref())
            }
            Some(DeValue::Table(t)) => {
                let (k, v) = t.get_key_value(*seg)?;
                (k.span(), v.get_ref())
            }
            Some(DeValue::Array(a)) => {
                let v = a.get(seg.parse::<usize>().ok()?)?;
                (v.span(), v.get_ref())
            }
            Some(_) => return None,
        };
        span = Some(s);
        here = Some(v);
    }
    span
}

/// 1-based line and column (in characters) of byte offset `at`.
pub(crate) fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Merges `over` into `base`: tables merge key by key, anything else replaces.
pub fn merge_json(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge_json(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(Path::new("/etc/weir/weir.toml"), text)
    }

    const MIN: &str = r#"
[listen]
addr = "127.0.0.1:8080"
[upstreams.api]
url = "https://api.example.com"
[[routes]]
name = "all"
upstream = "api"
"#;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(
            HumanDuration::try_from("250ms".to_owned()).unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            HumanDuration::try_from("2s".to_owned()).unwrap().0,
            Duration::from_secs(2)
        );
        assert_eq!(
            HumanDuration::try_from("1.5m".to_owned()).unwrap().0,
            Duration::from_secs(90)
        );
        assert!(HumanDuration::try_from("2".to_owned()).is_err());
        assert!(HumanDuration::try_from("2 weeks".to_owned()).is_err());
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert!(parse_size("10XB").is_err());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(MIN).unwrap();
        let r = c.raw.routes[0].get_ref();
        assert_eq!(r.timeout.0, Duration::from_secs(30));
        assert_eq!(c.raw.upstreams["api"].get_ref().max_connections, 100);
        assert_eq!(c.raw.listen.max_body_bytes.0, 10 << 20);
    }

    #[test]
    fn unknown_key_is_located() {
        let err = parse(&format!("{MIN}bogus = 1\n")).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(
            err.0[0].message.contains("unknown field `bogus`"),
            "{}",
            err
        );
        assert!(err.0[0].pos.is_some());
    }

    #[test]
    fn unknown_upstream_and_filter_are_all_reported() {
        let text = r#"
[listen]
addr = "127.0.0.1:8080"
[[routes]]
name = "r"
upstream = "nope"
filters = ["headers", "mystery"]
"#;
        let err = parse(text).unwrap_err();
        let msgs: Vec<_> = err.0.iter().map(|e| (e.pos, e.message.as_str())).collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert_eq!(msgs[0].0, Some((6, 12)));
        assert!(msgs[0].1.contains("unknown upstream `nope`"));
        assert_eq!(msgs[1].0, Some((7, 23)));
        assert!(msgs[1].1.contains("unknown filter `mystery`"));
    }

    #[test]
    fn relative_paths_resolve_against_the_config_file() {
        let text = format!("{MIN}[filters.custom]\nwasm = \"f/custom.wasm\"\n");
        let c = parse(&text).unwrap();
        assert_eq!(
            c.filter_source("custom"),
            FilterSource::File(PathBuf::from("/etc/weir/f/custom.wasm"))
        );
        assert_eq!(c.filter_source("headers"), FilterSource::Builtin("headers"));
    }

    #[test]
    fn filter_use_forms() {
        let text = format!(
            "{MIN}filters = [\"headers\", {{ use = \"headers\", config = {{ a = 1 }} }}]\n"
        );
        let c = parse(&text).unwrap();
        let fs = &c.raw.routes[0].get_ref().filters;
        assert_eq!(fs.len(), 2);
        assert_eq!(fs[1].get_ref().config, Some(serde_json::json!({"a": 1})));
        let bad = format!("{MIN}filters = [{{ name = \"headers\" }}]\n");
        assert!(
            parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("unknown field `name`")
        );
    }

    #[test]
    fn otlp_is_off_by_default_and_checked_when_on() {
        assert_eq!(
            parse(MIN).unwrap().raw.telemetry,
            TelemetryConfig::default()
        );
        let on = parse(&format!(
            "{MIN}[telemetry.otlp]\nendpoint = \"https://otel.example.com:4318\"\n"
        ))
        .unwrap();
        let otlp = on.raw.telemetry.otlp.unwrap();
        assert_eq!(
            otlp.endpoint.to_string(),
            "https://otel.example.com:4318/v1/traces"
        );
        assert_eq!(
            (otlp.service_name.as_str(), otlp.sample_ratio),
            ("weir", 1.0)
        );
        let bad = parse(&format!(
            r#"{MIN}[telemetry.otlp]
endpoint = "http://127.0.0.1:4318/v1/traces"
headers = {{ "x-key" = {{ env = "WEIR_CONFIG_TEST_UNSET_OTLP_KEY" }}, "bad name" = "v" }}
sample_ratio = 1.5
service_name = " "
tls = {{ client_cert = "c.pem" }}
"#
        ))
        .unwrap_err()
        .to_string();
        for want in [
            "telemetry.otlp.headers.x-key: environment variable WEIR_CONFIG_TEST_UNSET_OTLP_KEY is not set",
            "telemetry.otlp.headers: invalid header name \"bad name\"",
            "telemetry.otlp.sample_ratio must be between 0 and 1, not 1.5",
            "telemetry.otlp.service_name must not be empty",
            "telemetry.otlp: `tls` is set but the endpoint is not https",
            "telemetry.otlp.tls: `client_cert` and `client_key` go together",
        ] {
            assert!(bad.contains(want), "{want} in {bad}");
        }
        let creds = parse(&format!(
            "{MIN}[telemetry.otlp]\nendpoint = \"https://user:hunter2@otel.example.com\"\n"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            creds.contains("credentials in the url are not allowed"),
            "{creds}"
        );
        assert!(!creds.contains("hunter2"), "{creds}");
    }

    #[test]
    fn log_levels_are_checked() {
        assert!(check_log_level("info").is_ok());
        assert!(check_log_level("warn,weir=debug").is_ok());
        assert!(check_log_level("loud").is_err());
        assert!(check_log_level("warn,weir=chatty").is_err());
    }

    #[test]
    fn json_merge_is_deep() {
        let mut a = serde_json::json!({"x": {"y": 1, "z": 2}, "k": 1});
        merge_json(&mut a, &serde_json::json!({"x": {"y": 5}, "n": true}));
        assert_eq!(
            a,
            serde_json::json!({"x": {"y": 5, "z": 2}, "k": 1, "n": true})
        );
    }
}
