//! The embedded journal: one redb file holding every job, written with an fsync'd
//! commit before weir answers 202 for it.
//!
//! Each job is one row, its [`Job`] as JSON under its id. The calls block (redb does
//! file I/O on the calling thread), so the async side runs them on
//! `spawn_blocking`.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::Job;

/// Every job, by id.
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");

/// The journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
#[error("job journal: {0}")]
pub struct JournalError(String);

impl JournalError {
    /// An error with this message.
    pub fn new(message: String) -> JournalError {
        JournalError(message)
    }
}

fn fail(e: impl Into<redb::Error>) -> JournalError {
    JournalError(e.into().to_string())
}

/// The open journal file.
pub struct Journal {
    db: Database,
}

impl Journal {
    /// Opens `path`, creating the file (and its table) when missing. A file left by a
    /// crash is repaired by redb here.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        let db = Database::create(path)
            .map_err(|e| JournalError(format!("cannot open {}: {}", path.display(), fail(e).0)))?;
        let txn = db.begin_write().map_err(fail)?;
        txn.open_table(JOBS).map_err(fail)?;
        txn.commit().map_err(fail)?;
        Ok(Journal { db })
    }

    /// Writes `job` and returns once the commit is on disk (fsync'd).
    pub fn put(&self, job: &Job) -> Result<(), JournalError> {
        let value = serde_json::to_vec(job).map_err(|e| JournalError(e.to_string()))?;
        let mut txn = self.db.begin_write().map_err(fail)?;
        // Immediate: the commit returns only after the data and the new root are synced.
        txn.set_durability(Durability::Immediate)
            .map_err(|e| JournalError(e.to_string()))?;
        {
            let mut table = txn.open_table(JOBS).map_err(fail)?;
            table
                .insert(job.id.as_str(), value.as_slice())
                .map_err(fail)?;
        }
        txn.commit().map_err(fail)
    }

    /// The job with this id, if the journal has it.
    pub fn get(&self, id: &str) -> Result<Option<Job>, JournalError> {
        let txn = self.db.begin_read().map_err(fail)?;
        let table = txn.open_table(JOBS).map_err(fail)?;
        let Some(row) = table.get(id).map_err(fail)? else {
            return Ok(None);
        };
        serde_json::from_slice(row.value())
            .map(Some)
            .map_err(|e| JournalError(format!("job {id} is unreadable: {e}")))
    }

    /// Every job. A row that does not parse is skipped with a warning: one bad row must
    /// not keep weir from starting.
    pub fn all(&self) -> Result<Vec<Job>, JournalError> {
        let txn = self.db.begin_read().map_err(fail)?;
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
    }

    /// Removes these jobs in one commit.
    pub fn remove(&self, ids: &[String]) -> Result<(), JournalError> {
        let txn = self.db.begin_write().map_err(fail)?;
        {
            let mut table = txn.open_table(JOBS).map_err(fail)?;
            for id in ids {
                table.remove(id.as_str()).map_err(fail)?;
            }
        }
        txn.commit().map_err(fail)
    }
}
