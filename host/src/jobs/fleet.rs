//! The fleet's job store: Redis Streams on the `[state.redis]` server, so that a job
//! accepted by one weir process runs on any.
//!
//! # Keys
//!
//! Every key shares the hash tag `{jobs}`, so a Redis Cluster keeps them on one node and
//! each script below touches them together:
//!
//! - `<prefix>{jobs}:job:<id>`: the job, as JSON (the embedded journal's row);
//! - `<prefix>{jobs}:run`: the run lane, a stream of job ids with the consumer group
//!   `weir`;
//! - `<prefix>{jobs}:deliver`: the delivery lane, the same for owed webhooks;
//! - `<prefix>{jobs}:pending`: a hash counting the run lane (`count`, `bytes`,
//!   `route:<name>`), for the bounds and `/status`;
//! - `<prefix>{jobs}:dead`: dead jobs, a sorted set by the time they died.
//!
//! # Claims
//!
//! Each process reads the lanes as its own consumer. An entry it reads stays in the
//! group's pending list until the script that records the outcome acknowledges and
//! deletes it. While a process works on an entry it renews the claim every third of the
//! visibility timeout; an entry left idle for longer (its process died) is taken over
//! by the next process to look (`XAUTOCLAIM`). Accepting, finishing, settling and
//! re-delivering are each one Lua script, so a crash between two steps cannot happen.
//!
//! # Durability
//!
//! The `202` is sent once Redis has the job. It survives a Redis crash only if Redis
//! writes it to disk first: `appendonly yes` with `appendfsync always`. weir warns at
//! first contact when the server says it does not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamRangeReply, StreamReadReply};
use redis::{RedisError, Script};
use tokio::sync::Notify;

use super::journal::JournalError;
use super::store::{Bounds, Claim, QueueStats, Store, owes_webhook};
use super::{AcceptError, Job, JobState, now_ms};
use crate::config::{JobsConfig, RedisConfig};
use crate::state::BoxFuture;
use crate::state::redis::{Conn, connect};

/// The consumer group on both lanes.
const GROUP: &str = "weir";
/// How often an idle process looks for new work in the lanes.
const POLL: Duration = Duration::from_millis(100);

/// The scripts, compiled once.
struct Scripts {
    accept: Script,
    finish: Script,
    settle: Script,
    redeliver: Script,
    requeue: Script,
    progress: Script,
}

/// The keys, with the deployment's prefix.
struct Keys {
    prefix: String,
    run: String,
    deliver: String,
    pending: String,
    dead: String,
}

impl Keys {
    fn new(prefix: &str) -> Keys {
        let key = |name: &str| format!("{prefix}{{jobs}}:{name}");
        Keys {
            prefix: prefix.to_owned(),
            run: key("run"),
            deliver: key("deliver"),
            pending: key("pending"),
            dead: key("dead"),
        }
    }

    fn job(&self, id: &str) -> String {
        format!("{}{{jobs}}:job:{id}", self.prefix)
    }
}

/// The Redis job store.
pub struct Fleet {
    conn: Conn,
    target: String,
    timeout: Duration,
    keys: Keys,
    scripts: Scripts,
    /// This process's consumer name in the group.
    consumer: String,
    visibility: Duration,
    retention_ms: u64,
    /// Whether the consumer groups are known to exist.
    groups: AtomicBool,
    /// When each lane was last searched for abandoned claims (Unix ms).
    reclaimed: [AtomicU64; 2],
    /// Wakes this process's workers when it accepts a job itself.
    accepted: Notify,
    finished: Notify,
}

/// Which lane.
#[derive(Clone, Copy)]
enum Lane {
    Run = 0,
    Deliver = 1,
}

impl Fleet {
    /// A store on `redis` (connected lazily, like the state backend).
    pub fn new(redis: &RedisConfig, config: &JobsConfig) -> Result<Fleet, String> {
        let (conn, target) = connect(redis)?;
        let consumer = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "weir".to_owned()),
            std::process::id(),
            rand::random::<u32>()
        );
        Ok(Fleet {
            conn,
            target,
            timeout: redis.timeout.0,
            keys: Keys::new(&redis.prefix),
            scripts: Scripts {
                accept: Script::new(include_str!("lua/accept.lua")),
                finish: Script::new(include_str!("lua/finish.lua")),
                settle: Script::new(include_str!("lua/settle.lua")),
                redeliver: Script::new(include_str!("lua/redeliver.lua")),
                requeue: Script::new(include_str!("lua/requeue.lua")),
                progress: Script::new(include_str!("lua/progress.lua")),
            },
            consumer,
            visibility: config.visibility_timeout.0,
            retention_ms: u64::try_from(config.retention.0.as_millis()).unwrap_or(u64::MAX),
            groups: AtomicBool::new(false),
            reclaimed: [AtomicU64::new(0), AtomicU64::new(0)],
            accepted: Notify::new(),
            finished: Notify::new(),
        })
    }

    /// One exchange with Redis, cut at the timeout.
    async fn run<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, JournalError> {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                if e.code() == Some("NOGROUP") {
                    // The server lost the groups (restarted without persistence).
                    self.groups.store(false, Ordering::Relaxed);
                }
                Err(JournalError::new(format!("redis at {}: {e}", self.target)))
            }
            Err(_) => Err(JournalError::new(format!(
                "redis at {}: no answer within {} ms",
                self.target,
                self.timeout.as_millis()
            ))),
        }
    }

    fn stream(&self, lane: Lane) -> &str {
        match lane {
            Lane::Run => &self.keys.run,
            Lane::Deliver => &self.keys.deliver,
        }
    }

    /// Creates the consumer groups once (an existing group is fine), and says once
    /// whether Redis syncs writes to disk.
    async fn ensure_groups(&self) -> Result<(), JournalError> {
        if self.groups.load(Ordering::Relaxed) {
            return Ok(());
        }
        for stream in [&self.keys.run, &self.keys.deliver] {
            let created: Result<(), JournalError> = self
                .run(
                    self.conn.query(
                        redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(stream)
                            .arg(GROUP)
                            .arg("0")
                            .arg("MKSTREAM"),
                    ),
                )
                .await;
            match created {
                Ok(()) => {}
                Err(e) if e.to_string().contains("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        self.groups.store(true, Ordering::Relaxed);
        self.check_persistence().await;
        Ok(())
    }

    /// Warns when the server does not fsync every write: a `202` would then not survive
    /// a Redis crash. A server that refuses `CONFIG` (managed Redis) is not warned about.
    async fn check_persistence(&self) {
        let get = |name: &'static str| async move {
            self.run(
                self.conn
                    .query::<Vec<String>>(redis::cmd("CONFIG").arg("GET").arg(name)),
            )
            .await
            .ok()
            .and_then(|v| v.get(1).cloned())
        };
        let (Some(aof), Some(fsync)) = (get("appendonly").await, get("appendfsync").await) else {
            return;
        };
        if aof != "yes" || fsync != "always" {
            tracing::warn!(
                redis = %self.target,
                appendonly = %aof,
                appendfsync = %fsync,
                "accepted async jobs survive a Redis crash only with appendonly yes and appendfsync always"
            );
        }
    }

    /// Takes over one entry of `lane` whose claim has been idle past the visibility
    /// timeout, looking at most every quarter of it.
    async fn reclaim(&self, lane: Lane) -> Result<Option<Claim>, JournalError> {
        let now = now_ms();
        let every = u64::try_from(self.visibility.as_millis() / 4).unwrap_or(u64::MAX);
        let last = &self.reclaimed[lane as usize];
        if now.saturating_sub(last.load(Ordering::Relaxed)) < every {
            return Ok(None);
        }
        let reply: StreamAutoClaimReply = self
            .run(
                self.conn.query(
                    redis::cmd("XAUTOCLAIM")
                        .arg(self.stream(lane))
                        .arg(GROUP)
                        .arg(&self.consumer)
                        .arg(u64::try_from(self.visibility.as_millis()).unwrap_or(u64::MAX))
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(1),
                ),
            )
            .await?;
        match reply.claimed.into_iter().next() {
            Some(entry) => {
                tracing::info!(lane = lane.name(), entry = %entry.id, "took over a claim its process left");
                // More may be waiting: look again at once.
                Ok(Some(self.claim(lane, entry)))
            }
            None => {
                last.store(now, Ordering::Relaxed);
                Ok(None)
            }
        }
    }

    /// Reads one new entry of `lane`, without blocking the shared connection.
    async fn read(&self, lane: Lane) -> Result<Option<Claim>, JournalError> {
        let reply: Option<StreamReadReply> = self
            .run(
                self.conn.query(
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(&self.consumer)
                        .arg("COUNT")
                        .arg(1)
                        .arg("STREAMS")
                        .arg(self.stream(lane))
                        .arg(">"),
                ),
            )
            .await?;
        Ok(reply
            .and_then(|r| r.keys.into_iter().next())
            .and_then(|k| k.ids.into_iter().next())
            .map(|entry| self.claim(lane, entry)))
    }

    fn claim(&self, lane: Lane, entry: StreamId) -> Claim {
        Claim {
            id: entry.get::<String>("id").unwrap_or_default(),
            entry: entry.id,
            delivery: matches!(lane, Lane::Deliver),
        }
    }

    /// Waits for the next entry of `lane`: an abandoned one first, then a new one.
    async fn next(&self, lane: Lane) -> Result<Claim, JournalError> {
        let wake = match lane {
            Lane::Run => &self.accepted,
            Lane::Deliver => &self.finished,
        };
        loop {
            self.ensure_groups().await?;
            let claim = match self.reclaim(lane).await? {
                Some(c) => Some(c),
                None => self.read(lane).await?,
            };
            match claim {
                // An entry without a job id cannot be run: acknowledge it away.
                Some(c) if c.id.is_empty() => self.drop_entry(lane, &c.entry).await?,
                Some(c) => return Ok(c),
                None => {
                    tokio::select! {
                        () = wake.notified() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
            }
        }
    }

    async fn drop_entry(&self, lane: Lane, entry: &str) -> Result<(), JournalError> {
        tracing::warn!(
            lane = lane.name(),
            entry,
            "dropping a lane entry without a job id"
        );
        let stream = self.stream(lane);
        self.run(
            self.conn
                .query::<()>(redis::cmd("XACK").arg(stream).arg(GROUP).arg(entry)),
        )
        .await?;
        self.run(
            self.conn
                .query::<()>(redis::cmd("XDEL").arg(stream).arg(entry)),
        )
        .await
    }
}

impl Lane {
    fn name(self) -> &'static str {
        match self {
            Lane::Run => "run",
            Lane::Deliver => "deliver",
        }
    }
}

fn to_json(job: &Job) -> Result<String, JournalError> {
    serde_json::to_string(job).map_err(|e| JournalError::new(e.to_string()))
}

fn from_json(id: &str, text: &str) -> Result<Job, JournalError> {
    serde_json::from_str(text)
        .map_err(|e| JournalError::new(format!("job {id} is unreadable: {e}")))
}

impl Store for Fleet {
    fn accept<'a>(
        &'a self,
        job: &'a Job,
        bounds: Bounds,
    ) -> BoxFuture<'a, Result<(), AcceptError>> {
        Box::pin(async move {
            let json = to_json(job)?;
            let mut call = self.scripts.accept.prepare_invoke();
            call.key(self.keys.job(&job.id))
                .key(&self.keys.run)
                .key(&self.keys.pending)
                .arg(json)
                .arg(&job.id)
                .arg(job.size())
                .arg(&job.route)
                .arg(bounds.jobs)
                .arg(bounds.bytes);
            let answer: String = self.run(self.conn.invoke(call)).await?;
            match answer.as_str() {
                "ok" => {
                    self.accepted.notify_one();
                    Ok(())
                }
                "jobs" => Err(AcceptError::QueueFull("max_pending jobs are waiting")),
                _ => Err(AcceptError::QueueFull("max_pending_bytes are waiting")),
            }
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, JournalError>> {
        Box::pin(async move {
            let text: Option<String> = self
                .run(self.conn.query(redis::cmd("GET").arg(self.keys.job(id))))
                .await?;
            text.map(|t| from_json(id, &t)).transpose()
        })
    }

    fn put<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, JournalError>> {
        Box::pin(async move {
            let what = if job.state == JobState::Running {
                "run"
            } else {
                "delivery"
            };
            let mut call = self.scripts.progress.prepare_invoke();
            call.key(self.keys.job(&job.id))
                .arg(to_json(job)?)
                .arg(what);
            let stored: i64 = self.run(self.conn.invoke(call)).await?;
            Ok(stored == 1)
        })
    }

    fn next_run(&self) -> BoxFuture<'_, Result<Claim, JournalError>> {
        Box::pin(self.next(Lane::Run))
    }

    fn finish<'a>(
        &'a self,
        job: &'a Job,
        claim: &'a Claim,
        record: bool,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let json = if record { to_json(job)? } else { String::new() };
            let owes = owes_webhook(job);
            let mut call = self.scripts.finish.prepare_invoke();
            call.key(self.keys.job(&job.id))
                .key(&self.keys.run)
                .key(&self.keys.pending)
                .key(&self.keys.deliver)
                .arg(json)
                .arg(&claim.entry)
                .arg(job.size())
                .arg(&job.route)
                .arg(if owes { "1" } else { "0" })
                .arg(self.retention_ms)
                .arg(GROUP)
                .arg(&job.id);
            let _: i64 = self.run(self.conn.invoke(call)).await?;
            if owes && record {
                self.finished.notify_one();
            }
            Ok(())
        })
    }

    fn next_delivery(&self) -> BoxFuture<'_, Result<Claim, JournalError>> {
        Box::pin(self.next(Lane::Deliver))
    }

    fn settle<'a>(
        &'a self,
        job: &'a Job,
        claim: &'a Claim,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let json = to_json(job)?;
            let mut call = self.scripts.settle.prepare_invoke();
            call.key(self.keys.job(&job.id))
                .key(&self.keys.deliver)
                .key(&self.keys.dead)
                .arg(json)
                .arg(&claim.entry)
                .arg(self.retention_ms)
                .arg(if job.state == JobState::Dead {
                    "1"
                } else {
                    "0"
                })
                .arg(&job.id)
                .arg(now_ms())
                .arg(GROUP);
            let _: i64 = self.run(self.conn.invoke(call)).await?;
            Ok(())
        })
    }

    fn touch<'a>(&'a self, claim: &'a Claim) -> BoxFuture<'a, ()> {
        let lane = if claim.delivery {
            Lane::Deliver
        } else {
            Lane::Run
        };
        Box::pin(async move {
            let renewed: Result<Vec<String>, _> = self
                .run(
                    self.conn.query(
                        redis::cmd("XCLAIM")
                            .arg(self.stream(lane))
                            .arg(GROUP)
                            .arg(&self.consumer)
                            .arg(0)
                            .arg(&claim.entry)
                            .arg("JUSTID"),
                    ),
                )
                .await;
            if let Err(e) = renewed {
                tracing::warn!(job = %claim.id, error = %e, "cannot renew a job's claim");
            }
        })
    }

    fn redeliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let mut call = self.scripts.redeliver.prepare_invoke();
            call.key(self.keys.job(&job.id))
                .key(&self.keys.deliver)
                .key(&self.keys.dead)
                .arg(to_json(job)?)
                .arg(&job.id);
            let _: i64 = self.run(self.conn.invoke(call)).await?;
            self.finished.notify_one();
            Ok(())
        })
    }

    fn requeue<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            let mut call = self.scripts.requeue.prepare_invoke();
            call.key(self.keys.job(&job.id))
                .key(&self.keys.run)
                .key(&self.keys.pending)
                .key(&self.keys.dead)
                .arg(to_json(job)?)
                .arg(&job.id)
                .arg(job.size())
                .arg(&job.route);
            let _: i64 = self.run(self.conn.invoke(call)).await?;
            self.accepted.notify_one();
            Ok(())
        })
    }

    fn dead(&self) -> BoxFuture<'_, Result<Vec<Job>, JournalError>> {
        Box::pin(async move {
            let ids: Vec<String> = self
                .run(
                    self.conn
                        .query(redis::cmd("ZRANGE").arg(&self.keys.dead).arg(0).arg(-1)),
                )
                .await?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                // Purged after its retention: the set forgets it too.
                match self.get(&id).await? {
                    Some(job) if job.state == JobState::Dead => out.push(job),
                    _ => {
                        self.run(
                            self.conn
                                .query::<()>(redis::cmd("ZREM").arg(&self.keys.dead).arg(&id)),
                        )
                        .await?;
                    }
                }
            }
            Ok(out)
        })
    }

    fn purge(&self, _cutoff_ms: u64) -> BoxFuture<'_, Result<usize, JournalError>> {
        // Finished jobs expire by themselves (their keys carry the retention).
        Box::pin(std::future::ready(Ok(0)))
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, JournalError>> {
        Box::pin(async move {
            let counts: Vec<(String, i64)> = self
                .run(
                    self.conn
                        .query(redis::cmd("HGETALL").arg(&self.keys.pending)),
                )
                .await?;
            let oldest: StreamRangeReply = self
                .run(
                    self.conn.query(
                        redis::cmd("XRANGE")
                            .arg(&self.keys.run)
                            .arg("-")
                            .arg("+")
                            .arg("COUNT")
                            .arg(1),
                    ),
                )
                .await?;
            let mut stats = QueueStats::default();
            let count = |n: i64| u64::try_from(n).unwrap_or(0);
            for (field, n) in counts {
                match field.as_str() {
                    "count" => stats.pending = count(n),
                    "bytes" => stats.bytes = count(n),
                    _ => {
                        if let Some(route) = field.strip_prefix("route:") {
                            stats.routes.insert(route.to_owned(), count(n));
                        }
                    }
                }
            }
            // An entry id starts with the server's time when it was added, in ms.
            stats.oldest_accepted_ms = oldest
                .ids
                .first()
                .and_then(|e| e.id.split('-').next()?.parse().ok());
            Ok(stats)
        })
    }

    fn shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;
    use crate::jobs::test_job as job;
    use crate::jobs::{Blob, JobResult};
    use crate::state::redis::test_server::RedisServer;

    fn fleet(url: String) -> Fleet {
        let redis = RedisConfig {
            url: Some(url),
            cluster: None,
            username: None,
            password: None,
            prefix: "t:".to_owned(),
            timeout: HumanDuration(Duration::from_millis(500)),
            ca: None,
        };
        let jobs: JobsConfig = toml::from_str("store = \"redis\"").unwrap();
        Fleet::new(&redis, &jobs).unwrap()
    }

    const BOUNDS: Bounds = Bounds {
        jobs: 10,
        bytes: 1 << 20,
    };

    /// A process taken for dead that was not: the first run to end records the outcome
    /// and releases the bound once; the late one changes nothing, and cannot mark the
    /// finished job `running` again.
    #[tokio::test]
    async fn a_second_claim_on_a_finished_job_changes_nothing() {
        let server = RedisServer::start();
        let store = fleet(server.url());
        store.accept(&job("a"), BOUNDS).await.unwrap();
        let claim = store.next_run().await.unwrap();
        assert_eq!(claim.id, "a");
        let mut running = job("a");
        running.state = JobState::Running;
        assert!(store.put(&running).await.unwrap());
        assert_eq!(store.stats().await.unwrap().pending, 1);

        let mut done = running.clone();
        done.state = JobState::Succeeded;
        done.finished_at_ms = Some(2);
        done.result = Some(JobResult {
            status: 200,
            headers: vec![],
            body: Blob(b"first".to_vec()),
        });
        store.finish(&done, &claim, true).await.unwrap();
        let stats = store.stats().await.unwrap();
        assert_eq!((stats.pending, stats.bytes), (0, 0));
        assert!(stats.routes.is_empty(), "{stats:?}");

        // The late run: it cannot start over the outcome, nor replace it.
        assert!(!store.put(&running).await.unwrap());
        let mut late = done.clone();
        late.result.as_mut().unwrap().body = Blob(b"second".to_vec());
        store.finish(&late, &claim, true).await.unwrap();
        let stored = store.get("a").await.unwrap().unwrap();
        assert_eq!(stored.state, JobState::Succeeded);
        assert_eq!(stored.result.unwrap().body.0, b"first");
        assert_eq!(store.stats().await.unwrap().pending, 0, "released twice");
    }

    #[tokio::test]
    async fn the_bounds_hold_and_an_empty_redis_takes_jobs_again() {
        let mut server = RedisServer::start();
        let store = fleet(server.url());
        let small = Bounds {
            jobs: 2,
            bytes: 1 << 20,
        };
        store.accept(&job("a"), small).await.unwrap();
        store.accept(&job("b"), small).await.unwrap();
        let full = store.accept(&job("c"), small).await.unwrap_err();
        assert!(matches!(full, AcceptError::QueueFull(_)), "{full}");
        let bytes = Bounds {
            jobs: 10,
            bytes: 10,
        };
        assert!(matches!(
            store.accept(&job("d"), bytes).await.unwrap_err(),
            AcceptError::QueueFull("max_pending_bytes are waiting")
        ));
        // The oldest pending entry's time is the server's clock when it was added.
        let oldest = store.stats().await.unwrap().oldest_accepted_ms.unwrap();
        assert!(oldest > 1_600_000_000_000, "{oldest}");

        // Restarted empty: the first exchanges fail while the connection is made
        // again, the groups are gone (NOGROUP) and are made again on the next read.
        server.restart();
        let mut accepted = Err(AcceptError::ShuttingDown);
        for _ in 0..40 {
            accepted = store.accept(&job("e"), small).await;
            if accepted.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        accepted.unwrap();
        let mut claim = store.next_run().await;
        for _ in 0..40 {
            if claim.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            claim = store.next_run().await;
        }
        assert_eq!(claim.unwrap().id, "e");
    }
}
