//! Nothing lost when vCenter or the cloud is down (issue 12, case 12), on the test bed:
//! the agent reaches vCenter through a TCP proxy the test takes down and OpenStack
//! through the FaultProxy, both down while a round's snapshot is on the source and the
//! volumes are attached. The failed job records what it must give back, status shows
//! it, a restarted agent keeps retrying, and once both are reachable again the snapshot
//! is removed and the volumes detached without any operator action.
use std::time::{Duration, Instant};

use osm_api::JobState;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::faultproxy::FaultProxy;
use osm_integration_tests::migration::*;
use osm_integration_tests::tcpproxy::TcpProxy;
use osm_integration_tests::wait_for;

fn osm_snapshots(rt: &tokio::runtime::Runtime, ep: &osm_agent::cloud::vsphere::Endpoint, name: &str) -> Vec<String> {
    let v = rt.block_on(vm(ep, name));
    v.snapshots.list.into_iter().filter(|s| s.osm).map(|s| s.name).collect()
}

#[test]
fn a_snapshot_and_attachments_left_while_vcenter_and_the_cloud_are_down_are_released_later() {
    let t0 = Instant::now();
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let name = "osm-twin-1";
    let src = rt.block_on(vm(&ep, name));
    // 4 MiB/s per connection: the copy takes long enough to act while it runs.
    let (vcp, fp) = rt.block_on(async {
        (
            TcpProxy::start(&env("OSM_VC_HOST"), 4 << 20).await,
            FaultProxy::start(&[5000, 8774, 8776, 9696, 9292], 0, 0x5eed_0012).await,
        )
    });
    let clouds = tmp.path().join("clouds.yaml");
    let text = std::fs::read_to_string(env("OS_CLIENT_CONFIG_FILE")).unwrap();
    std::fs::write(&clouds, fp.url_for(&text)).unwrap();
    let p = plan(tmp.path(), &[name], "mode = \"cold\"\nskip_conversion = true");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(&env("OSM_VC_HOST"), &format!("127.0.0.1:{}", vcp.port))
        .replace(
            "[destination]\n",
            &format!("[destination]\nclouds_yaml = \"{}\"\n", clouds.display()),
        );
    std::fs::write(&p, text).unwrap();
    // bed_agent's settings, with OpenStack calls giving up after 10 s of an outage.
    let cfg = format!(
        "byid_dir = \"{}\"\n[openstack]\nmetadata_url = \"{}\"\ncall_deadline_seconds = 10\n[migration]\ntransport = \"https\"\nshutdown_timeout_seconds = 20\nrelease_retry_max_seconds = 5\n",
        env("OSM_BYID_DIR"),
        env("OSM_METADATA_URL"),
    );
    let mut agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: cfg,
            ..Default::default()
        },
    );
    let c = cloud();
    let host = env("OSM_CONVERSION_HOST_ID");
    let set_down = |down: bool| {
        vcp.set_down(down);
        fp.down.store(down, std::sync::atomic::Ordering::SeqCst);
    };
    let mut job_id = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let job = migrate(&agent, &p);
        job_id = Some(job.id);
        let snap = wait_for(300, "the final round's snapshot", || {
            let j = agent.job(job.id);
            assert!(!j.state.is_terminal(), "job ended: {} {}", j.state, j.error);
            if !j.step.starts_with("cutover: final sync") {
                return None;
            }
            osm_snapshots(&rt, &ep, name).into_iter().next()
        });
        // vCenter and the cloud go away mid-round.
        set_down(true);
        let j = agent.wait_job(job.id, 300);
        assert_eq!(j.state, JobState::Failed, "{}", j.error);
        let m = j.migration.clone().unwrap();
        eprintln!("  failed: {}\n  pending: {:?}", j.error, m.pending_release);
        assert_eq!(
            osm_snapshots(&rt, &ep, name),
            vec![snap.clone()],
            "the snapshot is still there"
        );
        assert!(
            m.pending_release.iter().any(|p| p.contains(&src.moref)),
            "status shows the snapshot to remove: {:?}",
            m.pending_release
        );
        for v in &m.volumes {
            assert!(
                m.pending_release.iter().any(|p| p.contains(v.as_str())),
                "status shows volume {v} to detach: {:?}",
                m.pending_release
            );
        }
        assert!(j.error.contains("not yet released"), "{}", j.error);
        let out = agent.osmctl(&["status", &job.id.to_string()]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("to release:"), "{text}");

        // A restart while both are still down: the list survives, the tries go on.
        agent.restart();
        std::thread::sleep(Duration::from_secs(8));
        let m = agent.job(job.id).migration.unwrap();
        assert!(!m.pending_release.is_empty(), "nothing could be released yet");
        assert_eq!(osm_snapshots(&rt, &ep, name), vec![snap.clone()]);

        // Both are back: the agent releases everything by itself.
        set_down(false);
        let m = wait_for(120, "the agent to release the snapshot and the volumes", || {
            let m = agent.job(job.id).migration.unwrap();
            Some(m).filter(|m| m.pending_release.is_empty())
        });
        assert_eq!(osm_snapshots(&rt, &ep, name), Vec::<String>::new());
        for v in &m.volumes {
            let vol = rt.block_on(c.get_volume(v)).unwrap();
            assert!(
                !vol.attachments
                    .iter()
                    .any(|a| a.server_id.as_deref() == Some(host.as_str())),
                "volume {v} is detached from the conversion host"
            );
        }
        assert_eq!(agent.job(job.id).state, JobState::Failed);
    }));
    set_down(false);
    if let Some(id) = job_id {
        let _ = agent.osmctl(&["cleanup", &id.to_string()]);
    }
    rt.block_on(async {
        remove_migrated(&c, &src.moref, "").await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        eprintln!("{}", agent.stderr());
        std::panic::resume_unwind(e);
    }
    eprintln!("  test time {:.1} s", t0.elapsed().as_secs_f64());
}
