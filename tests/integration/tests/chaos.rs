//! Chaos run on the test bed: `OSM_CHAOS_VMS` migrations (default 4: the short CI
//! version; tests/chaos/run does 10+) at `[migration] max_concurrent = 3`, a mix of cold,
//! warm with immediate cutover and warm with a manual cutover after guest writes and
//! delta rounds, all `skip_conversion`. Meanwhile the agent is killed with SIGKILL and
//! restarted at random moments (seeded: `OSM_CHAOS_SEED`, printed), ~10 % of its
//! OpenStack calls get a fault from the FaultProxy, and the vCenter simulator is
//! restarted once mid-sync (it keeps its snapshots, as vCenter does).
//!
//! Afterwards every VM is migrated — at once, or failed with a reason and then continued
//! by `osmctl migrate` with the same plan —, each volume equals its source disk (SHA-256
//! of the flat file and of the volume file), and osm left no snapshot on the VM, no
//! volume attached to the conversion host and no volume or port beyond the migrated
//! server's own (counted by tags). The counts are printed.
//!
//! The simulator is a private instance (`OSM_CHAOS_STATE`, default /var/tmp/osm-chaos,
//! port `OSM_CHAOS_VC_PORT`, default 8990) started and stopped by the test; OpenStack is
//! the bed's (source $OSM_TESTBED_STATE/env). Each VM's server, volumes and ports are
//! removed once verified (the project's volume quota is small).
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use osm_agent::cloud::openstack::Client;
use osm_agent::cloud::vsphere::{self, snapshot::vm_ref, Endpoint};
use osm_api::vsphere::VmInfo;
use osm_api::{JobInfo, JobState};
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::faultproxy::FaultProxy;
use osm_integration_tests::migration::*;

fn var(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// xorshift64*: the run's only source of randomness, seeded and printed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// A private vcsim-osm instance (tests/testbed/vsphere/up.sh with its own state and port).
struct Sim {
    state: PathBuf,
    port: String,
    extra: usize,
}

impl Sim {
    fn script(&self, name: &str) -> Command {
        let mut c = Command::new(
            osm_integration_tests::repo_root()
                .join("tests/testbed/vsphere")
                .join(name),
        );
        c.env("OSM_TESTBED_STATE", &self.state)
            .env("OSM_VC_PORT", &self.port)
            .env("OSM_VC_EXTRA_VMS", self.extra.to_string())
            .env("OSM_VC_EXTRA_TOOLS", "running");
        for k in [
            "OSM_GUEST_IMAGE",
            "OSM_GUEST2_DISK1",
            "OSM_GUEST2_DISK2",
            "OSM_VC_QCDA_PAGE",
        ] {
            c.env_remove(k);
        }
        c
    }

    fn run(&self, mut c: Command, what: &str) {
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start it and point this process's OSM_VC_* at it (helpers and children read them).
    fn up(&self) {
        self.run(self.script("up.sh"), "vsphere/up.sh");
        let env = std::fs::read_to_string(self.state.join("env.d/vsphere.env")).unwrap();
        for line in env.lines() {
            let Some((k, v)) = line.trim_start_matches("export ").split_once('=') else {
                continue;
            };
            let v = v.trim_matches('\'');
            std::env::set_var(k, v.replace("\\ ", " "));
        }
    }

    /// Stop it (as a crash or an upgrade of vCenter would) and start it again on its state.
    fn restart(&self) {
        let lib = osm_integration_tests::repo_root().join("tests/testbed/lib.sh");
        let mut stop = Command::new("bash");
        stop.args(["-c", "source \"$1\"; tb_stop vsphere", "_"])
            .arg(lib)
            .env("OSM_TESTBED_STATE", &self.state);
        self.run(stop, "tb_stop vsphere");
        self.up();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Keep the simulator's log and bookkeeping of the last run for a post-mortem.
        let keep = PathBuf::from(format!("{}.last", self.state.display()));
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::copy(self.state.join("log/vsphere.log"), keep.join("vsphere.log"));
        let _ = std::fs::copy(self.state.join("vsphere/cbt.json"), keep.join("cbt.json"));
        let _ = self.script("down.sh").output();
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Cold,
    WarmImmediate,
    WarmManual,
}

struct Vm {
    src: VmInfo,
    kind: Kind,
    plan: PathBuf,
    job: u64,
    failures: Vec<String>,
    writes: u32,
    /// sync_rounds when this job first waited for its cutover
    base: Option<u32>,
    sync_at: Option<Instant>,
    cutover_at: Option<Instant>,
    done: bool,
}

#[derive(Default, Debug)]
struct Leaks {
    snapshots: usize,
    attached: usize,
    volumes: usize,
    ports: usize,
}

/// Verify a migrated VM (volumes equal the source disks), count what osm left, remove the
/// server, its volumes and ports.
async fn verify_and_clean(c: &Client, ep: &Endpoint, vm: &Vm, j: &JobInfo, leaks: &mut Leaks) -> Result<(), String> {
    let m = j.migration.clone().ok_or("no migration info")?;
    let src = &vm.src;
    let mut err = Ok(());
    if m.volumes.len() != src.disks.len() {
        err = Err(format!(
            "{}: {} volumes for {} disks",
            src.name,
            m.volumes.len(),
            src.disks.len()
        ));
    }
    for (d, v) in src.disks.iter().zip(&m.volumes) {
        let a = sha256_prefix(&flat_file(&d.datastore_path), d.capacity_bytes);
        let b = sha256_prefix(&volume_file(v), d.capacity_bytes);
        if a != b && err.is_ok() {
            err = Err(format!(
                "{}: volume {v} differs from disk {} ({b} vs {a})",
                src.name, d.key
            ));
        }
    }
    let snaps = vsphere::with_client(ep, async |vc: &vsphere::Client| {
        vc.remove_osm_snapshots(&vm_ref(&src.moref)).await
    })
    .await
    .map_err(|e| e.to_string())?;
    if !snaps.is_empty() {
        eprintln!("  LEAK {}: osm snapshots {snaps:?}", src.name);
    }
    leaks.snapshots += snaps.len();
    let host = env("OSM_CONVERSION_HOST_ID");
    let (vols, _) = leftovers(c, &src.moref).await;
    for v in &vols {
        if let Ok(vol) = c.get_volume(v).await {
            if vol
                .attachments
                .iter()
                .any(|a| a.server_id.as_deref() == Some(host.as_str()))
            {
                eprintln!("  LEAK {}: volume {v} attached to the conversion host", src.name);
                leaks.attached += 1;
            }
        }
    }
    let own_ports: BTreeSet<String> = if m.server_id.is_empty() {
        BTreeSet::new()
    } else {
        let ps = c
            .list_ports(&format!("device_id={}", m.server_id))
            .await
            .map_err(|e| e.to_string())?;
        ps.into_iter().map(|p| p.id).collect()
    };
    if !m.server_id.is_empty() {
        c.delete_server(&m.server_id, Duration::from_secs(300))
            .await
            .map_err(|e| e.to_string())?;
    }
    let (vols, ports) = leftovers(c, &src.moref).await;
    let own_vols: BTreeSet<&String> = m.volumes.iter().collect();
    let extra_vols: Vec<&String> = vols.iter().filter(|v| !own_vols.contains(v)).collect();
    let extra_ports: Vec<&String> = ports.iter().filter(|p| !own_ports.contains(*p)).collect();
    if !extra_vols.is_empty() || !extra_ports.is_empty() {
        eprintln!("  LEAK {}: volumes {extra_vols:?} ports {extra_ports:?}", src.name);
    }
    leaks.volumes += extra_vols.len();
    leaks.ports += extra_ports.len();
    remove_migrated(c, &src.moref, "").await;
    err
}

#[test]
fn chaos_migrations_with_kills_faults_and_a_simulator_restart_end_migrated_and_clean() {
    let t0 = Instant::now();
    let n: usize = var("OSM_CHAOS_VMS", "4").parse().unwrap();
    let seed: u64 = var(
        "OSM_CHAOS_SEED",
        &(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            % 100_000)
            .to_string(),
    )
    .parse()
    .unwrap();
    let limit = Duration::from_secs(
        var("OSM_CHAOS_TIMEOUT_SECONDS", &(300 + 120 * n).to_string())
            .parse()
            .unwrap(),
    );
    eprintln!("  chaos: {n} VMs, seed {seed} (OSM_CHAOS_SEED={seed} repeats the run's choices)");
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);

    let sim = Sim {
        state: var("OSM_CHAOS_STATE", "/var/tmp/osm-chaos").into(),
        port: var("OSM_CHAOS_VC_PORT", "8990"),
        extra: n,
    };
    sim.up();
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let ep = vc_endpoint(tmp.path());
    let c = cloud(); // direct, for the checks

    // The agent's OpenStack goes through the fault proxy: a clouds.yaml naming it.
    let proxy = rt.block_on(FaultProxy::start(
        &[5000, 8774, 8776, 9696, 9292],
        10,
        seed ^ 0xc4a0_5000,
    ));
    let clouds = std::fs::read_to_string(env("OS_CLIENT_CONFIG_FILE")).unwrap();
    let proxied = tmp.path().join("clouds.yaml");
    std::fs::write(&proxied, proxy.url_for(&clouds)).unwrap();
    assert_ne!(
        clouds,
        proxy.url_for(&clouds),
        "clouds.yaml names Keystone at 127.0.0.1:5000"
    );

    let cfg = format!(
        "byid_dir = \"{}\"\n[openstack]\nmetadata_url = \"{}\"\n[migration]\ntransport = \"https\"\nshutdown_timeout_seconds = 5\nmax_concurrent = 3\nsync_interval_seconds = 3600\n",
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

    // The VMs: running guests (plain scale VMs of the private simulator), CBT on.
    let kinds = [Kind::Cold, Kind::WarmManual, Kind::WarmImmediate];
    let mut vms: Vec<Vm> = (0..n)
        .map(|i| {
            let name = format!("scale-{:04}", i + 1);
            let src = rt.block_on(vm(&ep, &name));
            rt.block_on(vsphere::with_client(&ep, async |vc: &vsphere::Client| {
                let r = vm_ref(&src.moref);
                vc.set_change_tracking(&r, true).await
            }))
            .unwrap();
            assert_eq!(
                src.power_state, "poweredOn",
                "{name}: a running guest (OSM_VC_EXTRA_TOOLS=running)"
            );
            let kind = kinds[i % 3];
            let dir = tmp.path().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            let mode = match kind {
                Kind::Cold => "mode = \"cold\"",
                Kind::WarmImmediate => "mode = \"warm\"\ncutover = \"immediate\"",
                Kind::WarmManual => "mode = \"warm\"\ncutover = \"manual\"",
            };
            let p = plan(&dir, &[&name], &format!("{mode}\nskip_conversion = true"));
            let text = std::fs::read_to_string(&p).unwrap().replace(
                "[destination]\n",
                &format!("[destination]\nclouds_yaml = \"{}\"\n", proxied.display()),
            );
            std::fs::write(&p, text).unwrap();
            Vm {
                src,
                kind,
                plan: p,
                job: 0,
                failures: Vec::new(),
                writes: 0,
                base: None,
                sync_at: None,
                cutover_at: None,
                done: false,
            }
        })
        .collect();
    for v in vms.iter_mut() {
        v.job = migrate(&agent, &v.plan).id;
    }

    let mut kills = 0u32;
    let max_kills = n.max(3) as u32;
    let mut next_kill = Instant::now() + Duration::from_secs(rng.range(5, 20));
    let mut sim_restarted: Option<String> = None;
    let mut leaks = Leaks::default();
    let mut errors: Vec<String> = Vec::new();
    let mut history: BTreeMap<String, Vec<String>> = BTreeMap::new();
    while vms.iter().any(|v| !v.done) {
        assert!(
            t0.elapsed() < limit,
            "chaos run over {limit:?}: {:?}\n{}",
            vms.iter()
                .filter(|v| !v.done)
                .map(|v| (v.src.name.clone(), agent.job(v.job).step))
                .collect::<Vec<_>>(),
            agent.stderr()
        );
        for v in vms.iter_mut().filter(|v| !v.done) {
            let j = agent.job(v.job);
            let h = history.entry(v.src.name.clone()).or_default();
            if h.last() != Some(&j.step) && !j.step.is_empty() {
                h.push(j.step.clone());
            }
            // One simulator restart, mid-sync (a copy or a delta round under way).
            if sim_restarted.is_none() && (j.step.starts_with("full sync") || j.step.contains("delta round")) {
                eprintln!(
                    "  [{:>5.1}s] restarting the vCenter simulator ({}: {})",
                    t0.elapsed().as_secs_f64(),
                    v.src.name,
                    j.step
                );
                sim.restart();
                sim_restarted = Some(format!("{} at '{}'", v.src.name, j.step));
            }
            let disk = &v.src.disks[0];
            match v.kind {
                // The running guest writes while the full copy runs; the final sync takes it.
                Kind::WarmImmediate if v.writes == 0 && (j.step.starts_with("full sync") || j.step == "volumes") => {
                    guest_write(&v.src.name, disk.key, 8 << 20, 1 << 20, seed + 1);
                    v.writes = 1;
                }
                // Two write + delta rounds, then the cutover (asked again when a kill lost it).
                Kind::WarmManual if j.step.contains("waiting for the cutover") => {
                    let rounds = j.migration.as_ref().map_or(0, |m| m.sync_rounds);
                    let rel = rounds.saturating_sub(*v.base.get_or_insert(rounds));
                    let stale = |t: Option<Instant>| t.is_none_or(|t| t.elapsed() > Duration::from_secs(20));
                    if v.writes < 2 && (rel >= v.writes || stale(v.sync_at)) {
                        if rel >= v.writes {
                            let off = (16 + 8 * v.writes as u64) << 20;
                            guest_write(&v.src.name, disk.key, off, 1 << 20, seed + 10 + v.writes as u64);
                            v.writes += 1;
                        }
                        let out = agent.osmctl(&["sync", &v.job.to_string()]);
                        assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
                        v.sync_at = Some(Instant::now());
                    } else if v.writes >= 2 && rel >= 2 && stale(v.cutover_at) {
                        let out = agent.osmctl(&["cutover", &v.job.to_string()]);
                        assert!(
                            out.status.success(),
                            "cutover: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        v.cutover_at = Some(Instant::now());
                    }
                }
                _ => {}
            }
            if !j.state.is_terminal() {
                continue;
            }
            if j.state == JobState::Succeeded {
                eprintln!(
                    "  [{:>5.1}s] {} ({:?}) migrated after {} failure(s)",
                    t0.elapsed().as_secs_f64(),
                    v.src.name,
                    v.kind,
                    v.failures.len()
                );
                if let Err(e) = rt.block_on(verify_and_clean(&c, &ep, v, &j, &mut leaks)) {
                    errors.push(e);
                }
                v.done = true;
                continue;
            }
            // Failed (or cancelled): with a reason, and the same plan continues it.
            assert!(
                !j.error.trim().is_empty(),
                "job {} of {} ended {} without a reason",
                j.id,
                v.src.name,
                j.state
            );
            eprintln!(
                "  [{:>5.1}s] {} ({:?}) {}: {} — continuing with osmctl migrate",
                t0.elapsed().as_secs_f64(),
                v.src.name,
                v.kind,
                j.state,
                j.error
            );
            v.failures.push(j.error.clone());
            assert!(
                v.failures.len() <= 5,
                "{} failed {} times: {:?}",
                v.src.name,
                v.failures.len(),
                v.failures
            );
            // A continued warm job waits for its cutover again: two more rounds first.
            (v.writes, v.base, v.sync_at, v.cutover_at) = (0, None, None, None);
            v.job = migrate(&agent, &v.plan).id;
        }
        // A random SIGKILL of the agent while migrations run.
        if kills < max_kills && Instant::now() >= next_kill && vms.iter().any(|v| !v.done) {
            kills += 1;
            eprintln!(
                "  [{:>5.1}s] kill -9 of the agent #{kills} ({})",
                t0.elapsed().as_secs_f64(),
                vms.iter()
                    .filter(|v| !v.done)
                    .map(|v| format!(
                        "{}: {}",
                        v.src.name,
                        history[&v.src.name].last().cloned().unwrap_or_default()
                    ))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            agent.restart();
            next_kill = Instant::now() + Duration::from_secs(rng.range(8, 30));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = proxy.stats.lock().unwrap();
    let faults: u64 = stats.faults.values().sum();
    let resumed = vms.iter().filter(|v| !v.failures.is_empty()).count();
    eprintln!(
        "  CHAOS COUNTS: VMs {n} (cold {}, warm-immediate {}, warm-manual {}); migrated {} ({} at once, {} failed-then-resumed, {} failures); kills {kills}; simulator restarts {} ({}); OpenStack calls {} with {faults} faults injected {:?}; leaks: snapshots {}, attached to the conversion host {}, volumes {}, ports {}; seed {seed}; {:.0} s",
        vms.iter().filter(|v| v.kind == Kind::Cold).count(),
        vms.iter().filter(|v| v.kind == Kind::WarmImmediate).count(),
        vms.iter().filter(|v| v.kind == Kind::WarmManual).count(),
        vms.iter().filter(|v| v.done).count(),
        n - resumed,
        resumed,
        vms.iter().map(|v| v.failures.len()).sum::<usize>(),
        sim_restarted.iter().count(),
        sim_restarted.as_deref().unwrap_or("never: no sync seen"),
        stats.calls,
        stats.faults,
        leaks.snapshots,
        leaks.attached,
        leaks.volumes,
        leaks.ports,
        t0.elapsed().as_secs_f64()
    );
    for v in &vms {
        for f in &v.failures {
            eprintln!("    {} failure: {f}", v.src.name);
        }
    }
    assert!(errors.is_empty(), "{errors:#?}");
    assert!(sim_restarted.is_some(), "the simulator was never restarted mid-sync");
    assert_eq!(
        (leaks.snapshots, leaks.attached, leaks.volumes, leaks.ports),
        (0, 0, 0, 0),
        "leaks: {leaks:?}"
    );
    drop(agent);
}
