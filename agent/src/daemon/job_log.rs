//! Each job's own log file (0600) under the log folder: `osmctl logs` reads it.
use std::path::{Path, PathBuf};

pub fn path(log_dir: &Path, id: u64) -> PathBuf {
    log_dir.join(format!("job-{id}.log"))
}
