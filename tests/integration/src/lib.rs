//! Test harness: real osm-agent and osmctl binaries, real nbdkit, real loop devices,
//! a private system-type dbus-daemon carrying the project's policy. Needs root.
pub mod agent;
pub mod bus;
pub mod disk;
pub mod faultproxy;
pub mod migration;
pub mod tcpproxy;

use std::path::PathBuf;

/// target/<profile>/ of this workspace, where `cargo build` put osm-agent and osmctl.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile>");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` (tests/run does) first",
        p.display()
    );
    p
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// Record that `test` runs a full virt-v2v conversion (7–9 min under TCG; CI allows two):
/// one line in `$OSM_TESTBED_STATE/full-conversions`, which tests/run counts and prints.
pub fn count_full_conversion(test: &str) {
    use std::io::Write;
    let state = std::env::var("OSM_TESTBED_STATE").unwrap_or_else(|_| "/var/tmp/osm-testbed".into());
    let path = PathBuf::from(state).join("full-conversions");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{test}");
    }
    eprintln!("full conversion: {test}");
}

/// Poll `f` every 20 ms until it returns Some, or panic with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A scratch folder on a real disk (not tmpfs: O_DIRECT and GiB-sized images).
/// `OSM_TEST_SCRATCH` overrides /var/tmp.
pub fn scratch() -> tempfile::TempDir {
    let base = std::env::var_os("OSM_TEST_SCRATCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("osm-test-")
        .tempdir_in(base)
        .expect("scratch dir")
}
