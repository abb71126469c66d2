//! A copy from the simulated vCenter's datastore over HTTPS (nbdkit's curl plugin),
//! with a password that must never reach argv or a log. Needs the test bed's vSphere
//! component (`tests/testbed/up`, env from $OSM_TESTBED_STATE/env).
use std::path::PathBuf;

use osm_api::JobState;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::{disk, wait_for};

fn env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run tests/testbed/up and source $OSM_TESTBED_STATE/env"))
}

/// Percent-encode a datastore path for a /folder URL (spaces, brackets, non-ASCII).
fn encode_path(p: &str) -> String {
    p.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn https_datastore_copy_is_exact_and_keeps_the_password_out_of_argv_and_logs() {
    let ds_dir = PathBuf::from(env("OSM_VC_DATASTORE_DIR"));
    let rel = "web [prod] ünïcode 1/web [prod] ünïcode 1_1-flat.vmdk";
    let flat = ds_dir.join(rel);
    let size = std::fs::metadata(&flat).unwrap().len();
    let url = format!(
        "https://{}/folder/{}?dcPath={}&dsName={}",
        env("OSM_VC_HOST"),
        encode_path(rel),
        env("OSM_VC_DATACENTER"),
        env("OSM_VC_DATASTORE")
    );

    let tmp = osm_integration_tests::scratch();
    let secret = format!("osm-secret-{}", std::process::id());
    let pwfile = tmp.path().join("vc.password");
    std::fs::write(&pwfile, &secret).unwrap();
    let agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: "[copy]\nconnections = 1\n".into(),
            ..Default::default()
        },
    );
    let out = tmp.path().join("out.img");
    let job = agent.copy(&[
        "--from",
        &url,
        "--to",
        out.to_str().unwrap(),
        "--user",
        &env("OSM_VC_USER"),
        "--password-file",
        pwfile.to_str().unwrap(),
        "--ca-file",
        &env("OSM_VC_CA_FILE"),
    ]);
    // While nbdkit runs with the password, no process shows it on its command line.
    let mut saw_nbdkit = false;
    let done = wait_for(120, "https copy", || {
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd);
                assert!(!cmd.contains(&secret), "password in argv: {cmd}");
                saw_nbdkit |= cmd.contains("curl") && cmd.contains(pwfile.to_str().unwrap());
            }
        }
        Some(agent.job(job.id)).filter(|j| j.state.is_terminal())
    });
    assert_eq!(done.state, JobState::Succeeded, "{}", done.error);
    assert!(saw_nbdkit, "nbdkit's curl plugin was never seen taking password=+FILE");
    assert_eq!(disk::sha256(&out, size), disk::sha256(&flat, size));

    // Nothing the agent wrote (logs, state) contains the password.
    let mut files = vec![tmp.path().join("agent.stderr")];
    for sub in ["log", "state"] {
        files.extend(
            std::fs::read_dir(tmp.path().join(sub))
                .unwrap()
                .flatten()
                .map(|e| e.path()),
        );
    }
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        assert!(!text.contains(&secret), "password found in {}", f.display());
    }

    // A wrong CA is refused (TLS is verified), with the reason in the job's error.
    let job = agent.copy(&[
        "--from",
        &url,
        "--to",
        tmp.path().join("o2").to_str().unwrap(),
        "--ca-file",
        pwfile.to_str().unwrap(),
    ]);
    let failed = agent.wait_job(job.id, 120);
    assert_eq!(failed.state, JobState::Failed);
    assert!(failed.error.contains("nbdkit"), "{}", failed.error);
}
