//! vSphere against the test bed's vCenter simulator (`tests/testbed/up --only vsphere`,
//! env from $OSM_TESTBED_STATE/env): discovery matches the bed's inventory, the warm
//! migration primitive (snapshot → changed areas == guest writes, round after round), and
//! one clear line for each misconfiguration with the password kept out of argv and logs.
use std::path::{Path, PathBuf};
use std::time::Duration;

use osm_agent::cloud::vsphere::{self, ChangedAreas, Client, Endpoint, Trust};
use osm_api::vsphere::VmInfo;
use osm_api::Extent;
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::migration::guest_write;

fn env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run tests/testbed/up and source $OSM_TESTBED_STATE/env"))
}

/// A `[vsphere]` section for the simulator, with the password in `pwfile`.
fn section(pwfile: &Path, trust: &str) -> String {
    format!(
        "[vsphere]\nurl = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\n{trust}\n",
        env("OSM_VC_URL"),
        env("OSM_VC_USER"),
        pwfile.display()
    )
}

fn ca() -> String {
    format!("ca_file = \"{}\"", env("OSM_VC_CA_FILE"))
}

/// A private copy of the simulator's password (0600) in the test's folder.
fn password_copy(dir: &Path) -> (PathBuf, String) {
    let secret = std::fs::read_to_string(env("OSM_VC_PASSWORD_FILE")).unwrap();
    let secret = secret.lines().next().unwrap().to_string();
    let p = dir.join("vc.password");
    std::fs::write(&p, format!("{secret}\n")).unwrap();
    (p, secret)
}

fn discover_json(agent: &Agent, extra: &[&str]) -> Vec<VmInfo> {
    let mut args = vec!["--output", "json", "discover"];
    args.extend_from_slice(extra);
    let out = agent.osmctl(&args);
    assert!(
        out.status.success(),
        "discover: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn discovery_matches_the_test_beds_inventory() {
    let tmp = osm_integration_tests::scratch();
    let (pw, secret) = password_copy(tmp.path());
    let agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: section(&pw, &ca()),
            ..Default::default()
        },
    );
    let vms = discover_json(&agent, &[]);
    let ds_dir = PathBuf::from(env("OSM_VC_DATASTORE_DIR"));
    let get = |n: &str| {
        vms.iter()
            .find(|v| v.name == n)
            .unwrap_or_else(|| panic!("{n} not discovered"))
    };
    // name, disks, NICs, power, tools
    let expected = [
        ("osm-linux-1", 1, 2, "poweredOn", "guestToolsRunning"),
        ("osm-linux-2disk", 2, 1, "poweredOn", "guestToolsRunning"),
        ("osm-cbt-1", 2, 1, "poweredOn", "guestToolsRunning"),
        ("web [prod] ünïcode 1", 3, 3, "poweredOn", "guestToolsNotRunning"),
        ("db-consolidate", 1, 1, "poweredOff", "guestToolsNotRunning"),
        ("deep-snapshots", 1, 1, "poweredOn", "guestToolsRunning"),
    ];
    for (name, disks, nics, power, tools) in expected {
        let v = get(name);
        assert_eq!(v.disks.len(), disks, "{name} disks");
        assert_eq!(v.nics.len(), nics, "{name} NICs");
        assert_eq!(v.power_state, power, "{name}");
        assert_eq!(v.tools_running_status, tools, "{name}");
        assert_eq!(v.inventory_path, format!("/DC0/vm/{name}"));
        assert_eq!(v.datacenter, "DC0");
        assert!(
            v.host.name.starts_with("DC0_C0_H") && !v.host.address.is_empty(),
            "{name}: {:?}",
            v.host
        );
        assert!(v.moref.starts_with("vm-"));
        for d in &v.disks {
            // `[datastore1] dir/x.vmdk` → the flat file the bed made, of exactly that size.
            let rel = d.datastore_path.strip_prefix("[datastore1] ").expect("datastore1 path");
            let flat = ds_dir.join(format!("{}-flat.vmdk", rel.strip_suffix(".vmdk").unwrap()));
            assert_eq!(
                std::fs::metadata(&flat).unwrap().len(),
                d.capacity_bytes,
                "{}",
                flat.display()
            );
            assert_eq!(d.datastore, "datastore1");
            assert_eq!(d.controller_type, "ParaVirtualSCSIController");
            assert!(d.key >= 2000 && !d.independent && !d.rdm);
        }
        for n in &v.nics {
            assert!(n.mac.starts_with("00:50:56:"), "{}", n.mac);
            assert_eq!(n.adapter_type, "vmxnet3");
            assert!(!n.network_name.is_empty() && !n.network_key.is_empty(), "{name}: {n:?}");
            assert_eq!(n.distributed, n.network_name.starts_with("DC0_DVPG"), "{n:?}");
        }
    }
    let l1 = get("osm-linux-1");
    assert!(
        !l1.nics[0].ipv4.is_empty() && !l1.nics[0].ipv6.is_empty(),
        "{:?}",
        l1.nics
    );
    assert!(get("osm-linux-2disk").nics[0].distributed);
    let web = get("web [prod] ünïcode 1");
    let kinds: Vec<bool> = web.nics.iter().map(|n| n.distributed).collect();
    assert_eq!(kinds, [false, false, true]);
    assert!(get("db-consolidate").consolidation_needed);
    assert_eq!(get("db-consolidate").disks[0].capacity_bytes, 256 << 20);
    let deep = get("deep-snapshots");
    assert!(deep.cbt_enabled && deep.disks[0].change_tracking && deep.disks[0].change_id.is_some());
    assert_eq!((deep.snapshots.count, deep.snapshots.depth), (30, 30));
    let cbt = get("osm-cbt-1");
    assert_eq!(
        cbt.disks.iter().map(|d| d.capacity_bytes).collect::<Vec<_>>(),
        [1 << 30, 64 << 20]
    );

    // Filters: by moref and by the odd name, and by folder.
    let one = discover_json(&agent, &["--vm", &web.moref, "--vm", "osm-linux-1"]);
    assert_eq!(
        one.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["web [prod] ünïcode 1", "osm-linux-1"]
    );
    assert_eq!(discover_json(&agent, &["--folder", "/DC0/vm"]).len(), vms.len());

    // The table names the odd VM too.
    let out = agent.osmctl(&["discover", "--vm", "web [prod] ünïcode 1"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("web [prod] ünïcode 1"));
    assert!(!agent.stderr().contains(&secret), "password in the agent's log");
}

fn endpoint(pw: &Path) -> Endpoint {
    Endpoint {
        url: env("OSM_VC_URL").parse().unwrap(),
        user: env("OSM_VC_USER"),
        password_file: pw.to_path_buf(),
        trust: Trust::CaFile(env("OSM_VC_CA_FILE").into()),
        timeout: Duration::from_secs(60),
    }
}

fn extents(v: &[(u64, u64)]) -> ChangedAreas {
    ChangedAreas::Extents(v.iter().map(|&(offset, length)| Extent { offset, length }).collect())
}

#[test]
fn warm_migration_primitive_changed_areas_equal_the_guest_writes_round_after_round() {
    let tmp = osm_integration_tests::scratch();
    let (pw, _) = password_copy(tmp.path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = Client::connect(endpoint(&pw)).await.unwrap();
        let thumb = c.thumbprint_sha1().expect("thumbprint of the verified certificate");
        assert_eq!(thumb, env("OSM_VC_THUMBPRINT_SHA1"));
        let vms = vsphere::inventory::select(
            vsphere::inventory::discover(&c).await.unwrap(),
            &["osm-cbt-1".into()],
            None,
        )
        .unwrap();
        let vm = vsphere::snapshot::vm_ref(&vms[0].moref);
        c.remove_osm_snapshots(&vm).await.unwrap();
        // A fresh bed has CBT off on this VM: turn it on (ReconfigVM_Task).
        c.set_change_tracking(&vm, true).await.unwrap();

        // Round 0: one snapshot for both disks, changeIds read from it.
        let s0 = c.create_sync_snapshot(&vm, "test-0", false).await.unwrap();
        assert_eq!(s0.disks.len(), 2);
        assert!(s0.disks.iter().all(|d| d.change_id.is_some()), "{s0:?}");
        let (d0, d1) = (&s0.disks[0], &s0.disks[1]);
        // "Full read": the whole disk's allocated areas, to the end of the disk.
        let all = c
            .changed_areas(&vm, &s0.snapshot, d0.key, d0.capacity_bytes, "*")
            .await
            .unwrap();
        assert!(matches!(&all, ChangedAreas::Extents(v) if !v.is_empty()), "{all:?}");
        c.remove_snapshot(&s0.snapshot).await.unwrap();

        // The guest writes: in the first window, after an empty window (256-512 MiB), and
        // near the end of the 1 GiB disk; two adjacent writes merge; one on the small disk.
        let w1: [(u64, u64); 4] = [
            (4096, 65536),
            (69632, 4096),
            (700 << 20, 1 << 20),
            ((1 << 30) - 8192, 8192),
        ];
        for (i, (o, l)) in w1.iter().enumerate() {
            guest_write("osm-cbt-1", d0.key, *o, *l, 100 + i as u64);
        }
        guest_write("osm-cbt-1", d1.key, 512, 1024, 7);
        let s1 = c.create_sync_snapshot(&vm, "test-1", false).await.unwrap();
        let got = c
            .changed_areas(
                &vm,
                &s1.snapshot,
                d0.key,
                s1.disks[0].capacity_bytes,
                d0.change_id.as_deref().unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            got,
            extents(&[(4096, 69632), (700 << 20, 1 << 20), ((1 << 30) - 8192, 8192)])
        );
        let got1 = c
            .changed_areas(
                &vm,
                &s1.snapshot,
                d1.key,
                s1.disks[1].capacity_bytes,
                d1.change_id.as_deref().unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(got1, extents(&[(512, 1024)]));
        c.remove_snapshot(&s1.snapshot).await.unwrap();

        // Next round: only the next writes.
        guest_write("osm-cbt-1", d0.key, 300 << 20, 512, 9);
        let s2 = c.create_sync_snapshot(&vm, "test-2", false).await.unwrap();
        let prev = s1.disks[0].change_id.clone().unwrap();
        let got = c
            .changed_areas(&vm, &s2.snapshot, d0.key, s2.disks[0].capacity_bytes, &prev)
            .await
            .unwrap();
        assert_eq!(got, extents(&[(300 << 20, 512)]));
        let prev1 = s1.disks[1].change_id.clone().unwrap();
        let none = c
            .changed_areas(&vm, &s2.snapshot, d1.key, s2.disks[1].capacity_bytes, &prev1)
            .await
            .unwrap();
        assert_eq!(none, extents(&[]));
        // A changeId the host rejects means "copy this disk in full", not a failure.
        let bogus = c
            .changed_areas(
                &vm,
                &s2.snapshot,
                d0.key,
                s2.disks[0].capacity_bytes,
                "52 00 00 00 00 00 00 00-00 00 00 00 00 00 00 00/1",
            )
            .await
            .unwrap();
        assert!(matches!(bogus, ChangedAreas::FullCopy { .. }), "{bogus:?}");

        // A crash leaves the snapshot behind: clean-up finds it by name and description.
        let removed = c.remove_osm_snapshots(&vm).await.unwrap();
        assert_eq!(removed, vec!["osm-test-2".to_string()]);
        assert!(c.session_is_active().await.unwrap());
        c.logout().await;
    });
}

/// osmctl's stderr must be a single line containing `want`, and the exit status non-zero.
fn one_clear_line(agent: &Agent, args: &[&str], want: &str) {
    let out = agent.osmctl(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: expected '{want}' in: {err}");
}

#[test]
fn misconfigurations_give_one_clear_line_and_the_password_stays_secret() {
    let tmp = osm_integration_tests::scratch();
    let (pw, secret) = password_copy(tmp.path());
    let wrong = tmp.path().join("wrong.password");
    let wrong_secret = format!("wrong-{}", std::process::id());
    std::fs::write(&wrong, &wrong_secret).unwrap();

    let start = |sub: &str, extra: String| {
        let d = tmp.path().join(sub);
        std::fs::create_dir_all(&d).unwrap();
        Agent::start(
            &d,
            Options {
                extra_config: extra,
                ..Default::default()
            },
        )
    };
    let good = start(
        "good",
        section(&pw, &format!("thumbprint = \"{}\"", env("OSM_VC_THUMBPRINT_SHA256"))),
    );
    one_clear_line(
        &good,
        &["discover", "--vm", "no-such-vm"],
        "no VM named or with id 'no-such-vm'",
    );
    one_clear_line(&good, &["check", "vm-999999"], "no VM named or with id 'vm-999999'");
    one_clear_line(
        &good,
        &["discover", "--folder", "/DC0/vm/nope"],
        "no folder '/DC0/vm/nope'",
    );

    let bad_pw = start("badpw", section(&wrong, &ca()));
    one_clear_line(&bad_pw, &["discover"], "wrong user name or password");

    let other = "AA:".repeat(31) + "AA";
    let bad_thumb = start("badthumb", section(&pw, &format!("thumbprint = \"{other}\"")));
    one_clear_line(&bad_thumb, &["discover"], "thumbprint");

    let mut down = section(&pw, &ca());
    down = down.replace(&env("OSM_VC_HOST"), "127.0.0.1:9");
    let unreachable = start("down", down);
    one_clear_line(&unreachable, &["discover"], "cannot reach vCenter");

    // --enable-cbt mutates vCenter: refused to a user outside group osm.
    let out = good.osmctl_as_nobody(&["check", "--enable-cbt", "osm-cbt-1"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("group"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // check: blocking problems give exit status 2 and name the fix.
    let out = good.osmctl(&["check", "db-consolidate"]);
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("consolidation") && text.contains("fix:"), "{text}");

    // Neither password in any process's argv, nor in anything the agents wrote.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd);
            assert!(
                !cmd.contains(&secret) && !cmd.contains(&wrong_secret),
                "password in argv: {cmd}"
            );
        }
    }
    for a in [&good, &bad_pw, &bad_thumb, &unreachable] {
        let log = a.stderr();
        assert!(
            !log.contains(&secret) && !log.contains(&wrong_secret),
            "password in {}",
            a.dir.display()
        );
    }
}
