//! The runner against real processes: this test binary re-executes itself as a fake
//! agent (killed with SIGKILL) and as the restarted agent.
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

const ROLE: &str = "OSM_RUNNER_TEST_ROLE";
const DIR: &str = "OSM_RUNNER_TEST_DIR";

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn running(pid: i32) -> bool {
    procfs::stat(pid).is_some_and(|s| s.state != 'Z')
}

/// Processes whose marker names the agent with this PID.
fn marked_by(agent: u32) -> Vec<i32> {
    let prefix = format!("{agent}.");
    procfs::all()
        .into_iter()
        .filter(|&(pid, s)| s.state != 'Z' && procfs::env_var(pid, MARKER).is_some_and(|v| v.starts_with(&prefix)))
        .map(|(pid, _)| pid)
        .collect()
}

/// This test binary in a role, running only the test `name`.
fn role(name: &str, role: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdin(Stdio::null());
    c
}

/// The fake agent: takes over `DIR`, starts `sleep` from a worker thread that then ends,
/// and `setsid --fork sleep` (a grandchild in its own session, like an appliance that
/// left the group), says `ready` and waits to be killed.
#[test]
fn fake_agent() {
    let Ok(dir) = std::env::var(DIR).map(PathBuf::from) else {
        return;
    };
    if std::env::var(ROLE).as_deref() != Ok("agent") {
        return;
    }
    take_over(&dir, Duration::from_secs(5)).unwrap();
    let worker = std::thread::spawn(|| {
        let mut sleep = Command::new("sleep");
        sleep.arg("1000");
        let mut escape = Command::new("setsid");
        escape.args(["--fork", "sleep", "1001"]);
        (spawn(sleep).unwrap(), spawn(escape).unwrap())
    });
    let (sleep, escape) = worker.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(running(sleep.id() as i32), "the child died with its spawning thread");
    std::fs::write(dir.join("sleep.pid"), sleep.id().to_string()).unwrap();
    std::fs::write(dir.join("ready"), "").unwrap();
    std::mem::forget((sleep, escape));
    std::thread::sleep(Duration::from_secs(600));
}

/// The restarted agent: takes over `DIR` and prints what it killed.
#[test]
fn restarted_agent() {
    let Ok(dir) = std::env::var(DIR).map(PathBuf::from) else {
        return;
    };
    if std::env::var(ROLE).as_deref() != Ok("restart") {
        return;
    }
    let t = take_over(&dir, Duration::from_secs(10)).unwrap();
    println!("recorded {} killed {:?}", t.recorded.len(), t.killed);
}

#[test]
fn a_child_survives_its_worker_thread_but_not_the_agent_and_a_restart_kills_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut agent = role("exec::runner::tests::fake_agent", "agent", dir).spawn().unwrap();
    wait_until(20, "the fake agent to be ready", || dir.join("ready").exists());
    let sleep: i32 = std::fs::read_to_string(dir.join("sleep.pid")).unwrap().parse().unwrap();
    wait_until(5, "the escaped grandchild", || marked_by(agent.id()).len() == 2);
    let escaped: Vec<i32> = marked_by(agent.id()).into_iter().filter(|&p| p != sleep).collect();
    let registry = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
    assert!(registry.contains(&format!("\"pgid\": {sleep}")), "{registry}");
    assert!(running(sleep), "the child died with the worker thread that spawned it");

    agent.kill().unwrap();
    agent.wait().unwrap();
    wait_until(5, "PR_SET_PDEATHSIG to kill the child", || !running(sleep));
    // Not the agent's child, in its own session: only the restart can find it.
    assert!(
        running(escaped[0]),
        "the test needs a grandchild that outlives the agent"
    );

    let out = role("exec::runner::tests::restarted_agent", "restart", dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!running(escaped[0]), "the restart left the grandchild running: {text}");
    assert!(text.contains("recorded 2"), "{text}");
    let registry = std::fs::read_to_string(dir.join(FILE_NAME)).unwrap();
    assert!(registry.contains("\"groups\": []"), "{registry}");
}

/// The kernel fact the spawner thread exists for: PR_SET_PDEATHSIG follows the thread.
#[test]
fn pdeathsig_set_from_a_worker_thread_fires_when_that_thread_ends() {
    let pid = std::thread::spawn(|| {
        let mut c = Command::new("sleep");
        c.arg("1000");
        // SAFETY: prctl only.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let child = c.spawn().unwrap();
        let pid = child.id() as i32;
        std::mem::forget(child);
        pid
    })
    .join()
    .unwrap();
    wait_until(5, "the child to die with its thread", || {
        // Reap it if it is our zombie.
        let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        !running(pid)
    });
}

#[test]
fn reaping_kills_the_rest_of_the_group_and_the_marked_descendants() {
    // setsid --fork: the leader exits at once, its child lives on in another session.
    let mut c = Command::new("setsid");
    c.args(["--fork", "sleep", "1002"]);
    let mut child = spawn(c).unwrap();
    let token = child.token().to_string();
    let marked = || {
        procfs::all()
            .into_iter()
            .filter(|&(p, s)| s.state != 'Z' && procfs::env_var(p, MARKER).as_deref() == Some(&token))
            .count()
    };
    wait_until(5, "the grandchild to start", || marked() == 1);
    assert!(child.wait().unwrap().success());
    assert_eq!(marked(), 0, "reaping left a marked descendant");
}

#[test]
fn stop_terminates_the_group_and_output_captures_both_streams() {
    let mut c = Command::new("sleep");
    c.arg("1000");
    let mut child = spawn(c).unwrap();
    let pid = child.id() as i32;
    let t = Instant::now();
    let status = child.stop(Duration::from_secs(5)).unwrap();
    assert!(!status.success() && t.elapsed() < Duration::from_secs(4));
    assert!(!running(pid));

    let mut c = Command::new("sh");
    c.args(["-c", "echo out; echo err >&2; exit 3"]);
    let out = output(c).unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
    assert_eq!(out.status.code(), Some(3));
}
