//! The groups this agent started, in `<state_dir>/children.json` (0600, rewritten
//! atomically on every spawn and reap), and the start-up step that kills whatever an
//! earlier agent on the same state folder left running.
use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::procfs;

pub const FILE_NAME: &str = "children.json";

/// One process group the runner started: its leader's PID (= the group id) and start
/// time, and the marker its whole tree carries in the environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub pgid: i32,
    pub start: u64,
    pub program: String,
    pub token: String,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Contents {
    /// `<pid>.<start>` of the agent that wrote the file; every marker starts with it.
    instance: String,
    agent_pid: i32,
    agent_start: u64,
    groups: Vec<Recorded>,
}

struct Registry {
    path: PathBuf,
    contents: Contents,
}

static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum TakeOverError {
    #[error("cannot read {path}: {why}; it lists the processes an earlier agent started. Stop any nbdkit, virt-v2v or qemu working on migration volumes, then delete the file")]
    Unreadable { path: PathBuf, why: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("another osm-agent (pid {pid}) is running on this state folder ({path})")]
    AnotherAgent { pid: i32, path: PathBuf },
    #[error("{} process(es) of the previous agent are still running {timeout:?} after SIGKILL (pids {pids:?}, stuck in I/O?): not resuming jobs beside them", pids.len())]
    StillRunning { pids: Vec<i32>, timeout: Duration },
}

/// What [`take_over`] found.
#[derive(Debug, Default)]
pub struct TakeOver {
    /// Groups the previous agent had recorded (running or not).
    pub recorded: Vec<Recorded>,
    /// Processes that were still running and were killed: PID and command name.
    pub killed: Vec<(i32, String)>,
}

/// At daemon start-up, before any job resumes: SIGKILL every process the previous agent
/// on `state_dir` started and wait (at most `timeout`) until all are gone, then record
/// this agent's children from now on. Processes are found by the recorded groups (only
/// while their leader is the recorded process: PIDs are reused) and by the environment
/// marker every descendant inherits, also those that left the group (libguestfs' qemu
/// may call setpgid) or were orphaned when their parent died.
pub fn take_over(state_dir: &Path, timeout: Duration) -> Result<TakeOver, TakeOverError> {
    let path = state_dir.join(FILE_NAME);
    let old = read(&path)?;
    let me = std::process::id() as i32;
    if old.agent_pid != me && procfs::alive(old.agent_pid, old.agent_start) {
        return Err(TakeOverError::AnotherAgent {
            pid: old.agent_pid,
            path: state_dir.to_path_buf(),
        });
    }
    let prefix = format!("{}/", old.instance);
    let groups: BTreeSet<i32> = old
        .groups
        .iter()
        .filter(|g| procfs::alive(g.pgid, g.start))
        .map(|g| g.pgid)
        .collect();
    let victims: Vec<(i32, u64)> = procfs::all()
        .into_iter()
        .filter(|&(pid, s)| pid != me && s.state != 'Z')
        .filter(|&(pid, s)| {
            groups.contains(&s.pgrp)
                || (!old.instance.is_empty()
                    && procfs::env_var(pid, super::MARKER).is_some_and(|v| v.starts_with(&prefix)))
        })
        .map(|(pid, s)| (pid, s.start))
        .collect();
    let killed = victims.iter().map(|&(pid, _)| (pid, comm(pid))).collect();
    let left = procfs::kill_and_wait(&victims, timeout);
    if !left.is_empty() {
        return Err(TakeOverError::StillRunning { pids: left, timeout });
    }
    let contents = Contents {
        instance: super::instance().to_string(),
        agent_pid: me,
        agent_start: procfs::stat(me).map_or(0, |s| s.start),
        groups: Vec::new(),
    };
    write(&path, &contents)?;
    let _ = REGISTRY.set(Mutex::new(Registry { path, contents }));
    Ok(TakeOver {
        recorded: old.groups,
        killed,
    })
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn read(path: &Path) -> Result<Contents, TakeOverError> {
    let bad = |why: String| TakeOverError::Unreadable {
        path: path.to_path_buf(),
        why,
    };
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Contents::default()),
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Write to a 0600 temporary file, fsync, rename over `path`.
fn write(path: &Path, contents: &Contents) -> Result<(), TakeOverError> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec_pretty(contents).expect("registry serializes");
    let res = (|| {
        let _ = std::fs::remove_file(&tmp);
        let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    res.map_err(|source| TakeOverError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Record a new group; a no-op before [`take_over`] (unit tests, tools).
pub fn record(group: Recorded) -> Result<(), TakeOverError> {
    update(|c| c.groups.push(group))
}

/// Forget a reaped group.
pub fn forget(pgid: i32, start: u64) -> Result<(), TakeOverError> {
    update(|c| c.groups.retain(|g| !(g.pgid == pgid && g.start == start)))
}

fn update(f: impl FnOnce(&mut Contents)) -> Result<(), TakeOverError> {
    let Some(reg) = REGISTRY.get() else { return Ok(()) };
    let mut r = reg.lock().unwrap_or_else(|e| e.into_inner());
    let mut next = r.contents.clone();
    f(&mut next);
    write(&r.path, &next)?;
    r.contents = next;
    Ok(())
}
