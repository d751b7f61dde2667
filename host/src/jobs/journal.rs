//! The embedded journal: one redb file holding every job, written with an fsync'd
//! commit before weir answers 202 for it.
//!
//! Each job is one row, its [`Job`] as JSON under its id. Reads block (redb does file
//! I/O on the calling thread), so the async side runs them on `spawn_blocking`; writes
//! from a task ([`Journal::put_async`]) go to the writer thread and are answered there,
//! with no blocking thread in between.
//!
//! Writes are group-committed. [`Journal::put`] and [`Journal::remove`] queue their
//! write for one writer thread, which takes every write queued so far into one write
//! transaction, commits it with an fsync, and answers each caller with that commit's
//! result. While one commit syncs, the next batch queues, so under load one fsync
//! stores many jobs: one fsync per job would cap acceptance at the disk's sync rate. A
//! caller still returns only once its write is on disk, and a commit that fails fails
//! every write in it: none of them is answered as stored.
//!
//! A failed write does not end the journal. After an I/O error (a full disk, a failing
//! device) redb refuses every further operation until the file is opened again, so the
//! journal closes it and opens it again (redb repairs it from its last commit) at its
//! next use. Once the disk has room, the journal takes writes again by itself, with no
//! restart; until then each write fails.

use std::mem;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock, mpsc};
use std::thread;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::Job;

/// Every job, by id.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
/// Finished jobs that owe no webhook, by `<finished ms, 16 hex digits>/<id>`: the purge
/// reads the expired ones in order instead of every job.
const FINISHED: TableDefinition<&str, ()> = TableDefinition::new("finished");

/// `job`'s key in [`FINISHED`], once nothing more happens to it but the purge.
fn finished_key(job: &Job) -> Option<String> {
    let at = job.finished_at_ms?;
    (job.state.is_final() && !super::store::owes_webhook(job))
        .then(|| format!("{at:016x}/{}", job.id))
}

/// The journal could not be opened, read or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("job journal: {message}")]
pub struct JournalError {
    message: String,
    /// The file failed (an I/O error): redb takes nothing more until it is reopened.
    io: bool,
}

impl JournalError {
    /// An error with this message.
    pub fn new(message: String) -> JournalError {
        JournalError { message, io: false }
    }
}

fn fail(e: impl Into<redb::Error>) -> JournalError {
    let e = e.into();
    JournalError {
        io: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
        message: e.to_string(),
    }
}

/// Opens the database again, after an I/O error closed it.
type Reopen = Box<dyn Fn() -> Result<Database, JournalError> + Send + Sync>;

/// The database, closed by an I/O error and opened again at its next use.
struct Db {
    /// `None` while closed after an I/O error.
    current: RwLock<Option<Arc<Database>>>,
    reopen: Reopen,
}

impl Db {
    fn new(db: Database, reopen: Reopen) -> Db {
        Db {
            current: RwLock::new(Some(Arc::new(db))),
            reopen,
        }
    }

    /// Runs `f` on the database, opening it first if an I/O error closed it; an I/O
    /// error in `f` closes it.
    fn with<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let open = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let db = match open {
            Some(db) => db,
            None => {
                let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                match &*current {
                    Some(db) => db.clone(),
                    None => {
                        // A caller still holding the old database keeps its file locked:
                        // the open then fails, and the next use tries again.
                        let db = Arc::new((self.reopen)()?);
                        tracing::info!("the job journal is open again");
                        *current = Some(db.clone());
                        db
                    }
                }
            }
        };
        self.run(&db, f)
    }

    fn run<T>(
        &self,
        db: &Arc<Database>,
        f: impl FnOnce(&Database) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        let result = f(db);
        if let Err(e) = &result
            && e.io
        {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, db)) {
                tracing::warn!(error = %e, "the job journal's file failed; it is closed and reopened at the next write");
                *current = None;
            }
        }
        result
    }
}

/// The open journal file.
pub struct Journal {
    db: Arc<Db>,
    queue: Arc<Queue>,
    /// The writer thread, joined on drop so that the file is closed when the journal is.
    writer: Option<thread::JoinHandle<()>>,
}

/// The writes waiting for the writer thread.
struct Queue {
    state: Mutex<QueueState>,
    /// Signalled when a write is queued or the journal closes.
    ready: Condvar,
    /// Write transactions the writer has run, each one commit (and fsync).
    commits: AtomicU64,
}

#[derive(Default)]
struct QueueState {
    writes: Vec<Write>,
    /// No more writes are taken: the journal was dropped, or its writer stopped.
    closed: bool,
}

/// One caller's write and where its commit's result goes.
struct Write {
    op: Op,
    /// Whether its commit must be on disk before the caller hears back. A batch of
    /// writes none of which needs it commits without an fsync; the next synced commit
    /// carries it to disk.
    durable: bool,
    done: Done,
}

/// Where a write's result goes: a blocked thread, or an awaiting task.
enum Done {
    Thread(mpsc::SyncSender<Result<usize, JournalError>>),
    Task(tokio::sync::oneshot::Sender<Result<usize, JournalError>>),
}

impl Done {
    fn send(self, result: Result<usize, JournalError>) {
        // A caller that has gone (its task cancelled) needs no answer.
        let _ = match self {
            Done::Thread(tx) => tx.send(result).map_err(drop),
            Done::Task(tx) => tx.send(result).map_err(drop),
        };
    }
}

enum Op {
    /// Stores a job's row, and its [`FINISHED`] entry when it has one.
    Put {
        id: String,
        value: Vec<u8>,
        finished: Option<String>,
    },
    /// Removes the jobs finished at or before this time (Unix ms) that owe no webhook.
    Purge(u64),
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Journal {
    /// Opens `path`, creating the file (and its table) when missing. A file left by a
    /// crash is repaired by redb here.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let open = |path: &PathBuf| {
            Database::create(path).map_err(|e| {
                let e = fail(e);
                JournalError {
                    message: format!("cannot open {}: {}", path.display(), e.message),
                    ..e
                }
            })
        };
        let path = path.to_owned();
        let db = open(&path)?;
        Journal::start(db, Box::new(move || open(&path)))
    }

    /// Creates the table when missing and starts the writer thread; `reopen` opens the
    /// same database again.
    fn start(db: Database, reopen: Reopen) -> Result<Journal, JournalError> {
        let txn = db.begin_write().map_err(fail)?;
        {
            let jobs = txn.open_table(JOBS).map_err(fail)?;
            let mut finished = txn.open_table(FINISHED).map_err(fail)?;
            // A journal written before the index: index its finished jobs once.
            if finished.is_empty().map_err(fail)? {
                for row in jobs.iter().map_err(fail)? {
                    let (_, value) = row.map_err(fail)?;
                    let key = serde_json::from_slice::<Job>(value.value())
                        .ok()
                        .and_then(|job| finished_key(&job));
                    if let Some(key) = key {
                        finished.insert(key.as_str(), ()).map_err(fail)?;
                    }
                }
            }
        }
        txn.commit().map_err(fail)?;
        let db = Arc::new(Db::new(db, reopen));
        let queue = Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            commits: AtomicU64::new(0),
        });
        let writer = {
            let (db, queue) = (db.clone(), queue.clone());
            thread::Builder::new()
                .name("weir-journal".to_owned())
                .spawn(move || write_loop(&db, &queue))
                .map_err(|e| JournalError::new(format!("cannot start the writer thread: {e}")))?
        };
        Ok(Journal {
            db,
            queue,
            writer: Some(writer),
        })
    }

    /// Writes `job` and returns once the commit is on disk (fsync'd).
    pub fn put(&self, job: &Job) -> Result<(), JournalError> {
        self.write(put(job)?).map(drop)
    }

    /// Writes `job` from a task, without a blocking thread: the writer thread answers
    /// the task directly. With `durable`, it returns once the commit is on disk; without
    /// (progress that a crash may lose: the job's previous state still stands), once
    /// it is committed, and the next durable commit takes it to disk.
    pub async fn put_async(&self, job: &Job, durable: bool) -> Result<(), JournalError> {
        let (done, result) = tokio::sync::oneshot::channel();
        self.enqueue(Write {
            op: put(job)?,
            durable,
            done: Done::Task(done),
        })?;
        result.await.unwrap_or_else(|_| Err(stopped())).map(drop)
    }

    /// The job with this id, if the journal has it.
    pub fn get(&self, id: &str) -> Result<Option<Job>, JournalError> {
        self.db.with(|db| {
            let txn = db.begin_read().map_err(fail)?;
            let table = txn.open_table(JOBS).map_err(fail)?;
            let Some(row) = table.get(id).map_err(fail)? else {
                return Ok(None);
            };
            serde_json::from_slice(row.value())
                .map(Some)
                .map_err(|e| JournalError::new(format!("job {id} is unreadable: {e}")))
        })
    }

    /// Every job. A row that does not parse is skipped with a warning: one bad row must
    /// not keep weir from starting.
    pub fn all(&self) -> Result<Vec<Job>, JournalError> {
        self.db.with(|db| {
            let txn = db.begin_read().map_err(fail)?;
            let table = txn.open_table(JOBS).map_err(fail)?;
            let mut out = Vec::new();
            for row in table.iter().map_err(fail)? {
                let (key, value) = row.map_err(fail)?;
                match serde_json::from_slice(value.value()) {
                    Ok(job) => out.push(job),
                    Err(e) => {
                        tracing::warn!(job = key.value(), error = %e, "skipping an unreadable job")
                    }
                }
            }
            Ok(out)
        })
    }

    /// Removes the jobs that finished at or before `cutoff_ms` and owe no webhook, in
    /// one commit, and says how many. It reads only those jobs' index entries.
    pub fn purge(&self, cutoff_ms: u64) -> Result<usize, JournalError> {
        self.write(Op::Purge(cutoff_ms))
    }

    /// How many write transactions the journal has committed (or tried to) since it
    /// opened. Under concurrent puts it stays below their number: that is the group
    /// commit at work.
    pub fn commits(&self) -> u64 {
        self.queue.commits.load(Ordering::Relaxed)
    }

    /// Queues `op` for the writer and waits for its durable commit.
    fn write(&self, op: Op) -> Result<usize, JournalError> {
        let (done, result) = mpsc::sync_channel(1);
        self.enqueue(Write {
            op,
            durable: true,
            done: Done::Thread(done),
        })?;
        // A writer that stops drops every queued sender, so this never waits forever.
        result.recv().unwrap_or_else(|_| Err(stopped()))
    }

    fn enqueue(&self, write: Write) -> Result<(), JournalError> {
        {
            let mut state = self.queue.lock();
            if state.closed {
                return Err(stopped());
            }
            state.writes.push(write);
        }
        self.queue.ready.notify_one();
        Ok(())
    }

    /// Writes queued and not yet taken by the writer.
    #[cfg(test)]
    fn queued(&self) -> usize {
        self.queue.lock().writes.len()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.ready.notify_one();
        if let Some(writer) = self.writer.take() {
            // A writer that panicked has already failed its callers; nothing to add.
            let _ = writer.join();
        }
    }
}

fn put(job: &Job) -> Result<Op, JournalError> {
    let value = serde_json::to_vec(job).map_err(|e| JournalError::new(e.to_string()))?;
    Ok(Op::Put {
        id: job.id.clone(),
        value,
        finished: finished_key(job),
    })
}

fn stopped() -> JournalError {
    JournalError::new("the journal's writer has stopped".to_owned())
}

/// The writer thread: one write transaction, one commit and one fsync for every batch
/// of queued writes, until the journal closes and its queue is empty.
fn write_loop(db: &Db, queue: &Queue) {
    // Whatever ends this loop (a panic included), queued callers get an error instead
    // of waiting for a writer that is gone.
    struct Close<'a>(&'a Queue);
    impl Drop for Close<'_> {
        fn drop(&mut self) {
            let mut state = self.0.lock();
            state.closed = true;
            state.writes.clear();
        }
    }
    let _close = Close(queue);
    loop {
        {
            let mut state = queue.lock();
            while state.writes.is_empty() && !state.closed {
                state = queue.ready.wait(state).unwrap_or_else(|p| p.into_inner());
            }
            if state.writes.is_empty() {
                return;
            }
        }
        // The batch is taken only once the transaction has begun: writes queued while
        // redb's write lock was busy join this commit instead of waiting for the next.
        let mut taken = None;
        let result = db.with(|db| {
            let txn = db.begin_write().map_err(fail)?;
            commit(txn, taken.insert(mem::take(&mut queue.lock().writes)))
        });
        // Not begun (the database could not be opened): the writes queued so far fail.
        let batch = taken.unwrap_or_else(|| mem::take(&mut queue.lock().writes));
        queue.commits.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = &result {
            tracing::warn!(error = %e, writes = batch.len(), "a journal commit failed");
        }
        for write in batch {
            write.done.send(result.clone());
        }
    }
}

/// Applies `batch` in the order it was queued (the last put of a job wins) and commits;
/// the result is the number of jobs purged.
fn commit(mut txn: WriteTransaction, batch: &[Write]) -> Result<usize, JournalError> {
    // Immediate: the commit returns only after the data and the new root are synced.
    let durability = if batch.iter().any(|w| w.durable) {
        Durability::Immediate
    } else {
        Durability::None
    };
    txn.set_durability(durability).map_err(fail)?;
    let mut purged = 0;
    {
        let mut table = txn.open_table(JOBS).map_err(fail)?;
        let mut finished = txn.open_table(FINISHED).map_err(fail)?;
        for write in batch {
            match &write.op {
                Op::Put {
                    id,
                    value,
                    finished: key,
                } => {
                    table.insert(id.as_str(), value.as_slice()).map_err(fail)?;
                    if let Some(key) = key {
                        finished.insert(key.as_str(), ()).map_err(fail)?;
                    }
                }
                Op::Purge(cutoff) => {
                    // Every key up to the cutoff's sorts before `<cutoff + 1>/`.
                    let end = format!("{:016x}/", cutoff.saturating_add(1));
                    let expired: Vec<String> = finished
                        .range::<&str>(..end.as_str())
                        .map_err(fail)?
                        .map(|e| e.map(|(k, _)| k.value().to_owned()))
                        .collect::<Result<_, _>>()
                        .map_err(fail)?;
                    for key in expired {
                        finished.remove(key.as_str()).map_err(fail)?;
                        let id = key.split_once('/').map_or("", |(_, id)| id);
                        // A job run again since is no longer what the entry says.
                        let current = table
                            .get(id)
                            .map_err(fail)?
                            .and_then(|row| serde_json::from_slice::<Job>(row.value()).ok())
                            .and_then(|job| finished_key(&job));
                        if current.as_deref() == Some(key.as_str()) {
                            table.remove(id).map_err(fail)?;
                            purged += 1;
                        }
                    }
                }
            }
        }
    }
    txn.commit().map_err(fail)?;
    Ok(purged)
}

#[cfg(test)]
mod tests {
    use crate::jobs::test_job as job;
    use std::io;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    use redb::StorageBackend;
    use redb::backends::InMemoryBackend;

    use super::*;
    use crate::jobs::JobState;

    /// Waits until `n` writes are queued behind a held write lock. The writer cannot
    /// take them while the test holds the lock, so this only waits for the putting
    /// threads to reach the queue; the deadline turns a bug into a failure, not a hang.
    fn wait_queued(journal: &Journal, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while journal.queued() < n {
            assert!(Instant::now() < deadline, "{n} writes never queued");
            thread::yield_now();
        }
        assert_eq!(journal.queued(), n);
    }

    #[test]
    fn concurrent_puts_all_land_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let (threads, each) = (16, 25);
        {
            let journal = Journal::open(&path).unwrap();
            thread::scope(|s| {
                for t in 0..threads {
                    let journal = &journal;
                    s.spawn(move || {
                        for i in 0..each {
                            journal.put(&job(&format!("{t}-{i}"))).unwrap();
                        }
                    });
                }
            });
        }
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.all().unwrap().len(), (threads * each) as usize);
        for t in 0..threads {
            for i in 0..each {
                let id = format!("{t}-{i}");
                assert_eq!(journal.get(&id).unwrap().unwrap().body.0, id.as_bytes());
            }
        }
    }

    #[test]
    fn puts_queued_during_a_commit_share_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.redb");
        let journal = Journal::open(&path).unwrap();
        let before = journal.commits();
        // The test's own write transaction stands for a commit in progress: the writer
        // waits for it, and the puts queue meanwhile.
        let db = database(&journal);
        let busy = db.begin_write().unwrap();
        let n = 20;
        thread::scope(|s| {
            let putters: Vec<_> = (0..n)
                .map(|i| {
                    let journal = &journal;
                    s.spawn(move || journal.put(&job(&format!("j{i}"))))
                })
                .collect();
            wait_queued(&journal, n);
            drop(busy);
            for p in putters {
                p.join().unwrap().unwrap();
            }
        });
        assert_eq!(journal.commits() - before, 1, "{n} puts, one commit");
        // Everything survives reopening (once nothing holds the file).
        drop(db);
        drop(journal);
        let journal = Journal::open(&path).unwrap();
        assert_eq!(journal.all().unwrap().len(), n);
    }

    /// Memory standing for a disk that can refuse to sync (`fail_sync`: the commit's
    /// fsync fails) or run out of room (`full`: writes and growing fail, as with ENOSPC).
    #[derive(Debug)]
    struct Disk {
        inner: InMemoryBackend,
        fail_sync: AtomicBool,
        full: AtomicBool,
    }

    /// A handle on a [`Disk`], so that the journal opens the same bytes again.
    #[derive(Debug)]
    struct OnDisk(Arc<Disk>);

    fn no_room() -> io::Error {
        io::Error::new(io::ErrorKind::StorageFull, "no room left on the disk")
    }

    impl StorageBackend for OnDisk {
        fn len(&self) -> Result<u64, io::Error> {
            self.0.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            self.0.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            if self.0.full.load(Ordering::SeqCst) && len > self.0.inner.len()? {
                return Err(no_room());
            }
            self.0.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            if self.0.fail_sync.load(Ordering::SeqCst) {
                return Err(io::Error::other("the disk refused to sync"));
            }
            self.0.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            if self.0.full.load(Ordering::SeqCst) {
                return Err(no_room());
            }
            self.0.inner.write(offset, data)
        }
    }

    /// A journal on [`Disk`] memory, and the disk.
    fn failing_journal() -> (Journal, Arc<Disk>) {
        let disk = Arc::new(Disk {
            inner: InMemoryBackend::new(),
            fail_sync: AtomicBool::new(false),
            full: AtomicBool::new(false),
        });
        let open = {
            let disk = disk.clone();
            move || {
                Database::builder()
                    .create_with_backend(OnDisk(disk.clone()))
                    .map_err(fail)
            }
        };
        let db = open().unwrap();
        (Journal::start(db, Box::new(open)).unwrap(), disk)
    }

    /// The journal's open database, for a test to hold its write lock.
    fn database(journal: &Journal) -> Arc<Database> {
        let current = journal.db.current.read().unwrap();
        current.clone().expect("the journal is open")
    }

    #[test]
    fn a_failed_commit_fails_every_put_in_it() {
        let (journal, disk) = failing_journal();
        journal.put(&job("before")).unwrap();
        let before = journal.commits();
        let db = database(&journal);
        let busy = db.begin_write().unwrap();
        let n = 8;
        let results: Vec<_> = thread::scope(|s| {
            let putters: Vec<_> = (0..n)
                .map(|i| {
                    let journal = &journal;
                    s.spawn(move || journal.put(&job(&format!("f{i}"))))
                })
                .collect();
            wait_queued(&journal, n);
            disk.fail_sync.store(true, Ordering::SeqCst);
            drop(busy);
            putters.into_iter().map(|p| p.join().unwrap()).collect()
        });
        assert_eq!(
            journal.commits() - before,
            1,
            "the {n} puts were one commit"
        );
        for r in results {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("refused to sync"), "{e}");
        }
    }

    /// Progress written from a task needs no fsync: with the disk refusing to sync, a
    /// non-durable put still commits (and reads back), a durable one fails.
    #[tokio::test]
    async fn only_durable_writes_wait_for_the_disk() {
        let (journal, disk) = failing_journal();
        disk.fail_sync.store(true, Ordering::SeqCst);
        let mut running = job("p");
        running.state = JobState::Running;
        journal.put_async(&running, false).await.unwrap();
        let read = journal.get("p");
        assert_eq!(read.unwrap().unwrap().state, JobState::Running);
        let e = journal.put_async(&job("d"), true).await.unwrap_err();
        assert!(e.to_string().contains("refused to sync"), "{e}");
    }

    /// A full disk fails the writes, and the journal, closed by the I/O error, opens
    /// again by itself once there is room: what was committed before is all there,
    /// nothing of what failed is, and writes work again.
    #[test]
    fn after_a_full_disk_the_journal_reopens_and_takes_writes_again() {
        let (journal, disk) = failing_journal();
        journal.put(&job("before")).unwrap();
        disk.full.store(true, Ordering::SeqCst);
        let e = journal.put(&job("refused")).unwrap_err();
        assert!(e.to_string().contains("no room left"), "{e}");
        // Each write opens it again, and fails again.
        assert!(journal.put(&job("refused too")).is_err());
        assert!(journal.purge(u64::MAX).is_err());

        disk.full.store(false, Ordering::SeqCst);
        journal.put(&job("after")).unwrap();
        assert!(journal.get("before").unwrap().is_some());
        assert!(journal.get("refused").unwrap().is_none());
        assert!(journal.get("refused too").unwrap().is_none());
        assert!(journal.get("after").unwrap().is_some());
        assert_eq!(journal.all().unwrap().len(), 2);
    }

    /// A real file: the database closed by an I/O error is opened from its path again
    /// at the next use, which needs the old handle gone (redb locks the file).
    #[test]
    fn a_journal_file_reopens_after_an_io_error() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(&dir.path().join("jobs.redb")).unwrap();
        journal.put(&job("kept")).unwrap();
        let db = database(&journal);
        let e = journal
            .db
            .run(&db, |_| {
                Err::<(), _>(fail(io::Error::other("a failing device")))
            })
            .unwrap_err();
        assert!(e.io, "{e}");
        drop(db);
        assert!(journal.db.current.read().unwrap().is_none(), "closed");
        assert!(
            journal.get("kept").unwrap().is_some(),
            "opened again to read"
        );
        journal.put(&job("new")).unwrap();
        assert!(journal.get("kept").unwrap().is_some());
        assert!(journal.get("new").unwrap().is_some());
    }
}
