//! The agent's API rules: who may mutate, cancel cleanup, systemd notifications, config errors.
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use osm_api::JobState;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::{disk, wait_for};

const MIB: u64 = 1 << 20;

fn open_up(dir: &std::path::Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_non_root_caller_may_read_but_not_start_or_cancel() {
    let tmp = osm_integration_tests::scratch();
    open_up(tmp.path());
    let agent = Agent::start(tmp.path(), Options::default());
    let src = tmp.path().join("src");
    disk::image(&src, 8 * MIB, &[(0, MIB)], 3);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent.osmctl_as_nobody(&[
        "copy",
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        "/var/tmp/osm-nobody-target",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("needs root or membership of group 'osm'"), "{err}");
    assert!(!std::path::Path::new("/var/tmp/osm-nobody-target").exists());

    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    agent.wait_job(job.id, 60);
    let out = agent.osmctl_as_nobody(&["status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
    let out = agent.osmctl_as_nobody(&["cancel", &job.id.to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs root"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains("cargo") {
                found.push(cmd);
            }
        }
    }
    found
}

#[test]
fn cancel_leaves_no_nbdkit_and_no_socket_behind() {
    let tmp = osm_integration_tests::scratch();
    let agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: "[copy]\nconnections = 1\n".into(),
            ..Default::default()
        },
    );
    let src = tmp.path().join("src");
    disk::image(&src, 2048 * MIB, &[(0, 2048 * MIB)], 11);
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        tmp.path().join("out").to_str().unwrap(),
    ]);
    wait_for(60, "copy running", || {
        Some(agent.job(job.id)).filter(|j| j.bytes_done > 0)
    });
    let job_dir = tmp.path().join(format!("run/jobs/{}", job.id));
    assert!(
        job_dir.join("nbdkit.sock").exists(),
        "nbdkit serves from the job's private folder"
    );
    assert_eq!(std::fs::metadata(&job_dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(
        !processes_mentioning(job_dir.to_str().unwrap()).is_empty(),
        "nbdkit should be running"
    );

    let out = agent.osmctl(&["cancel", &job.id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let done = agent.wait_job(job.id, 60);
    assert_eq!(done.state, JobState::Cancelled);
    assert!(done.bytes_done < done.bytes_total, "cancelled before the end");
    assert!(
        processes_mentioning(job_dir.to_str().unwrap()).is_empty(),
        "an nbdkit survived the cancel"
    );
    assert!(!job_dir.exists(), "the job folder (and its socket) must be removed");
    // A finished job cannot be cancelled again.
    let out = agent.osmctl(&["cancel", &job.id.to_string()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already cancelled"));
}

#[test]
fn systemd_hears_ready_after_the_socket_then_watchdog_and_stopping() {
    let tmp = osm_integration_tests::scratch();
    let nsock = tmp.path().join("notify.sock");
    let rx = UnixDatagram::bind(&nsock).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut agent = Agent::start(
        tmp.path(),
        Options {
            notify_socket: Some(nsock.clone()),
            ..Default::default()
        },
    );
    let mut buf = [0u8; 4096];
    let mut msgs = Vec::new();
    while !msgs.iter().any(|m: &String| m.contains("WATCHDOG=1")) {
        let n = rx.recv(&mut buf).expect("a notification within 10 s");
        msgs.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        msgs[0].contains("READY=1") && msgs[0].contains("STATUS=idle"),
        "first message: {:?}",
        msgs[0]
    );
    assert!(agent.socket.exists());
    assert!(agent.terminate().success());
    let mut stopping = false;
    while let Ok(n) = rx.recv(&mut buf) {
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "STOPPING=1 on SIGTERM");
}

#[test]
fn unknown_config_keys_are_refused_with_file_and_key() {
    let tmp = osm_integration_tests::scratch();
    let cfg = tmp.path().join("bad.toml");
    std::fs::write(&cfg, "[agent]\nsocket = \"/tmp/x\"\nstate_dri = \"/tmp/y\"\n").unwrap();
    let out = Command::new(osm_integration_tests::bin("osm-agent"))
        .arg("--config")
        .arg(&cfg)
        .arg("--dropin-dir")
        .arg(tmp.path().join("none"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.toml") && err.contains("state_dri"), "{err}");
}
