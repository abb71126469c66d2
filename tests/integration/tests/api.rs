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

/// A plan that parses and validates; nothing in it is contacted unless a job starts.
const PLAN: &str = "vms = [\"web-1\"]\n[source]\nvcenter = \"vcenter.invalid\"\nuser = \"osm\"\npassword = { file = \"/etc/osm/vcenter.password\" }\n";

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn migrate_refuses_unreadable_and_malformed_plans_unknown_vms_and_non_admins() {
    let tmp = osm_integration_tests::scratch();
    open_up(tmp.path());
    let agent = Agent::start(tmp.path(), Options::default());

    let missing = tmp.path().join("missing.toml");
    let out = agent.osmctl(&["migrate", "--plan", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot read plan") && err.contains("missing.toml"),
        "{err}"
    );

    let bad = tmp.path().join("bad.toml");
    std::fs::write(&bad, format!("mdoe = \"warm\"\n{PLAN}")).unwrap();
    let out = agent.osmctl(&["migrate", "--plan", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(bad.to_str().unwrap()) && err.contains("mdoe"), "{err}");

    let yaml = tmp.path().join("vars.yaml");
    std::fs::write(&yaml, "vms_list: [web-1\n").unwrap();
    let out = agent.osmctl(&["migrate", "--plan", yaml.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("vars.yaml"), "{}", stderr(&out));

    let good = tmp.path().join("good.toml");
    std::fs::write(&good, PLAN).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = agent.osmctl(&["migrate", "--plan", good.to_str().unwrap(), "nosuchvm"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("'nosuchvm' is not in plan") && err.contains("web-1"),
        "{err}"
    );

    let out = agent.osmctl_as_nobody(&["migrate", "--plan", good.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("needs root or membership of group 'osm'"),
        "{}",
        stderr(&out)
    );

    // Nothing was started by any of these.
    let out = agent.osmctl(&["--output", "json", "status"]);
    let jobs: Vec<osm_api::JobInfo> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(jobs.is_empty(), "{jobs:?}");

    // A VM name with no migration job behind it.
    for cmd in [
        &["sync", "web-1"][..],
        &["cutover", "web-1"],
        &["logs", "web-1"],
        &["cancel", "web-1"],
    ] {
        let out = agent.osmctl(cmd);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("there are no migration jobs"),
            "{cmd:?}: {}",
            stderr(&out)
        );
    }
    let out = agent.osmctl(&["cleanup", "--all"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("nothing to clean up"), "{}", stderr(&out));
}

#[test]
fn a_copy_jobs_log_is_its_own_0600_file_and_migration_commands_refuse_copies() {
    let tmp = osm_integration_tests::scratch();
    open_up(tmp.path());
    let agent = Agent::start(tmp.path(), Options::default());
    let src = tmp.path().join("src");
    disk::image(&src, 8 * MIB, &[(0, MIB)], 5);
    let mut ids = Vec::new();
    for out in ["a", "b"] {
        let job = agent.copy(&[
            "--from",
            &format!("file:{}", src.display()),
            "--to",
            tmp.path().join(out).to_str().unwrap(),
        ]);
        assert_eq!(agent.wait_job(job.id, 60).state, JobState::Succeeded);
        ids.push(job.id.to_string());
    }

    let log = tmp.path().join(format!("log/job-{}.log", ids[0]));
    assert_eq!(std::fs::metadata(&log).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::metadata(tmp.path().join("log")).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let out = agent.osmctl(&["logs", &ids[0]]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("copy complete"), "{text}");
    assert!(text.contains(&format!("job {} succeeded", ids[0])), "{text}");
    assert!(
        !text.contains(&format!("job {} ", ids[1])),
        "only job {}'s lines: {text}",
        ids[0]
    );
    for line in text.lines().filter(|l| !l.starts_with("    ")) {
        assert!(
            line.as_bytes().get(4) == Some(&b'-') && line.contains("Z "),
            "timestamped: {line}"
        );
    }
    let out = agent.osmctl(&["logs", "-n", "1", &ids[0]]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    // --follow of a finished job prints its lines and returns.
    let out = agent.osmctl(&["logs", "--follow", &ids[0]]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), text);
    // Logs name hosts and volumes: not for everyone.
    let out = agent.osmctl_as_nobody(&["logs", &ids[0]]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("needs root"), "{}", stderr(&out));

    for cmd in [
        &["sync", &ids[0]][..],
        &["cutover", &ids[0]],
        &["cutover", &ids[0], "--at", "2030-01-01T00:00:00Z"],
        &["cleanup", &ids[0]],
    ] {
        let out = agent.osmctl(cmd);
        assert!(!out.status.success(), "{cmd:?}");
        let err = stderr(&out);
        assert!(
            err.contains(&format!("job {} is a copy, not a migration", ids[0])),
            "{cmd:?}: {err}"
        );
    }
    let out = agent.osmctl(&["logs", "999"]);
    assert!(!out.status.success());
}
