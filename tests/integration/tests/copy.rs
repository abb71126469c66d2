//! Full and delta copies through the real agent, real nbdkit and real loop devices,
//! checked byte for byte.
use osm_api::JobState;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::disk::{self, Loop, Nbdkit};

const MIB: u64 = 1 << 20;

#[test]
fn full_copies_are_byte_exact_for_dense_sparse_and_mixed_images() {
    let tmp = osm_integration_tests::scratch();
    let agent = Agent::start(tmp.path(), Options::default());
    let size = 256 * MIB;
    let cases: Vec<(&str, Vec<(u64, u64)>)> = vec![
        ("dense", vec![(0, size)]),
        (
            "sparse",
            vec![(3 * MIB, 4096), (100 * MIB + 512, 70_000), (size - 8192, 8192)],
        ),
        (
            "mixed",
            (0..40)
                .map(|i| (i * 6 * MIB + (i % 3) * 4096, MIB + i * 4096))
                .collect(),
        ),
    ];
    for (name, data) in cases {
        let src = tmp.path().join(format!("{name}.src"));
        disk::image(&src, size, &data, 42);
        let allocated: u64 = data.iter().map(|d| d.1).sum();
        // A used volume: old bytes everywhere, so holes must be zeroed on the target.
        let backing = tmp.path().join(format!("{name}.vol"));
        disk::image(&backing, size, &[], 0);
        disk::paint(&backing, size, 0xAA);
        let lo = Loop::new(&backing);
        let job = agent.copy(&[
            "--from",
            &format!("file:{}", src.display()),
            "--to",
            lo.dev.to_str().unwrap(),
        ]);
        let job = agent.wait_job(job.id, 120);
        assert_eq!(job.state, JobState::Succeeded, "{name}: {}", job.error);
        assert_eq!(
            disk::sha256(&lo.dev, size),
            disk::sha256(&src, size),
            "{name}: target differs from source"
        );
        assert_eq!(job.bytes_total, size);
        if name != "dense" {
            // Old bytes in holes are zeroed by punching, so a thin volume stays thin.
            let used = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&backing).unwrap()) * 512;
            assert!(
                used <= allocated + 16 * MIB,
                "{name}: target backing uses {used} bytes for {allocated} of data"
            );
            // Holes are skipped by block status, not read.
            assert!(
                job.bytes_read < allocated + 64 * MIB,
                "{name}: read {} for {allocated} allocated",
                job.bytes_read
            );
        }

        // Onto a fresh file: zero runs are not written, the file stays sparse.
        let out = tmp.path().join(format!("{name}.out"));
        let job = agent.copy(&[
            "--from",
            &format!("file:{}", src.display()),
            "--to",
            out.to_str().unwrap(),
        ]);
        let job = agent.wait_job(job.id, 120);
        assert_eq!(job.state, JobState::Succeeded, "{name}: {}", job.error);
        assert_eq!(disk::sha256(&out, size), disk::sha256(&src, size));
        assert!(
            job.bytes_written <= allocated + 2 * MIB * data.len() as u64,
            "{name}: wrote {} of {allocated}",
            job.bytes_written
        );
    }
}

#[test]
fn delta_copy_writes_exactly_the_listed_extents() {
    let tmp = osm_integration_tests::scratch();
    let agent = Agent::start(tmp.path(), Options::default());
    let size = 64 * MIB;
    let src = tmp.path().join("src");
    disk::image(&src, size, &[(0, size)], 7);
    let backing = tmp.path().join("vol");
    disk::image(&backing, size, &[], 0);
    disk::paint(&backing, size, 0xAA);
    let lo = Loop::new(&backing);

    // 37 extents, 512-byte aligned (not 4 KiB), some adjacent, one at the very end.
    let mut extents: Vec<(u64, u64)> = (0..36u64)
        .map(|i| (i * 1_700_000 + 512 * (i % 5), 512 * (1 + i * 37 % 300)))
        .collect();
    extents.push((size - 1024, 1024));
    extents.push((extents[3].0 + extents[3].1, 4096)); // adjacent to another
    let list: String = extents.iter().map(|(o, l)| format!("{o} {l}\n")).collect();
    let file = tmp.path().join("extents.txt");
    std::fs::write(&file, list).unwrap();

    let nbd = Nbdkit::file(&tmp.path().join("nbd.sock"), &src, None);
    let job = agent.copy(&[
        "--from",
        &nbd.uri(),
        "--to",
        lo.dev.to_str().unwrap(),
        "--extents",
        file.to_str().unwrap(),
    ]);
    let job = agent.wait_job(job.id, 60);
    assert_eq!(job.state, JobState::Succeeded, "{}", job.error);

    let listed: u64 = extents.iter().map(|e| e.1).sum();
    assert_eq!(job.bytes_read, listed, "bytes read must equal bytes listed");
    assert_eq!(job.bytes_total, listed);
    let src_bytes = std::fs::read(&src).unwrap();
    let dst_bytes = std::fs::read(&backing).unwrap();
    let mut inside = vec![false; size as usize];
    for &(o, l) in &extents {
        inside[o as usize..(o + l) as usize].fill(true);
    }
    for i in 0..size as usize {
        let want = if inside[i] { src_bytes[i] } else { 0xAA };
        assert_eq!(
            dst_bytes[i],
            want,
            "byte {i} ({} a listed extent)",
            if inside[i] { "inside" } else { "outside" }
        );
    }
}

#[test]
fn clear_errors_for_bad_sources_targets_and_jobs() {
    let tmp = osm_integration_tests::scratch();
    let agent = Agent::start(tmp.path(), Options::default());
    let src = tmp.path().join("src");
    disk::image(&src, 16 * MIB, &[(0, MIB)], 1);

    // Unreachable source: the job fails and says so.
    let missing = format!("nbd+unix:///?socket={}/nowhere.sock", tmp.path().display());
    let job = agent.copy(&["--from", &missing, "--to", tmp.path().join("o1").to_str().unwrap()]);
    let job = agent.wait_job(job.id, 30);
    assert_eq!(job.state, JobState::Failed);
    assert!(job.error.contains("cannot reach the source"), "{}", job.error);

    // Target too small.
    let small = tmp.path().join("small");
    disk::image(&small, MIB, &[], 0);
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        small.to_str().unwrap(),
    ]);
    let job = agent.wait_job(job.id, 30);
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error.contains("is 1048576 bytes but the source is 16777216 bytes"),
        "{}",
        job.error
    );

    // Target not writable: a read-only file system.
    let ro = tmp.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&ro)
        .status()
        .unwrap();
    assert!(mounted.success());
    let target = ro.join("out");
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        target.to_str().unwrap(),
    ]);
    let job = agent.wait_job(job.id, 30);
    std::process::Command::new("umount").arg(&ro).status().unwrap();
    assert_eq!(job.state, JobState::Failed);
    assert!(
        job.error.contains(&format!("cannot open target {}", target.display())),
        "{}",
        job.error
    );
    assert!(job.error.contains("Read-only file system"), "{}", job.error);

    // Refused before a job exists.
    for (args, want) in [
        (
            vec!["copy", "--from", "ftp://x", "--to", "/tmp/x"],
            "none of: an NBD URI",
        ),
        (
            vec!["copy", "--from", "file:/no/such/file", "--to", "/tmp/x"],
            "No such file",
        ),
        (
            vec![
                "copy",
                "--from",
                &format!("file:{}", src.display()),
                "--to",
                "/no/such/dir/x",
            ],
            "its folder does not either",
        ),
        (vec!["status", "999"], "there is no job 999"),
        (vec!["cancel", "999"], "there is no job 999"),
    ] {
        let out = agent.osmctl(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let bad = tmp.path().join("bad-extents");
    std::fs::write(&bad, "0 4096\nten 20\n").unwrap();
    let out = agent.osmctl(&[
        "copy",
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        "/tmp/x",
        "--extents",
        bad.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An extent past the end of the disk fails the job with a reason.
    std::fs::write(&bad, format!("{} 4096\n", 16 * MIB)).unwrap();
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        tmp.path().join("o3").to_str().unwrap(),
        "--extents",
        bad.to_str().unwrap(),
    ]);
    let job = agent.wait_job(job.id, 30);
    assert!(job.error.contains("beyond the end"), "{}", job.error);
}
