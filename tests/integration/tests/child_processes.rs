//! No child outlives the agent (kill -9 in the middle of a copy from a file: source, which
//! the agent serves with its own nbdkit), and a restarted agent kills what an earlier one
//! left before it resumes a job. The "nbdkit" here is a wrapper that first leaves a
//! descendant in a session of its own (as libguestfs' qemu may leave virt-v2v's group),
//! which only the restart can find. Both carry OSM_TEST_TAG=<scratch folder> from the
//! wrapper, so the test finds them whatever agent (and marker) started them.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use osm_api::JobState;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::{disk, wait_for};

const GIB: u64 = 1 << 30;

/// Live processes the wrapper in `dir` started (nbdkit, the escaped sleep).
fn children(dir: &Path) -> Vec<(i32, String)> {
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

fn kill_all(procs: &[(i32, String)]) {
    for (pid, _) in procs {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), nix::sys::signal::Signal::SIGKILL);
    }
}

fn nbdkit_wrapper(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("nbdkit-wrapper");
    let nbdkit = osm_agent::exec::resolve("nbdkit").expect("nbdkit is installed");
    let text = format!(
        "#!/bin/sh\nexport OSM_TEST_TAG='{}'\nsetsid --fork sleep 1000 </dev/null >/dev/null 2>&1\nexec {} \"$@\"\n",
        dir.display(),
        nbdkit.display()
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[test]
fn kill_9_during_a_copy_leaves_no_nbdkit_and_the_restart_kills_the_rest_first() {
    let tmp = osm_integration_tests::scratch();
    let size = 4 * GIB;
    let src = tmp.path().join("src");
    disk::image(&src, size, &[(0, size)], 17);
    let out = tmp.path().join("out");
    let wrapper = nbdkit_wrapper(tmp.path());
    let mut agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: format!("nbdkit = \"{}\"\n[copy]\nconnections = 1\n", wrapper.display()),
            ..Default::default()
        },
    );
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        out.to_str().unwrap(),
    ]);
    wait_for(120, "the copy to start", || {
        Some(agent.job(job.id)).filter(|j| j.bytes_done > 0)
    });
    let before = children(tmp.path());
    eprintln!("the agent's children before kill -9: {before:?}");
    assert!(
        before.iter().any(|(_, c)| c == "nbdkit"),
        "no nbdkit running: {before:?}"
    );
    assert!(
        before.iter().any(|(_, c)| c == "sleep"),
        "no escaped descendant: {before:?}"
    );
    agent.kill9();

    // The kernel kills nbdkit with the agent (PR_SET_PDEATHSIG), before any restart.
    let t = std::time::Instant::now();
    let nbdkit_gone = (|| {
        while t.elapsed().as_secs() < 5 {
            if !children(tmp.path()).iter().any(|(_, c)| c == "nbdkit") {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    })();
    let left = children(tmp.path());
    eprintln!("{:.2}s after kill -9: {left:?}", t.elapsed().as_secs_f64());
    if !nbdkit_gone {
        kill_all(&left);
        panic!("nbdkit outlived the agent by 5 s: {left:?}");
    }

    // The restart kills the escaped descendant, then resumes the copy.
    agent.restart();
    let after: Vec<(i32, String)> = children(tmp.path()).into_iter().filter(|p| left.contains(p)).collect();
    kill_all(&after);
    assert!(
        after.is_empty(),
        "the restarted agent runs beside the old one's children: {after:?}"
    );
    // The old agent's groups were recorded (it died before it could reap them).
    assert!(
        agent
            .stderr()
            .contains("previous agent's children: 1 group(s) recorded"),
        "{}",
        agent.stderr()
    );
    let log = agent.stderr();
    let killed = log
        .find("previous agent's children")
        .expect("no line about the previous agent's children");
    let resumed = log.rfind("resuming job").expect("the job did not resume");
    assert!(
        killed < resumed,
        "a job resumed before the old children were killed:\n{log}"
    );
    assert!(log[killed..].lines().next().unwrap().contains("sleep ("), "{log}");

    let done = agent.wait_job(job.id, 600);
    assert_eq!(done.state, JobState::Succeeded, "{}", done.error);
    assert_eq!(disk::sha256(&out, size), disk::sha256(&src, size));
    // Reaping the new nbdkit group also killed its escaped descendant.
    wait_for(10, "no child of the agent after the job", || {
        children(tmp.path()).is_empty().then_some(())
    });
    let registry = std::fs::read_to_string(tmp.path().join("state/children.json")).unwrap();
    assert!(registry.contains("\"groups\": []"), "{registry}");
}
