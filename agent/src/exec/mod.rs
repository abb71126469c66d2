//! External tools. Each file builds its tool's argv with a pure function and owns the
//! process it starts, through [`runner`]; nothing here goes through a shell.
pub mod nbdkit;
pub mod runner;
pub mod virt_v2v;

use std::path::{Path, PathBuf};

/// Find `name` on PATH (or accept an absolute path), as the agent does at start-up.
pub fn resolve(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.is_absolute() {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|c| c.is_file())
}

/// The last `max` bytes of a log file, for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let start = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[start..]).trim().to_string()
}
