//! The `redis` backend: filter state in a Redis server or Redis Cluster, shared by every
//! weir process that points at it.
//!
//! # Connections
//!
//! One multiplexed connection per server (the `redis` crate's connection manager, or its
//! cluster connection, which keeps one per node): concurrent operations are pipelined
//! over it rather than each taking a connection. Both connect lazily and reconnect by
//! themselves, so weir starts while Redis is down and recovers when it comes back,
//! without a restart or a reload.
//!
//! # Keys
//!
//! A key reaches Redis as `<prefix>{<filter>/<key>}`. The braces are a Cluster hash tag:
//! every Redis key one operation touches derives from one state key, so they share a
//! slot. Every operation touches one state key.
//!
//! # Atomicity
//!
//! `get`, `set` and `delete` are single commands; `incr`, `compare_and_swap`, the bucket
//! and the windows are Lua scripts (sent by hash, loaded on a cold server), which Redis
//! runs atomically. Times inside the scripts are exact: nanosecond values are split into
//! seconds and nanoseconds so that Lua's doubles never round them.
//!
//! # Failures
//!
//! Each operation is cut at `timeout`, connecting included, and fails as
//! [`StateError::Unavailable`]. The backend remembers whether its last exchange with
//! Redis worked and the last error ([`StateBackend::health`], shown in `/status`), keeps
//! the `weir_state_up` gauge, and checks the server once a second while nothing else
//! does, so the gauge recovers without traffic.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use prometheus::IntGauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, RedisError, Script, ScriptInvocation};

use super::prims::{MAX_COUNT, MAX_SLOTS};
use super::{
    BoxFuture, BucketPolicy, StateBackend, StateError, StateHealth, TakeOutcome, TakeResult, Window,
};
use crate::config::RedisConfig;

/// Values above this are refused as too large (Redis itself takes up to 512 MiB).
const MAX_VALUE_BYTES: usize = 256 << 20;
/// How often the backend checks the server by itself.
const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// The scripts, compiled once; `Script` keeps the hash it is invoked by.
struct Scripts {
    incr: Script,
    cas: Script,
    bucket_take: Script,
    bucket_pause: Script,
    window: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            incr: Script::new(include_str!("lua/incr.lua")),
            cas: Script::new(include_str!("lua/cas.lua")),
            bucket_take: Script::new(concat!(
                include_str!("lua/time.lua"),
                include_str!("lua/bucket_take.lua")
            )),
            bucket_pause: Script::new(concat!(
                include_str!("lua/time.lua"),
                include_str!("lua/bucket_pause.lua")
            )),
            window: Script::new(include_str!("lua/window.lua")),
        }
    }
}

/// A connection to one server or to a cluster; cloning is cheap (a handle).
#[derive(Clone)]
pub(crate) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => cmd.query_async(&mut c).await,
            Conn::Cluster(mut c) => cmd.query_async(&mut c).await,
        }
    }

    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        script: ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        match self.clone() {
            Conn::Single(mut c) => script.invoke_async(&mut c).await,
            Conn::Cluster(mut c) => script.invoke_async(&mut c).await,
        }
    }
}

/// What the backend knows of its server.
#[derive(Default)]
struct Health {
    up: bool,
    last_error: Option<(String, SystemTime)>,
}

/// The Redis state backend.
pub struct RedisBackend {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    /// Where it connects, for messages (no password: the config refuses one in a URL).
    target: String,
    scripts: Scripts,
    health: Mutex<Health>,
    up_gauge: IntGauge,
}

impl RedisBackend {
    /// A backend for `config`; it connects on first use. Fails only on a config the
    /// client refuses (a bad URL or CA file). `up_gauge` follows its health.
    pub fn new(config: &RedisConfig, up_gauge: IntGauge) -> Result<Arc<RedisBackend>, String> {
        let (conn, target) = connect(config)?;
        let timeout = config.timeout.0;
        let backend = Arc::new(RedisBackend {
            conn,
            prefix: config.prefix.clone(),
            timeout,
            target,
            scripts: Scripts::new(),
            health: Mutex::new(Health::default()),
            up_gauge,
        });
        tokio::spawn(watch(Arc::downgrade(&backend)));
        Ok(backend)
    }

    fn key(&self, key: &str) -> String {
        format!("{}{{{key}}}", self.prefix)
    }

    /// Runs one exchange with Redis under the timeout, and notes how it went.
    async fn run<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StateError> {
        let timed_out = || {
            let why = format!(
                "redis at {}: no answer within {} ms",
                self.target,
                self.timeout.as_millis()
            );
            self.note(Some(&why));
            Err(StateError::Unavailable(why))
        };
        let result = match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            // The client's own response timeout is the same `timeout`.
            Ok(Err(e)) if e.is_timeout() => return timed_out(),
            Ok(Err(e)) => Err(e),
            Err(_) => return timed_out(),
        };
        match result {
            Ok(v) => {
                self.note(None);
                Ok(v)
            }
            // The server answered: it is up, whatever it said.
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError)
                    || e.code().is_some() =>
            {
                self.note(None);
                Err(server_error(e))
            }
            Err(e) => {
                let why = format!("redis at {}: {e}", self.target);
                self.note(Some(&why));
                Err(StateError::Unavailable(why))
            }
        }
    }

    /// Records a working exchange (`None`) or a failed one.
    fn note(&self, error: Option<&str>) {
        let mut h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        match error {
            None => h.up = true,
            Some(why) => {
                if h.up {
                    tracing::warn!(target: "weir::state", error = %why, "the redis state backend is down");
                }
                h.up = false;
                h.last_error = Some((why.to_owned(), SystemTime::now()));
            }
        }
        let was = self.up_gauge.get();
        self.up_gauge.set(i64::from(h.up));
        if was == 0 && h.up && h.last_error.is_some() {
            tracing::info!(target: "weir::state", "the redis state backend is back");
        }
    }
}

/// A lazy, self-reconnecting connection for `config`, and where it goes (for messages:
/// no password). Fails only on a config the client refuses (a bad URL or CA file).
pub(crate) fn connect(config: &RedisConfig) -> Result<(Conn, String), String> {
    // The client builds its TLS config from rustls' process default.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let password = match &config.password {
        Some(p) => Some(p.resolve()?),
        None => None,
    };
    let certs = match &config.ca {
        Some(path) => Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(
                std::fs::read(path)
                    .map_err(|e| format!("state.redis.ca: cannot read {}: {e}", path.display()))?,
            ),
        }),
        None => None,
    };
    let timeout = config.timeout.0;
    let (conn, target) = match (&config.url, &config.cluster) {
        (Some(url), _) => {
            let mut info: redis::ConnectionInfo =
                redis::IntoConnectionInfo::into_connection_info(url.as_str())
                    .map_err(|e| format!("state.redis.url: {e}"))?;
            let mut settings = info.redis_settings().clone();
            if let Some(user) = &config.username {
                settings = settings.set_username(user);
            }
            if let Some(password) = &password {
                settings = settings.set_password(password);
            }
            info = info.set_redis_settings(settings);
            let client = match certs {
                Some(c) => redis::Client::build_with_tls(info, c),
                None => redis::Client::open(info),
            }
            .map_err(|e| format!("state.redis.url: {e}"))?;
            let manager = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                // Retrying is weir's business: an operation fails at `timeout`.
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            let conn = ConnectionManager::new_lazy_with_config(client, manager)
                .map_err(|e| format!("state.redis.url: {e}"))?;
            (Conn::Single(conn), url.clone())
        }
        (None, Some(nodes)) => {
            let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1);
            if let Some(user) = &config.username {
                builder = builder.username(user);
            }
            if let Some(password) = &password {
                builder = builder.password(password);
            }
            if nodes.iter().any(|n| n.starts_with("rediss://")) {
                builder = builder.tls(redis::TlsMode::Secure);
            }
            if let Some(c) = certs {
                builder = builder.certs(c);
            }
            let client = builder
                .build()
                .map_err(|e| format!("state.redis.cluster: {e}"))?;
            let conn = client
                .get_pending_async_connection_with_config(redis::cluster::ClusterConfig::new());
            (Conn::Cluster(conn), nodes.join(", "))
        }
        (None, None) => return Err("[state.redis] needs `url` or `cluster`".to_owned()),
    };
    Ok((conn, target))
}

/// Pings the server every second while the backend lives.
async fn watch(backend: Weak<RedisBackend>) {
    let mut tick = tokio::time::interval(HEALTH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(b) = backend.upgrade() else { return };
        let _ = b.ping().await;
    }
}

/// A server's error reply as a state error: `incr` on a value that is not an integer
/// (or would overflow) is the caller's, anything else the backend's.
fn server_error(e: RedisError) -> StateError {
    let text = e.to_string();
    if text.contains("not an integer") || text.contains("overflow") {
        StateError::NotAnInteger
    } else {
        StateError::Unavailable(format!("redis: {text}"))
    }
}

/// Milliseconds, rounded up, as a script argument; "" for no TTL.
fn ttl_arg(ttl: Option<Duration>) -> String {
    ttl.map(|t| t.as_nanos().div_ceil(1_000_000).to_string())
        .unwrap_or_default()
}

/// A decimal u64 from a script, saturating (the scripts may go past `u64::MAX`).
fn parse_ns(text: &str) -> Result<u64, StateError> {
    text.parse::<u128>()
        .map(|v| u64::try_from(v).unwrap_or(u64::MAX))
        .map_err(|_| StateError::Unavailable(format!("redis: unexpected number {text:?}")))
}

fn take_outcome(text: &str) -> Result<TakeOutcome, StateError> {
    Ok(match text {
        "admitted" => TakeOutcome::Admitted,
        "reserved" => TakeOutcome::Reserved,
        "empty" => TakeOutcome::Empty,
        "paused" => TakeOutcome::Paused,
        "queue_full" => TakeOutcome::QueueFull,
        "too_long" => TakeOutcome::TooLong,
        other => {
            return Err(StateError::Unavailable(format!(
                "redis: unexpected bucket outcome {other:?}"
            )));
        }
    })
}

impl StateBackend for RedisBackend {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StateError>> {
        Box::pin(async move {
            let cmd = redis::cmd("GET").arg(self.key(key)).clone();
            self.run(self.conn.query(&cmd)).await
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            if value.len() > MAX_VALUE_BYTES {
                return Err(StateError::TooLarge);
            }
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(key)).arg(value);
            match ttl_arg(ttl).as_str() {
                "" => {}
                // Expires at once, as in the memory backend (Redis refuses PX 0).
                "0" => cmd = redis::cmd("DEL").arg(self.key(key)).clone(),
                ms => {
                    cmd.arg("PX").arg(ms);
                }
            }
            self.run(self.conn.query::<redis::Value>(&cmd))
                .await
                .map(drop)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let cmd = redis::cmd("DEL").arg(self.key(key)).clone();
            self.run(self.conn.query::<i64>(&cmd)).await.map(drop)
        })
    }

    fn incr<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<i64, StateError>> {
        Box::pin(async move {
            let mut inv = self.scripts.incr.prepare_invoke();
            inv.key(self.key(key)).arg(delta).arg(ttl_arg(ttl));
            self.run(self.conn.invoke(inv)).await
        })
    }

    fn compare_and_swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        new: Vec<u8>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<bool, StateError>> {
        Box::pin(async move {
            if new.len() > MAX_VALUE_BYTES {
                return Err(StateError::TooLarge);
            }
            let mut inv = self.scripts.cas.prepare_invoke();
            inv.key(self.key(key))
                .arg(if expected.is_none() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(new)
                .arg(ttl_arg(ttl));
            self.run(self.conn.invoke::<i64>(inv)).await.map(|n| n == 1)
        })
    }

    fn bucket_take<'a>(
        &'a self,
        key: &'a str,
        policy: BucketPolicy,
        now_ns: u64,
    ) -> BoxFuture<'a, Result<TakeResult, StateError>> {
        Box::pin(async move {
            // As the memory backend reads them: zero counts as one.
            let interval = policy.interval_ns.max(1);
            let mut inv = self.scripts.bucket_take.prepare_invoke();
            inv.key(self.key(key))
                .arg(now_ns.to_string())
                .arg(interval.to_string())
                .arg(policy.burst.max(1).saturating_mul(interval).to_string())
                .arg(policy.max_wait_ns.to_string())
                .arg(policy.max_queue.saturating_mul(interval).to_string());
            let (outcome, tat, paused, wait): (String, String, String, String) =
                self.run(self.conn.invoke(inv)).await?;
            Ok(TakeResult {
                outcome: take_outcome(&outcome)?,
                tat_ns: parse_ns(&tat)?,
                paused_until_ns: parse_ns(&paused)?,
                wait_ns: parse_ns(&wait)?,
            })
        })
    }

    fn bucket_pause<'a>(
        &'a self,
        key: &'a str,
        until_ns: u64,
        now_ns: u64,
    ) -> BoxFuture<'a, Result<(), StateError>> {
        Box::pin(async move {
            let mut inv = self.scripts.bucket_pause.prepare_invoke();
            inv.key(self.key(key))
                .arg(now_ns.to_string())
                .arg(until_ns.to_string());
            self.run(self.conn.invoke::<i64>(inv)).await.map(drop)
        })
    }

    fn window_add<'a>(
        &'a self,
        key: &'a str,
        window: Window,
        at_ns: u64,
        now_ns: u64,
        record: Option<&'a [i64]>,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<i64>, StateError>> {
        Box::pin(async move {
            let record = record
                .map(|r| {
                    let lanes: Vec<String> = r.iter().map(i64::to_string).collect();
                    format!("={}", lanes.join(","))
                })
                .unwrap_or_default();
            let mut inv = self.scripts.window.prepare_invoke();
            inv.key(self.key(key));
            match window {
                Window::Time { slot_ms, slots } => {
                    let (slot_ms, slots) = (slot_ms.max(1), slots.clamp(1, MAX_SLOTS));
                    let slot_ns = u64::from(slot_ms) * 1_000_000;
                    let span = Duration::from_millis(u64::from(slot_ms) * u64::from(slots));
                    let keep = ttl.map_or(span, |t| t.max(span));
                    inv.arg("time")
                        .arg(at_ns / slot_ns)
                        .arg(now_ns / slot_ns)
                        .arg(slots)
                        .arg(slot_ms)
                        .arg(ttl_arg(Some(keep)))
                        .arg(record);
                }
                Window::Count(n) => {
                    inv.arg("count")
                        .arg(n.clamp(1, MAX_COUNT))
                        .arg(ttl_arg(ttl))
                        .arg(record);
                }
            }
            self.run(self.conn.invoke(inv)).await
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StateError>> {
        Box::pin(async move {
            let pong: String = self.run(self.conn.query(&redis::cmd("PING"))).await?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(StateError::Unavailable(format!(
                    "redis at {} answered PING with {pong:?}",
                    self.target
                )))
            }
        })
    }

    fn health(&self) -> StateHealth {
        let h = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        StateHealth {
            backend: "redis",
            up: h.up,
            last_error: h.last_error.clone(),
        }
    }
}

#[cfg(test)]
#[path = "../../../tests/e2e/support/redis.rs"]
// The e2e tests use all of it; these unit tests a part.
#[allow(dead_code)]
pub(crate) mod test_server;

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::test_server::{RedisCluster, RedisServer};
    use super::*;
    use crate::config::{HumanDuration, RedisConfig};
    use crate::state::MemoryBackend;

    fn config(url: Option<String>, cluster: Option<Vec<String>>) -> RedisConfig {
        RedisConfig {
            url,
            cluster,
            username: None,
            password: None,
            prefix: "t:".to_owned(),
            timeout: HumanDuration(Duration::from_millis(500)),
            ca: None,
        }
    }

    fn backend(url: String) -> Arc<RedisBackend> {
        RedisBackend::new(&config(Some(url), None), gauge()).expect("backend")
    }

    fn gauge() -> IntGauge {
        IntGauge::new("weir_state_up", "test").expect("gauge")
    }

    const S: u64 = 1_000_000_000;
    const T0: u64 = 1_700_000_000 * S + 123_456_789;

    /// Runs the same operations on `b` and returns every answer, as text.
    async fn script(b: &dyn StateBackend) -> Vec<String> {
        let mut out = Vec::new();
        macro_rules! note {
            ($e:expr) => {
                out.push(format!("{:?}", $e.await))
            };
        }
        note!(b.get("f/absent"));
        note!(b.set("f/a", b"one".to_vec(), None));
        note!(b.get("f/a"));
        note!(b.set("f/a", vec![0, 255, b'\n'], Some(Duration::from_secs(60))));
        note!(b.get("f/a"));
        note!(b.incr("f/n", 5, Some(Duration::from_secs(60))));
        note!(b.incr("f/n", -7, None));
        note!(b.incr("f/a", 1, None));
        note!(b.set("f/big", b"9223372036854775807".to_vec(), None));
        note!(b.incr("f/big", 1, None));
        note!(b.compare_and_swap("f/c", None, b"x".to_vec(), None));
        note!(b.compare_and_swap("f/c", None, b"y".to_vec(), None));
        note!(b.compare_and_swap("f/c", Some(b"z"), b"y".to_vec(), None));
        note!(b.compare_and_swap(
            "f/c",
            Some(b"x"),
            b"y".to_vec(),
            Some(Duration::from_secs(9))
        ));
        note!(b.get("f/c"));
        note!(b.delete("f/c"));
        note!(b.delete("f/c"));
        note!(b.get("f/c"));
        // A bucket of 3, one token per 100 ms, queueing up to 2 for at most 250 ms.
        let policy = BucketPolicy {
            interval_ns: S / 10,
            burst: 3,
            max_wait_ns: 250_000_000,
            max_queue: 2,
        };
        for i in 0..7 {
            note!(b.bucket_take("f/b", policy, T0 + i * 1_000_000));
        }
        let reject = BucketPolicy {
            max_wait_ns: 0,
            ..policy
        };
        note!(b.bucket_take("f/b", reject, T0 + S));
        note!(b.bucket_take("f/b", reject, T0 + 2 * S));
        note!(b.bucket_pause("f/b", T0 + 5 * S, T0 + 2 * S));
        note!(b.bucket_pause("f/b", T0 + 3 * S, T0 + 2 * S));
        note!(b.bucket_take("f/b", reject, T0 + 4 * S));
        note!(b.bucket_take("f/b", reject, T0 + 5 * S));
        out.push(format!(
            "{:?}",
            b.get("f/b").await.map(|v| v.map(String::from_utf8))
        ));
        // Near the end of u64: the arithmetic must not wrap.
        let slow = BucketPolicy {
            interval_ns: 86_400 * S,
            burst: 1_000_000,
            max_wait_ns: 0,
            max_queue: 0,
        };
        note!(b.bucket_take("f/edge", slow, u64::MAX - S));
        // Windows: the last 3 records, and 4 slots of 1 s.
        note!(b.window_add("f/w", Window::Count(3), 0, 0, None, None));
        for rec in [&[1, 0, 1][..], &[1, 1], &[1, 1, 0, 4], &[1, 0], &[1, -1]] {
            note!(b.window_add(
                "f/w",
                Window::Count(3),
                0,
                0,
                Some(rec),
                Some(Duration::from_secs(60))
            ));
        }
        note!(b.window_add("f/w", Window::Count(2), 0, 0, None, None));
        note!(b.window_add("f/w", Window::Count(2), 0, 0, Some(&[1, 5]), None));
        let time = Window::Time {
            slot_ms: 1000,
            slots: 4,
        };
        for (at, now, rec) in [
            (T0, T0, Some(&[1, 1][..])),
            (T0 + S, T0 + S, Some(&[1, 0])),
            (T0, T0 + 2 * S, Some(&[-1, 0])),
            (T0 + 3 * S, T0 + 3 * S, Some(&[1, 1, 1])),
            (T0, T0 + 4 * S, None),
            (T0 + 4 * S, T0 + 4 * S, Some(&[1])),
            (T0, T0 + 9 * S, None),
        ] {
            note!(b.window_add("f/t", time, at, now, rec, None));
        }
        out
    }

    #[tokio::test]
    async fn every_operation_answers_as_the_memory_backend_does() {
        let server = RedisServer::start();
        let redis = backend(server.url());
        let memory = MemoryBackend::new(1 << 20);
        let want = script(&*memory).await;
        let got = script(&*redis).await;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(g, w, "answer {i} differs from the memory backend's");
        }
        assert_eq!(got.len(), want.len());
        // The keys carry the prefix and a hash tag, and the TTLs the calls gave.
        assert_eq!(server.cmd(&["EXISTS", "t:{f/a}"]), ":1");
        let ttl: i64 = server.cmd(&["PTTL", "t:{f/a}"])[1..].parse().unwrap();
        assert!((59_000..=60_000).contains(&ttl), "{ttl}");
        // incr kept the TTL it was created with; the CAS set its own.
        let ttl: i64 = server.cmd(&["PTTL", "t:{f/n}"])[1..].parse().unwrap();
        assert!((59_000..=60_000).contains(&ttl), "{ttl}");
        assert_eq!(server.cmd(&["PTTL", "t:{f/big}"]), ":-1");
    }

    #[tokio::test]
    async fn ttls_expire_on_the_server() {
        let server = RedisServer::start();
        let b = backend(server.url());
        b.set("f/x", b"v".to_vec(), Some(Duration::from_millis(30)))
            .await
            .unwrap();
        b.incr("f/n", 1, Some(Duration::from_millis(30)))
            .await
            .unwrap();
        assert!(
            b.compare_and_swap("f/c", None, b"v".to_vec(), Some(Duration::ZERO))
                .await
                .unwrap()
        );
        assert_eq!(
            b.get("f/c").await.unwrap(),
            None,
            "a zero TTL expires at once"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(b.get("f/x").await.unwrap(), None);
        assert_eq!(
            b.incr("f/n", 1, None).await.unwrap(),
            1,
            "created afresh at 0"
        );
    }

    #[tokio::test]
    async fn a_stopped_server_fails_fast_and_recovery_needs_no_restart() {
        let mut server = RedisServer::start();
        let b = backend(server.url());
        b.set("f/k", b"v".to_vec(), None).await.unwrap();
        assert!(b.health().up);
        server.kill();
        let started = Instant::now();
        let e = b.get("f/k").await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(500) + Duration::from_secs(5),
            "cut at the timeout"
        );
        let StateError::Unavailable(why) = &e else {
            panic!("{e:?}")
        };
        assert!(why.contains(&server.url()), "{why}");
        let h = b.health();
        assert!(!h.up);
        assert!(h.last_error.is_some());
        server.restart();
        // The backend reconnects by itself: its own check runs every second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while b.get("f/k").await.is_err() {
            assert!(Instant::now() < deadline, "no recovery");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            b.get("f/k").await.unwrap(),
            None,
            "a restarted server is empty"
        );
        assert!(b.health().up);
    }

    #[tokio::test]
    async fn a_slow_server_is_cut_at_the_timeout() {
        let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
        let b = backend(server.url());
        b.ping().await.unwrap();
        // The server runs one command at a time: DEBUG SLEEP holds every other.
        let port = server.port;
        let sleeper = std::thread::spawn(move || {
            let s = RedisServer::cmd_on(port, &["DEBUG", "SLEEP", "5"]);
            assert_eq!(s, "+OK");
        });
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        let e = b.get("f/k").await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(4),
            "waited {took:?} for a sleeping server"
        );
        assert!(e.to_string().contains("no answer within 500 ms"), "{e}");
        sleeper.join().unwrap();
    }

    #[tokio::test]
    async fn a_cluster_spreads_the_keys_and_keeps_every_operation() {
        let cluster = RedisCluster::start();
        let b = RedisBackend::new(&config(None, Some(cluster.urls())), gauge()).unwrap();
        let memory = MemoryBackend::new(1 << 20);
        assert_eq!(script(&*b).await, script(&*memory).await);
        for i in 0..30 {
            b.incr(&format!("f/k{i}"), i, None).await.unwrap();
        }
        // The keys landed on every node.
        for n in &cluster.nodes {
            let keys: i64 = n.cmd(&["DBSIZE"])[1..].parse().unwrap();
            assert!(keys > 0, "node {} holds no key", n.port);
        }
        for i in 0..30 {
            assert_eq!(b.incr(&format!("f/k{i}"), 0, None).await.unwrap(), i);
        }
    }
}
