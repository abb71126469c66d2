//! End-to-end migrations on the test bed: the vCenter simulator's VMs into the bed's
//! real OpenStack, through a real agent, osmctl, nbdkit (curl plugin) and loop devices.
//! The cold test converts the real guest with virt-v2v-in-place (~6 min under TCG) and
//! boots it; the warm test skips the conversion. Each checks the bytes by hash, the
//! server, its ports, and that nothing osm made is left behind.
use std::process::Command;
use std::time::Duration;

use osm_api::{JobInfo, JobState, MigrateReply};
use osm_integration_tests::migration::*;
use osm_integration_tests::wait_for;

/// The acceptance run: the two-disk Debian guest, converted by virt-v2v-in-place (TCG),
/// boots from its volumes to a login prompt; its data disk is byte-identical.
#[test]
fn cold_migration_of_the_two_disk_guest_converts_boots_and_keeps_its_data() {
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, "osm-linux-2disk"));
    let agent = bed_agent(tmp.path(), "[conversion]\nforce_tcg = true\n");
    let plan = plan(
        tmp.path(),
        &["osm-linux-2disk"],
        "mode = \"cold\"\nsecurity_groups = [\"osm-sg\"]",
    );
    osm_integration_tests::count_full_conversion("migrate: cold two-disk guest");
    let job = migrate(&agent, &plan);
    let done = agent.wait_job(job.id, 1800);
    let c = cloud();
    let m = done.migration.clone().expect("migration info");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_eq!(
            done.state,
            JobState::Succeeded,
            "job failed: {}\n{}",
            done.error,
            agent.stderr()
        );
        eprintln!(
            "cold migration steps: {}",
            step_timings(done.migration.as_ref().expect("migration info"))
        );
        assert_eq!(m.volumes.len(), 2);
        assert_eq!(m.cutover, "cold: at the start");
        // The measured downtime spans at least the steps after the shutdown.
        let after: f64 = m
            .steps
            .iter()
            .filter(|t| ["cutover", "conversion", "detach", "network", "boot"].contains(&t.step.as_str()))
            .map(|t| t.seconds)
            .sum();
        assert!(
            m.downtime_seconds + 1.0 >= after,
            "downtime {} < steps {after}",
            m.downtime_seconds
        );
        // The data disk's files are intact (virt-v2v mounts the guest's filesystems, so
        // superblock bytes change; the copy's exactness is the warm test's byte check).
        for (file, sha) in data_files(&volume_file(&m.volumes[1])) {
            let source = flat_file(&src.disks[1].datastore_path);
            assert_eq!(
                sha,
                ext4_file_sha256(&source, &file),
                "{file} differs from the source's"
            );
        }
        // The converted guest boots from its volumes (root first) on virtio.
        let out = Command::new(env("OSM_BOOTCHECK"))
            .arg(volume_file(&m.volumes[0]))
            .arg(volume_file(&m.volumes[1]))
            .args(["--bus", "virtio", "--timeout", "300"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the migrated guest did not reach a login prompt: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        rt.block_on(async {
            let s = c.get_server(&m.server_id).await.unwrap();
            assert_eq!(s.status, "ACTIVE");
            assert_eq!(s.metadata.get("osm_vm"), Some(&src.moref));
            let (_, ports) = leftovers(&c, &src.moref).await;
            assert_eq!(ports.len(), src.nics.len(), "one port per NIC");
            let net = c.find_network(&env("OSM_OS_NETWORK")).await.unwrap();
            for nic in &src.nics {
                let p = c
                    .list_ports(&format!("mac_address={}", nic.mac.to_ascii_lowercase()))
                    .await
                    .unwrap();
                assert_eq!(p.len(), 1, "a port with MAC {}", nic.mac);
                assert_eq!(p[0].network_id, net.id);
                assert_eq!(p[0].device_id, m.server_id, "the port is the server's");
            }
            let atts = c.server_attachments(&m.server_id).await.unwrap();
            assert_eq!(atts.len(), 2, "both volumes belong to the server");
            // 2 vCPU / 2 GiB: the bed's smallest flavor that fits is osm.medium.
            let flavor: serde_json::Value = serde_json::from_slice(
                &Command::new(env("OSM_OPENSTACK_CLI"))
                    .args(["server", "show", &m.server_id, "-f", "json", "-c", "flavor"])
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap_or_default();
            assert!(flavor.to_string().contains("osm.medium"), "flavor: {flavor}");
            let boot = c.get_volume(&m.volumes[0]).await.unwrap();
            assert!(boot.is_bootable());
            assert_eq!(
                boot.volume_image_metadata.get("hw_disk_bus").map(String::as_str),
                Some("virtio")
            );
            let host = env("OSM_CONVERSION_HOST_ID");
            let here = c.server_attachments(&host).await.unwrap();
            assert!(
                !here.iter().any(|a| m.volumes.contains(&a.volume_id)),
                "no volume stays attached to the conversion host"
            );
            let after = vm(&ep, "osm-linux-2disk").await;
            assert!(
                !after.snapshots.list.iter().any(|s| s.osm),
                "no osm snapshot left: {:?}",
                after.snapshots
            );
            assert_eq!(after.power_state, "poweredOff", "the source stays off");
        });
    }));
    rt.block_on(async {
        remove_migrated(&c, &src.moref, &m.server_id).await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The test bed's data disk: its known file (hash in OSM_GUEST_KNOWN_SHA256) and the
/// 8 MiB pattern listed in its own SHA256SUMS; the hashes as read from `image`.
fn data_files(image: &std::path::Path) -> Vec<(String, String)> {
    let known = ext4_file_sha256(image, "/osm-known.txt");
    assert_eq!(
        known,
        env("OSM_GUEST_KNOWN_SHA256"),
        "osm-known.txt on the migrated data disk"
    );
    vec![
        ("/osm-known.txt".into(), known),
        ("/osm-pattern.bin".into(), ext4_file_sha256(image, "/osm-pattern.bin")),
        ("/SHA256SUMS".into(), ext4_file_sha256(image, "/SHA256SUMS")),
    ]
}

fn wait_rounds(agent: &osm_integration_tests::agent::Agent, id: u64, rounds: u32) -> JobInfo {
    wait_for(300, &format!("{rounds} delta round(s)"), || {
        let j = agent.job(id);
        assert!(!j.state.is_terminal(), "job ended: {} {}", j.state, j.error);
        Some(j).filter(|j| {
            j.migration.as_ref().is_some_and(|m| m.sync_rounds >= rounds) && j.step.contains("waiting for the cutover")
        })
    })
}

#[test]
fn warm_migration_reads_exactly_the_written_areas_and_cuts_over_to_equal_bytes() {
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let name = "osm-cbt-1";
    let agent = bed_agent(tmp.path(), "sync_interval_seconds = 3600\n");
    let out = agent.osmctl(&["check", "--enable-cbt", name]);
    assert!(
        out.status.success() || out.status.code() == Some(1),
        "check --enable-cbt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let src = rt.block_on(vm(&ep, name));
    let plan = plan(
        tmp.path(),
        &[name],
        "mode = \"warm\"\ncutover = \"manual\"\nskip_conversion = true",
    );
    let job = migrate(&agent, &plan);
    let c = cloud();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let j = wait_cutover(&agent, job.id);
        assert_eq!(j.migration.as_ref().unwrap().sync_rounds, 0);
        let key0 = src.disks[0].key;
        let key1 = src.disks[1].key;
        // Round 1: 3 areas on disk 0, 1 on disk 1.
        guest_write(name, key0, 16 << 20, 64 << 10, 1);
        guest_write(name, key0, 300 << 20, 1 << 20, 2);
        guest_write(name, key0, (1 << 30) - (1 << 20), 1 << 20, 3);
        guest_write(name, key1, 0, 512 << 10, 4);
        let out = agent.osmctl(&["sync", name]);
        assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
        let j = wait_rounds(&agent, job.id, 1);
        let m = j.migration.unwrap();
        assert_eq!(
            m.last_round_bytes,
            (64 << 10) + (1 << 20) + (1 << 20) + (512 << 10),
            "round 1 reads exactly the written bytes"
        );
        assert!(m.predicted_downtime_seconds > 0.0);
        // Round 2: one area.
        guest_write(name, key0, 500 << 20, 4 << 20, 5);
        let out = agent.osmctl(&["sync", &job.id.to_string()]);
        assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
        let m = wait_rounds(&agent, job.id, 2).migration.unwrap();
        assert_eq!(m.last_round_bytes, 4 << 20, "round 2 reads exactly the written bytes");
        // More writes, then the cutover: the final volumes equal the source.
        guest_write(name, key1, 32 << 20, 1 << 20, 6);
        let out = agent.osmctl(&["cutover", name]);
        assert!(
            out.status.success(),
            "cutover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = agent.wait_job(job.id, 600);
        assert_eq!(done.state, JobState::Succeeded, "{}\n{}", done.error, agent.stderr());
        eprintln!(
            "warm migration steps: {}",
            step_timings(done.migration.as_ref().expect("migration info"))
        );
        let m = done.migration.unwrap();
        assert_eq!(m.last_round_bytes, 1 << 20, "the final round reads the last write only");
        // Measured from the shutdown to ACTIVE: less than the whole job, which began earlier.
        let total: f64 = m
            .steps
            .iter()
            .filter(|t| !t.step.ends_with(" round") && t.step != "shutdown")
            .map(|t| t.seconds)
            .sum();
        assert!(
            m.downtime_seconds > 0.0 && m.downtime_seconds < total + 1.0,
            "downtime {} of {total}",
            m.downtime_seconds
        );
        // Migrating it again by mistake is refused, and starts nothing.
        let out = agent.osmctl(&["migrate", "--plan", plan.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("already migrated by job") && err.contains("--again"),
            "{err}"
        );
        let r = agent.request(&osm_api::Request::ListJobs);
        let jobs: Vec<JobInfo> = serde_json::from_value(r.result.unwrap()).unwrap();
        assert_eq!(jobs.len(), 1, "{jobs:?}");
        // With --again it starts, but the checks find the source MAC on the first server's
        // port and stop before any volume is made.
        let out = agent.osmctl(&[
            "--output",
            "json",
            "migrate",
            "--again",
            "--plan",
            plan.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let again: MigrateReply = serde_json::from_slice(&out.stdout).unwrap();
        let failed = agent.wait_job(again.jobs[0].id, 120);
        assert_eq!(failed.state, JobState::Failed, "{failed:?}");
        assert!(
            failed.error.contains("is already on port")
                && failed.error.contains(&format!("used by server {}", m.server_id))
                && failed.error.contains("openstack port delete"),
            "{}",
            failed.error
        );
        assert!(failed.migration.unwrap().volumes.is_empty(), "no volume made");
        for (d, v) in src.disks.iter().zip(&m.volumes) {
            assert_eq!(
                sha256_prefix(&volume_file(v), d.capacity_bytes),
                sha256_prefix(&flat_file(&d.datastore_path), d.capacity_bytes),
                "volume {v} differs from {}",
                d.datastore_path
            );
        }
        rt.block_on(async {
            assert_eq!(c.get_server(&m.server_id).await.unwrap().status, "ACTIVE");
            assert!(!vm(&ep, name).await.snapshots.list.iter().any(|s| s.osm));
        });
        m.server_id
    }));
    let server = result.as_ref().map(|s| s.clone()).unwrap_or_default();
    let _ = agent.osmctl(&["cancel", &job.id.to_string()]);
    rt.block_on(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        remove_migrated(&c, &src.moref, &server).await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
