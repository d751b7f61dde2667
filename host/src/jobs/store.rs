//! Where jobs are kept and how they are handed to workers: the [`Store`] trait, and its
//! embedded implementation over the redb [`Journal`] (one process). The fleet's, over
//! Redis Streams, is in [`super::fleet`].
//!
//! A job passes through two lanes. The *run* lane holds jobs accepted and not yet
//! finished; a worker takes one as a [`Claim`] and gives it back with
//! [`Store::finish`]. The *delivery* lane holds finished jobs whose webhook is still
//! owed; a deliverer takes one and gives it back with [`Store::settle`]. A claim that
//! is never given back (the process died) returns to its lane: at the next start for
//! the embedded store, after the visibility timeout for the fleet's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::journal::{Journal, JournalError};
use super::{AcceptError, DeliveryState, Job, JobState};
use crate::state::BoxFuture;

/// A job taken from a lane. Give it back with [`Store::finish`] or [`Store::settle`];
/// one that is dropped returns to its lane later.
#[derive(Debug, Clone)]
pub struct Claim {
    /// The job's id.
    pub id: String,
    /// The store's handle on the lane's entry (a stream entry id for the fleet's).
    pub(super) entry: String,
    /// Whether it is from the delivery lane.
    pub(super) delivery: bool,
}

/// How many jobs may wait, and how many request bytes.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The most jobs queued or running.
    pub jobs: u64,
    /// The most request bytes of those jobs.
    pub bytes: u64,
}

/// The run lane, as `/status` and the metrics show it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QueueStats {
    /// Jobs queued or running.
    pub pending: u64,
    /// Their request bytes.
    pub bytes: u64,
    /// When the oldest of them was accepted (Unix ms).
    pub oldest_accepted_ms: Option<u64>,
    /// Jobs queued or running, by route.
    pub routes: HashMap<String, u64>,
}

/// The job store.
pub trait Store: Send + Sync + 'static {
    /// Stores `job` durably and puts it in the run lane, unless the lane is at `bounds`.
    /// Returns only once the job is stored: an error means nothing was accepted.
    fn accept<'a>(&'a self, job: &'a Job, bounds: Bounds)
    -> BoxFuture<'a, Result<(), AcceptError>>;
    /// The job with this id.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, JournalError>>;
    /// Records a job's progress: a run started (`job` is `running`) or a delivery
    /// attempt failed. `Ok(false)` when another claim has moved the job on meanwhile (it
    /// finished, or its webhook was settled): nothing was written, and the caller stops.
    fn put<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, JournalError>>;
    /// Waits for the next job to run.
    fn next_run(&self) -> BoxFuture<'_, Result<Claim, JournalError>>;
    /// Gives back a run claim: the job leaves the run lane. With `record`, `job` is its
    /// final state, written, and a job that owes a webhook joins the delivery lane;
    /// without, the job was found final already (another claim ran it) and stays as
    /// it is.
    fn finish<'a>(
        &'a self,
        job: &'a Job,
        claim: &'a Claim,
        record: bool,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Waits for the next webhook to deliver.
    fn next_delivery(&self) -> BoxFuture<'_, Result<Claim, JournalError>>;
    /// Records `job` as its delivery ended (delivered, gone or dead; or found so) and
    /// gives back the claim: it leaves the delivery lane.
    fn settle<'a>(
        &'a self,
        job: &'a Job,
        claim: &'a Claim,
    ) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Keeps `claim` from returning to its lane while it is worked on. Called only on
    /// a [`Store::shared`] store: the others' claims never time out.
    fn touch<'a>(&'a self, claim: &'a Claim) -> BoxFuture<'a, ()>;
    /// Puts a dead job back in the delivery lane, its delivery reset.
    fn redeliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Puts a finished job back in the run lane (an operator's re-run), outside the
    /// bounds.
    fn requeue<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JournalError>>;
    /// Dead jobs, oldest first.
    fn dead(&self) -> BoxFuture<'_, Result<Vec<Job>, JournalError>>;
    /// Removes finished jobs that finished at or before `cutoff_ms` and owe no webhook.
    fn purge(&self, cutoff_ms: u64) -> BoxFuture<'_, Result<usize, JournalError>>;
    /// The run lane now.
    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, JournalError>>;
    /// Whether other processes run this store's jobs too (and so claims time out).
    fn shared(&self) -> bool;
}

/// What the embedded store's run lane holds: the jobs themselves, as last written, so
/// that a worker (and a client polling) reads a live job without the journal; and
/// their bytes, for the bound.
#[derive(Default)]
struct Pending {
    bytes: u64,
    jobs: HashMap<String, Job>,
}

impl Pending {
    fn add(&mut self, job: &Job) {
        if let Some(old) = self.jobs.insert(job.id.clone(), job.clone()) {
            self.bytes = self.bytes.saturating_sub(old.size());
        }
        self.bytes += job.size();
    }

    fn remove(&mut self, id: &str) {
        if let Some(old) = self.jobs.remove(id) {
            self.bytes = self.bytes.saturating_sub(old.size());
        }
    }
}

/// One process's store: the redb journal, and its lanes in memory, rebuilt from the
/// journal at start.
pub struct Embedded {
    journal: Arc<Journal>,
    pending: Mutex<Pending>,
    runs: Lane,
    deliveries: Lane,
    /// Jobs found unfinished at open, whose next start is written durably.
    recovered: Mutex<std::collections::HashSet<String>>,
}

/// An in-memory lane of job ids.
struct Lane {
    tx: mpsc::UnboundedSender<String>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>,
    delivery: bool,
}

impl Lane {
    fn new(delivery: bool) -> Lane {
        let (tx, rx) = mpsc::unbounded_channel();
        Lane {
            tx,
            rx: tokio::sync::Mutex::new(rx),
            delivery,
        }
    }

    fn push(&self, id: String) {
        // The receiver lives as long as the lane.
        let _ = self.tx.send(id);
    }

    async fn next(&self) -> Result<Claim, JournalError> {
        match self.rx.lock().await.recv().await {
            Some(id) => Ok(Claim {
                id,
                entry: String::new(),
                delivery: self.delivery,
            }),
            None => Err(JournalError::new("the lane is closed".to_owned())),
        }
    }
}

impl Embedded {
    /// Opens the journal; jobs left queued or running go back to the run lane, webhooks
    /// still owed to the delivery lane.
    pub fn open(journal: Journal) -> Result<Embedded, JournalError> {
        let mut jobs = journal.all()?;
        jobs.sort_by_key(|j| j.accepted_at_ms);
        let store = Embedded {
            journal: Arc::new(journal),
            pending: Mutex::new(Pending::default()),
            runs: Lane::new(false),
            deliveries: Lane::new(true),
            recovered: Mutex::default(),
        };
        let mut requeued = 0;
        for job in jobs {
            if !job.state.is_final() {
                store.pending().add(&job);
                store
                    .recovered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(job.id.clone());
                store.runs.push(job.id);
                requeued += 1;
            } else if owes_webhook(&job) {
                store.deliveries.push(job.id);
            }
        }
        if requeued > 0 {
            tracing::info!(jobs = requeued, "re-running jobs left queued or running");
        }
        Ok(store)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs a blocking journal call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Journal) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let journal = self.journal.clone();
        tokio::task::spawn_blocking(move || f(&journal))
            .await
            .unwrap_or_else(|e| Err(JournalError::new(format!("journal task failed: {e}"))))
    }

    /// Writes `job`, synced to disk before it returns.
    async fn write(&self, job: &Job) -> Result<(), JournalError> {
        self.journal.put_async(job, true).await
    }
}

/// Whether `job` still owes its webhook.
pub(super) fn owes_webhook(job: &Job) -> bool {
    job.webhook
        .as_ref()
        .is_some_and(|w| w.state == DeliveryState::Pending)
}

impl Store for Embedded {
    fn accept<'a>(
        &'a self,
        job: &'a Job,
        bounds: Bounds,
    ) -> BoxFuture<'a, Result<(), AcceptError>> {
        Box::pin(async move {
            {
                let mut p = self.pending();
                if p.jobs.len() as u64 >= bounds.jobs {
                    return Err(AcceptError::QueueFull("max_pending jobs are waiting"));
                }
                if p.bytes + job.size() > bounds.bytes {
                    return Err(AcceptError::QueueFull("max_pending_bytes are waiting"));
                }
                // Counted before the write, so concurrent requests cannot pass the bound.
                p.add(job);
            }
            if let Err(e) = self.write(job).await {
                self.pending().remove(&job.id);
                return Err(e.into());
            }
            self.runs.push(job.id.clone());
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Job>, JournalError>> {
        if let Some(job) = self.pending().jobs.get(id) {
            return Box::pin(std::future::ready(Ok(Some(job.clone()))));
        }
        let id = id.to_owned();
        Box::pin(self.blocking(move |j| j.get(&id)))
    }

    fn put<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<bool, JournalError>> {
        // One process holds every claim: nothing else moves a job on. Progress needs no
        // fsync of its own: a crash that loses it leaves the job queued (it runs again)
        // or its webhook owed (it is sent again), which is what a crash does anyway.
        // Except the start of a job found unfinished at open: that one is how the next
        // open knows its run was cut off again, and a job that crashes weir each time it
        // runs must be seen to, or it crash-loops (see `MAX_CUT_OFF_RUNS`). Starts in
        // normal running stay unsynced: a crash loses at most one start per job, so a
        // poison job is caught one run later.
        let durable = job.state == JobState::Running
            && self
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&job.id);
        Box::pin(async move {
            self.journal.put_async(job, durable).await?;
            let mut p = self.pending();
            if p.jobs.contains_key(&job.id) {
                p.add(job);
            }
            Ok(true)
        })
    }

    fn next_run(&self) -> BoxFuture<'_, Result<Claim, JournalError>> {
        Box::pin(self.runs.next())
    }

    fn finish<'a>(
        &'a self,
        job: &'a Job,
        _claim: &'a Claim,
        record: bool,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            if !record {
                self.pending().remove(&job.id);
                return Ok(());
            }
            self.write(job).await?;
            self.pending().remove(&job.id);
            if owes_webhook(job) {
                self.deliveries.push(job.id.clone());
            }
            Ok(())
        })
    }

    fn next_delivery(&self) -> BoxFuture<'_, Result<Claim, JournalError>> {
        Box::pin(self.deliveries.next())
    }

    fn settle<'a>(
        &'a self,
        job: &'a Job,
        _claim: &'a Claim,
    ) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(self.write(job))
    }

    fn touch<'a>(&'a self, _claim: &'a Claim) -> BoxFuture<'a, ()> {
        // One process: its claims end with it, and are rebuilt at the next start.
        Box::pin(std::future::ready(()))
    }

    fn redeliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write(job).await?;
            self.deliveries.push(job.id.clone());
            Ok(())
        })
    }

    fn requeue<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Result<(), JournalError>> {
        Box::pin(async move {
            self.write(job).await?;
            self.pending().add(job);
            self.runs.push(job.id.clone());
            Ok(())
        })
    }

    fn dead(&self) -> BoxFuture<'_, Result<Vec<Job>, JournalError>> {
        Box::pin(async move {
            let mut dead: Vec<Job> = self
                .blocking(Journal::all)
                .await?
                .into_iter()
                .filter(|j| j.state == super::JobState::Dead)
                .collect();
            dead.sort_by_key(|j| j.finished_at_ms);
            Ok(dead)
        })
    }

    fn purge(&self, cutoff_ms: u64) -> BoxFuture<'_, Result<usize, JournalError>> {
        Box::pin(self.blocking(move |j| j.purge(cutoff_ms)))
    }

    fn stats(&self) -> BoxFuture<'_, Result<QueueStats, JournalError>> {
        let p = self.pending();
        let mut stats = QueueStats {
            pending: p.jobs.len() as u64,
            bytes: p.bytes,
            ..QueueStats::default()
        };
        for job in p.jobs.values() {
            *stats.routes.entry(job.route.clone()).or_default() += 1;
            let at = job.accepted_at_ms;
            stats.oldest_accepted_ms = Some(stats.oldest_accepted_ms.map_or(at, |o| o.min(at)));
        }
        Box::pin(std::future::ready(Ok(stats)))
    }

    fn shared(&self) -> bool {
        false
    }
}
