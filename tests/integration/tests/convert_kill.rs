//! kill -9 of the agent a few seconds into a real virt-v2v-in-place (the bed's two-disk
//! guest, copied): virt-v2v dies with the agent, and nothing of it (nbdkit, the qemu
//! appliance that libguestfs forks) still runs once a restarted agent has taken over the
//! state folder, before it could start a second conversion. This test binary plays both
//! agents: `osm_agent::exec::virt_v2v::run` as the daemon's conversion step calls it, and
//! `runner::take_over` as the daemon's start-up does.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use osm_agent::exec::runner;
use osm_agent::exec::virt_v2v::{self, ConvertSpec, Firmware};
use osm_integration_tests::wait_for;

const ROLE: &str = "OSM_CONVERT_KILL_ROLE";
const DIR: &str = "OSM_CONVERT_KILL_DIR";

/// Live processes carrying OSM_TEST_TAG=<dir> (the fake agent and all it started).
fn tagged(dir: &Path) -> Vec<(i32, String)> {
    let tag = format!("OSM_TEST_TAG={}", dir.display());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z')
        })
        .filter(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            env.split(|&b| b == 0).any(|kv| kv == tag.as_bytes())
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// Field `n` after the command name in /proc/PID/stat (1: ppid, 2: pgid).
fn field(pid: i32, n: usize) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .nth(n)
        .unwrap_or("?")
        .to_string()
}

fn is_qemu(comm: &str) -> bool {
    comm.starts_with("qemu")
}

fn role(name: &str, role: &str, dir: &Path) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .env("OSM_TEST_TAG", dir)
        .stdin(Stdio::null());
    c
}

/// The fake agent: take over the state folder, convert, never return (killed).
#[test]
fn fake_agent_converting() {
    let Ok(dir) = std::env::var(DIR).map(PathBuf::from) else {
        return;
    };
    if std::env::var(ROLE).as_deref() != Ok("agent") {
        return;
    }
    runner::take_over(&dir.join("state"), Duration::from_secs(10)).unwrap();
    let spec = ConvertSpec {
        name: "osm kill test".into(),
        firmware: Firmware::Bios,
        disks: vec![dir.join("root.raw"), dir.join("data.raw")],
        log: dir.join("virt-v2v.log"),
        force_tcg: true,
        ..Default::default()
    };
    let program = osm_agent::exec::resolve("virt-v2v-in-place").expect("virt-v2v-in-place");
    let r = virt_v2v::run(&program, &spec, &AtomicBool::new(false), &mut |s| {
        eprintln!("virt-v2v: {s}")
    });
    panic!("the conversion ended before the kill: {r:?}");
}

/// The restarted agent: take over the state folder.
#[test]
fn restarted_agent() {
    let Ok(dir) = std::env::var(DIR).map(PathBuf::from) else {
        return;
    };
    if std::env::var(ROLE).as_deref() != Ok("restart") {
        return;
    }
    let t = runner::take_over(&dir.join("state"), Duration::from_secs(30)).unwrap();
    println!("recorded {} killed {:?}", t.recorded.len(), t.killed);
}

#[test]
fn kill_9_during_virt_v2v_leaves_no_writer_once_the_restart_took_over() {
    let tmp = osm_integration_tests::scratch();
    let dir = tmp.path();
    std::fs::create_dir(dir.join("state")).unwrap();
    for (key, name) in [("OSM_GUEST2_DISK1", "root.raw"), ("OSM_GUEST2_DISK2", "data.raw")] {
        let from = osm_integration_tests::migration::env(key);
        let to = dir.join(name);
        assert!(Command::new("cp")
            .arg("--sparse=always")
            .arg(&from)
            .arg(&to)
            .status()
            .unwrap()
            .success());
        assert!(Command::new("chmod").arg("0600").arg(&to).status().unwrap().success());
    }
    let mut agent = role("fake_agent_converting", "agent", dir).spawn().unwrap();
    let t0 = Instant::now();
    // A few seconds into the run: the appliance is up and has the disks open.
    wait_for(300, "the qemu appliance to start", || {
        let p = tagged(dir);
        p.iter().any(|(_, c)| is_qemu(c)).then_some(p)
    });
    std::thread::sleep(Duration::from_secs(3));
    let before = tagged(dir);
    let shown: Vec<String> = before
        .iter()
        .map(|(pid, c)| format!("{c} {pid} (pgid {})", field(*pid, 2)))
        .collect();
    eprintln!(
        "{:.1}s into the run, before kill -9: {shown:?}",
        t0.elapsed().as_secs_f64()
    );
    // virt-v2v itself: the fake agent's child.
    let v2v: i32 = before
        .iter()
        .find(|(pid, c)| c.starts_with("virt-v2v") && field(*pid, 1) == agent.id().to_string())
        .map(|(pid, _)| *pid)
        .expect("no virt-v2v child of the agent");
    assert!(before.iter().any(|(_, c)| is_qemu(c)), "{before:?}");
    agent.kill().unwrap();
    agent.wait().unwrap();
    let killed_at = Instant::now();
    let v2v_gone = (|| {
        while killed_at.elapsed() < Duration::from_secs(5) {
            if !tagged(dir).iter().any(|(p, _)| *p == v2v) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })();
    // At once: libguestfs' recovery process kills qemu within 2 s of virt-v2v's death,
    // but the restart must not count on it.
    let left = tagged(dir);
    eprintln!(
        "{:.2}s after kill -9 (virt-v2v gone: {v2v_gone}): {left:?}",
        killed_at.elapsed().as_secs_f64()
    );

    let out = role("restarted_agent", "restart", dir).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let after: Vec<(i32, String)> = tagged(dir)
        .into_iter()
        .filter(|(pid, _)| before.iter().any(|(p, _)| p == pid))
        .collect();
    eprintln!("after the restart: {after:?}\n{text}");
    for (pid, _) in &after {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(v2v_gone, "virt-v2v outlived the agent by 5 s: {left:?}");
    assert!(after.is_empty(), "still running after the restart took over: {after:?}");
}
