//! What operators, backup software and the source VM do outside the happy path, on the
//! test bed (real agent, simulator, OpenStack, loop devices), and that no migration then
//! boots a stale copy or writes where it should not:
//! - a cancelled cold job powers the source on again; continuing it with another plan is
//!   refused (naming the differences); continuing it with its plan shuts the running
//!   source down again and copies what it wrote meanwhile (issue 12, cases 1 and 16);
//! - a volume detached by hand mid-warm is attached again, never replaced by a file in
//!   /dev (case 4); a foreign snapshot taken mid-warm stops the https round, naming it
//!   (case 2).
use std::os::unix::fs::FileTypeExt;
use std::time::{Duration, Instant};

use osm_agent::cloud::vsphere::{self, snapshot::vm_ref};
use osm_api::JobState;
use osm_integration_tests::migration::*;
use osm_integration_tests::wait_for;

/// The name of the snapshot a backup tool takes mid-warm.
const BACKUP: &str = "nightly-backup";

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_cancelled_cold_job_powers_the_source_on_and_its_continuation_shuts_it_down_again() {
    let t0 = Instant::now();
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let name = "osm-linux-1";
    let src = rt.block_on(vm(&ep, name));
    let agent = bed_agent(tmp.path(), "");
    let cold = plan(tmp.path(), &[name], "mode = \"cold\"\nskip_conversion = true");
    let c = cloud();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let job = migrate(&agent, &cold);
        wait_for(300, "the final sync of the cold job", || {
            let j = agent.job(job.id);
            assert!(!j.state.is_terminal(), "job ended: {} {}", j.state, j.error);
            Some(()).filter(|_| j.step.starts_with("cutover: final sync"))
        });
        assert_eq!(rt.block_on(power_state(&ep, &src.moref)), "poweredOff");
        let out = agent.osmctl(&["cancel", &job.id.to_string()]);
        assert!(out.status.success(), "cancel: {}", stderr(&out));
        let j = agent.wait_job(job.id, 120);
        assert_eq!(j.state, JobState::Cancelled, "{}", j.error);
        // Case 16: osm shut the source down and no server exists: it runs again.
        assert_eq!(
            rt.block_on(power_state(&ep, &src.moref)),
            "poweredOn",
            "a cancelled migration leaves the source running, as it found it"
        );
        // The running guest writes after the cancel.
        guest_write(name, src.disks[0].key, 200 << 20, 1 << 20, 41);

        // Case 1: a new plan that changes the mode and cutover is refused, nothing starts.
        let warm = tmp.path().join("warm.toml");
        let text = std::fs::read_to_string(&cold)
            .unwrap()
            .replace("mode = \"cold\"", "mode = \"warm\"\ncutover = \"manual\"");
        std::fs::write(&warm, text).unwrap();
        let out = migrate_with(&agent, &warm, &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "a changed plan continued job {}", job.id);
        assert!(
            err.contains("differs in mode") && err.contains("cutover") && err.contains("--fresh"),
            "{err}"
        );
        assert_eq!(rt.block_on(power_state(&ep, &src.moref)), "poweredOn");

        // The same plan continues: the running source is shut down again and what it
        // wrote is copied before anything boots.
        let again = migrate(&agent, &cold);
        let done = agent.wait_job(again.id, 600);
        assert_eq!(done.state, JobState::Succeeded, "{}\n{}", done.error, agent.stderr());
        let m = done.migration.clone().unwrap();
        eprintln!("  continued job: {}", step_timings(&m));
        assert!(
            m.steps.iter().any(|s| s.step == "shutdown"),
            "the continuation shut the source down"
        );
        assert_eq!(rt.block_on(power_state(&ep, &src.moref)), "poweredOff");
        let vol = volume_file(&m.volumes[0]);
        same_bytes(
            &flat_file(&src.disks[0].datastore_path),
            &vol,
            src.disks[0].capacity_bytes,
        )
        .unwrap();
        m.server_id
    }));
    undo_then_raise(&rt, &c, &ep, &src.moref, result);
    eprintln!("  test time {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn mid_warm_a_detached_volume_is_attached_again_and_a_foreign_snapshot_stops_the_round() {
    let t0 = Instant::now();
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let name = "osm-cbt-1";
    rt.block_on(remove_backup_snapshots(&ep, name)); // a crashed run's
    let agent = bed_agent(tmp.path(), "sync_interval_seconds = 3600\n");
    let out = agent.osmctl(&["check", "--enable-cbt", name]);
    assert!(out.status.success() || out.status.code() == Some(1), "{}", stderr(&out));
    let src = rt.block_on(vm(&ep, name));
    let p = plan(
        tmp.path(),
        &[name],
        "mode = \"warm\"\ncutover = \"manual\"\nskip_conversion = true",
    );
    let c = cloud();
    let host = env("OSM_CONVERSION_HOST_ID");
    let mut foreign = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let job = migrate(&agent, &p);
        let j = wait_cutover(&agent, job.id);
        let vol0 = j.migration.unwrap().volumes[0].clone();
        let link = rt
            .block_on(async {
                let byid = std::path::PathBuf::from(env("OSM_BYID_DIR"));
                osm_agent::blockdev::find_byid(&byid, &vol0)
            })
            .expect("the volume's by-id link while attached")
            .0;

        // Case 4: the operator detaches disk 0's volume by hand; the guest writes.
        rt.block_on(async {
            c.detach_volume(&host, &vol0).await.unwrap();
            c.wait_volume(&vol0, &["available"], Duration::from_secs(120))
                .await
                .unwrap();
        });
        guest_write(name, src.disks[0].key, 64 << 20, 1 << 20, 51);
        let out = agent.osmctl(&["sync", name]);
        assert!(out.status.success(), "sync: {}", stderr(&out));
        let j = wait_for(300, "the delta round after the detach", || {
            let j = agent.job(job.id);
            assert!(
                !j.state.is_terminal(),
                "job ended: {} {}\n{}",
                j.state,
                j.error,
                agent.stderr()
            );
            Some(j).filter(|j| {
                j.migration.as_ref().is_some_and(|m| m.sync_rounds >= 1) && j.step.contains("waiting for the cutover")
            })
        });
        let meta = std::fs::symlink_metadata(&link);
        assert!(
            meta.as_ref().is_ok_and(|m| m.file_type().is_symlink()),
            "{} must be the device's link again, not a file the copy made: {meta:?}",
            link.display()
        );
        assert!(std::fs::metadata(&link).unwrap().file_type().is_block_device());
        let attached = rt.block_on(c.get_volume(&vol0)).unwrap();
        assert!(
            attached
                .attachments
                .iter()
                .any(|a| a.server_id.as_deref() == Some(host.as_str())),
            "volume {vol0} is attached to the conversion host again"
        );
        assert_eq!(
            j.migration.unwrap().last_round_bytes,
            1 << 20,
            "the round read the written MiB"
        );

        // Case 2: backup software snapshots the VM; the next https round must stop, naming it.
        let snap = rt.block_on(vsphere::with_client(&ep, async |vc: &vsphere::Client| {
            vc.create_snapshot(&vm_ref(&src.moref), BACKUP, "taken by a backup tool", false)
                .await
        }));
        foreign = Some(snap.unwrap());
        guest_write(name, src.disks[0].key, 128 << 20, 1 << 20, 52);
        let out = agent.osmctl(&["sync", name]);
        assert!(out.status.success(), "sync: {}", stderr(&out));
        let j = agent.wait_job(job.id, 300);
        assert_eq!(
            j.state,
            JobState::Failed,
            "the round with a foreign snapshot must not pass"
        );
        assert!(
            j.error.contains("'nightly-backup'") && j.error.contains("vddk"),
            "{}",
            j.error
        );
        j.migration.map(|m| m.server_id).unwrap_or_default()
    }));
    if foreign.is_some() {
        rt.block_on(remove_backup_snapshots(&ep, name));
    }
    undo_then_raise(&rt, &c, &ep, &src.moref, result);
    eprintln!("  test time {:.1} s", t0.elapsed().as_secs_f64());
}

/// The VM's snapshots this test names as a backup tool would.
async fn remove_backup_snapshots(ep: &vsphere::Endpoint, name: &str) {
    let all = vm(ep, name).await.snapshots.list;
    for s in all.into_iter().filter(|s| s.name == BACKUP) {
        let r = vsphere::types::MoRef::new("VirtualMachineSnapshot", &s.moref);
        vsphere::with_client(ep, async |vc: &vsphere::Client| vc.remove_snapshot(&r).await)
            .await
            .unwrap_or_else(|e| panic!("removing snapshot {}: {e}", s.name));
    }
}
