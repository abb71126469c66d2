//! Crash and restart: kill -9 in the middle of a 4 GiB copy, and a clean SIGTERM.
use osm_api::JobState;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::disk::{self, Loop, Nbdkit};
use osm_integration_tests::wait_for;

const GIB: u64 = 1 << 30;

#[test]
fn kill_9_at_half_resumes_without_recopying() {
    let tmp = osm_integration_tests::scratch();
    let size = 4 * GIB;
    let src = tmp.path().join("src");
    disk::image(&src, size, &[(0, size)], 99);
    let backing = tmp.path().join("vol");
    disk::image(&backing, size, &[], 0);
    let lo = Loop::new(&backing);
    let sock = tmp.path().join("nbd.sock");
    let stats1 = tmp.path().join("stats-before");
    let stats2 = tmp.path().join("stats-after");

    let mut agent = Agent::start(tmp.path(), Options::default());
    let nbd = Nbdkit::file(&sock, &src, Some(&stats1));
    let job = agent.copy(&["--from", &nbd.uri(), "--to", lo.dev.to_str().unwrap()]);
    let at_kill = wait_for(300, "50 % progress", || {
        Some(agent.job(job.id)).filter(|j| j.progress >= 0.5)
    });
    agent.kill9();
    assert!(
        at_kill.progress < 0.9,
        "the copy ran past the kill point ({:.2}); the test cannot judge resume",
        at_kill.progress
    );
    nbd.stop();

    // A new source server with fresh statistics, then the agent again.
    let nbd = Nbdkit::file(&sock, &src, Some(&stats2));
    agent.restart();
    let done = agent.wait_job(job.id, 600);
    assert_eq!(done.state, JobState::Succeeded, "{}", done.error);
    nbd.stop();
    let read_after = disk::stats_bytes_read(&stats2);
    eprintln!(
        "killed at {:.1} %, source bytes read after restart: {:.1} % of the disk",
        100.0 * at_kill.progress,
        100.0 * read_after as f64 / size as f64
    );
    assert!(
        read_after <= size * 55 / 100,
        "read {read_after} bytes after restart, more than 55 % of {size}"
    );
    assert!(
        read_after >= size * 10 / 100,
        "read only {read_after} bytes after restart: was anything resumed?"
    );
    assert_eq!(disk::sha256(&lo.dev, size), disk::sha256(&src, size));
    assert!(
        agent.stderr().contains("resuming job"),
        "the log should say the job resumed"
    );
}

#[test]
fn sigterm_pauses_at_a_checkpoint_and_the_next_start_finishes() {
    let tmp = osm_integration_tests::scratch();
    let size = GIB;
    let src = tmp.path().join("src");
    disk::image(&src, size, &[(0, size)], 5);
    let out = tmp.path().join("out");
    let mut agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: "[copy]\nconnections = 1\n".into(),
            ..Default::default()
        },
    );
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        out.to_str().unwrap(),
    ]);
    wait_for(120, "copy to start", || {
        Some(agent.job(job.id)).filter(|j| j.bytes_done > 0)
    });
    let status = agent.terminate();
    assert!(status.success(), "SIGTERM must stop the agent cleanly, got {status}");
    assert!(!agent.socket.exists(), "the socket is removed on a clean stop");
    assert!(
        agent.stderr().contains("paused for shutdown") || agent.stderr().contains("succeeded"),
        "{}",
        agent.stderr()
    );
    agent.restart();
    let done = agent.wait_job(job.id, 300);
    assert_eq!(done.state, JobState::Succeeded, "{}", done.error);
    assert_eq!(disk::sha256(&out, size), disk::sha256(&src, size));
}
