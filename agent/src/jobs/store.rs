//! The job store: SQLite in WAL mode under the state folder (0700, file 0600).
//! Every state change and checkpoint is one transaction.
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use osm_api::JobState;
use rusqlite::{params, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job store {path}: {source}")]
    Sqlite { path: PathBuf, source: rusqlite::Error },
    #[error("cannot create the state folder {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("job store {path} holds an unknown state '{state}' for job {id}")]
    Corrupt { path: PathBuf, id: u64, state: String },
}

#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: u64,
    pub kind: String,
    pub request: String,
    pub state: JobState,
    pub step: String,
    pub error: String,
    pub checkpoint: Option<String>,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL,
  request TEXT NOT NULL,
  state TEXT NOT NULL,
  step TEXT NOT NULL DEFAULT '',
  error TEXT NOT NULL DEFAULT '',
  checkpoint TEXT,
  bytes_done INTEGER NOT NULL DEFAULT 0,
  bytes_total INTEGER NOT NULL DEFAULT 0,
  created INTEGER NOT NULL DEFAULT (unixepoch()),
  updated INTEGER NOT NULL DEFAULT (unixepoch())
);";

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Dir {
                path: dir.to_path_buf(),
                source,
            })?;
        let path = dir.join("jobs.sqlite");
        let conn = Connection::open(&path).map_err(|source| StoreError::Sqlite {
            path: path.clone(),
            source,
        })?;
        let store = Store {
            path: path.clone(),
            conn: Mutex::new(conn),
        };
        store.with(|c| {
            c.pragma_update(None, "journal_mode", "WAL")?;
            c.pragma_update(None, "synchronous", "FULL")?;
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            c.execute_batch(SCHEMA)
        })?;
        for f in [
            path.clone(),
            path.with_extension("sqlite-wal"),
            path.with_extension("sqlite-shm"),
        ] {
            let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
        }
        Ok(store)
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let c = self.conn.lock().expect("store lock");
        f(&c).map_err(|source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        })
    }

    pub fn insert(&self, kind: &str, request: &str) -> Result<u64, StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO jobs (kind, request, state) VALUES (?1, ?2, 'queued')",
                params![kind, request],
            )?;
            Ok(c.last_insert_rowid() as u64)
        })
    }

    pub fn set_state(&self, id: u64, state: JobState, step: &str, error: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET state = ?2, step = ?3, error = ?4, updated = unixepoch() WHERE id = ?1",
                params![id, state.as_str(), step, error],
            )
            .map(drop)
        })
    }

    pub fn set_checkpoint(
        &self,
        id: u64,
        checkpoint: &str,
        bytes_done: u64,
        bytes_total: u64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET checkpoint = ?2, bytes_done = ?3, bytes_total = ?4, updated = unixepoch() WHERE id = ?1",
                params![id, checkpoint, bytes_done, bytes_total],
            )
            .map(drop)
        })
    }

    pub fn checkpoint(&self, id: u64) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT checkpoint FROM jobs WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map(Option::flatten)
        })
    }

    pub fn all(&self) -> Result<Vec<JobRow>, StoreError> {
        let rows = self.with(|c| {
            let mut st = c.prepare(
                "SELECT id, kind, request, state, step, error, checkpoint, bytes_done, bytes_total FROM jobs ORDER BY id",
            )?;
            let v = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, u64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, u64>(7)?,
                        r.get::<_, u64>(8)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })?;
        rows.into_iter()
            .map(
                |(id, kind, request, state, step, error, checkpoint, bytes_done, bytes_total)| {
                    let state = JobState::parse(&state).ok_or_else(|| StoreError::Corrupt {
                        path: self.path.clone(),
                        id,
                        state,
                    })?;
                    Ok(JobRow {
                        id,
                        kind,
                        request,
                        state,
                        step,
                        error,
                        checkpoint,
                        bytes_done,
                        bytes_total,
                    })
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_reopen_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        {
            let s = Store::open(&state).unwrap();
            let id = s.insert("copy", "{}").unwrap();
            s.set_state(id, JobState::Running, "copying", "").unwrap();
            s.set_checkpoint(id, "{\"chunks\":3}", 10, 30).unwrap();
        }
        let s = Store::open(&state).unwrap();
        let rows = s.all().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, JobState::Running);
        assert_eq!(rows[0].checkpoint.as_deref(), Some("{\"chunks\":3}"));
        assert_eq!((rows[0].bytes_done, rows[0].bytes_total), (10, 30));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("jobs.sqlite")), 0o600);
    }
}
