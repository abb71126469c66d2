//! The one way the agent starts a long-running tool (nbdkit, virt-v2v, guestfish), so
//! that no child outlives the agent and a restarted agent never runs beside the old
//! one's children:
//!
//! - every child is forked by one spawner thread that lives as long as the process, in
//!   its own process group, with `PR_SET_PDEATHSIG(SIGKILL)`. The kernel sends that
//!   signal when the *thread* that forked the child exits, which is why children are not
//!   forked on tokio's blocking threads (they exit after 10 s idle);
//! - every child carries `OSM_AGENT_CHILD=<agent pid>.<start>/<n>` in its environment,
//!   and so does everything it starts (libguestfs' qemu is a grandchild that may leave
//!   the group and outlives a killed virt-v2v);
//! - every group is recorded in `<state_dir>/children.json` until it is reaped, and
//!   [`take_over`] kills what an earlier agent left before any job resumes.
//!
//! Reaping a child (its exit, [`Child::stop`], drop) also SIGKILLs and waits for the
//! rest of its group and every process carrying its marker.
mod procfs;
mod registry;

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

pub use registry::{take_over, Recorded, TakeOver, TakeOverError, FILE_NAME};

/// The environment variable that marks the agent's children and their descendants.
pub const MARKER: &str = "OSM_AGENT_CHILD";

/// How long reaping waits for the rest of a group after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);

/// `<pid>.<start time>` of this agent: unique on this host until reboot.
fn instance() -> &'static str {
    static INSTANCE: OnceLock<String> = OnceLock::new();
    INSTANCE.get_or_init(|| {
        let pid = std::process::id() as i32;
        format!("{pid}.{}", procfs::stat(pid).map_or(0, |s| s.start))
    })
}

struct Request {
    cmd: Command,
    reply: mpsc::SyncSender<io::Result<std::process::Child>>,
}

/// The spawner thread's queue. The sender lives in a static, so the thread never ends.
fn spawner() -> &'static mpsc::Sender<Request> {
    static SPAWNER: OnceLock<mpsc::Sender<Request>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("osm-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let _ = req.reply.send(req.cmd.spawn());
                }
            })
            .expect("cannot start the spawner thread");
        tx
    })
}

/// Start `cmd` (program, arguments, environment and stdio as the caller set them) from
/// the spawner thread, in a new process group, killed by the kernel when the agent dies,
/// and recorded in the registry.
pub fn spawn(mut cmd: Command) -> io::Result<Child> {
    static SEQ: AtomicU64 = AtomicU64::new(1);
    let token = format!("{}/{}", instance(), SEQ.fetch_add(1, Ordering::Relaxed));
    let program = Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(OsStr::new("?"))
        .to_string_lossy()
        .into_owned();
    let agent = std::process::id() as libc::pid_t;
    cmd.env(MARKER, &token).process_group(0);
    // SAFETY: only async-signal-safe calls (prctl, getppid), no allocation.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The agent died between fork and prctl: the signal will never come.
            if libc::getppid() != agent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::sync_channel(1);
    spawner()
        .send(Request { cmd, reply })
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    let inner = answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))??;
    let pgid = inner.id() as i32;
    let start = procfs::stat(pgid).map_or(0, |s| s.start);
    let mut child = Child {
        inner,
        pgid,
        start,
        token: token.clone(),
        status: None,
    };
    let rec = Recorded {
        pgid,
        start,
        program,
        token,
    };
    if let Err(e) = registry::record(rec) {
        let _ = child.kill();
        return Err(io::Error::other(e.to_string()));
    }
    Ok(child)
}

/// Run `cmd` to its end, capturing stdout and stderr (stdin: /dev/null), like
/// [`Command::output`].
pub fn output(mut cmd: Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = spawn(cmd)?;
    let mut err_pipe = child.inner.stderr.take().expect("piped stderr");
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err_pipe.read_to_end(&mut v);
        v
    });
    let mut stdout = Vec::new();
    if let Some(mut out) = child.inner.stdout.take() {
        out.read_to_end(&mut stdout)?;
    }
    let status = child.wait()?;
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

/// A running group. Dropping it kills and reaps the whole group.
pub struct Child {
    inner: std::process::Child,
    pgid: i32,
    start: u64,
    token: String,
    status: Option<ExitStatus>,
}

impl Child {
    /// The leader's PID, which is also the group id.
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// The value of [`MARKER`] in this group's environment.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Has the leader exited? It is not reaped, so its PID keeps the group id reserved.
    pub fn exited(&self) -> bool {
        if self.status.is_some() {
            return true;
        }
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        !matches!(
            waitid(Id::Pid(Pid::from_raw(self.pgid)), flags),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// If the leader exited: reap the group ([`Child::kill`]) and return the status.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited() {
            self.kill().map(Some)
        } else {
            Ok(None)
        }
    }

    /// Wait for the leader to exit, then reap the group.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
            loop {
                match waitid(Id::Pid(Pid::from_raw(self.pgid)), flags) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                    Ok(_) => break,
                }
            }
        }
        self.kill()
    }

    /// SIGTERM the group and its marked descendants, give the leader `grace` to exit,
    /// then [`Child::kill`].
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            self.signal_all(Signal::SIGTERM);
            let end = Instant::now() + grace;
            while !self.exited() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill()
    }

    /// SIGKILL the group and every process carrying its marker, wait until they are
    /// gone, reap the leader and drop the group from the registry.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        self.signal_all(Signal::SIGKILL);
        let status = self.inner.wait()?;
        let left = procfs::kill_and_wait(&self.members(), REAP_TIMEOUT);
        if !left.is_empty() {
            tracing::error!(
                "processes {left:?} of group {} ({}) still run {REAP_TIMEOUT:?} after SIGKILL",
                self.pgid,
                self.token
            );
        }
        self.status = Some(status);
        if let Err(e) = registry::forget(self.pgid, self.start) {
            tracing::error!("{e}");
        }
        Ok(status)
    }

    /// Everything alive in the group or carrying the marker, but the leader.
    fn members(&self) -> Vec<(i32, u64)> {
        procfs::all()
            .into_iter()
            .filter(|&(pid, s)| pid != self.pgid && s.state != 'Z')
            .filter(|&(pid, s)| s.pgrp == self.pgid || procfs::env_var(pid, MARKER).is_some_and(|v| v == self.token))
            .map(|(pid, s)| (pid, s.start))
            .collect()
    }

    fn signal_all(&self, sig: Signal) {
        // The leader is unreaped, so the group id cannot have been reused.
        let _ = killpg(Pid::from_raw(self.pgid), sig);
        for (pid, _) in self.members() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
        }
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.inner.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.inner.stderr.take()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests;
