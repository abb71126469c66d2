//! Crash safety of migrations on the test bed: the agent is killed with SIGKILL at each
//! step of a cold migration's journey (and once in the middle of a warm delta round),
//! started again on the same state folder, and must then finish the migration with
//! - the volumes equal to the source disks, byte for byte;
//! - nothing that was durable copied twice: an nbdkit wrapper (the agent's `nbdkit`
//!   setting) puts nbdkit's stats filter in front of every source it serves, so each byte
//!   read from vCenter is counted, before the kill and after the restart;
//! - exactly one ACTIVE server, one volume per disk, one port per NIC, every volume the
//!   server's only, none left attached to the conversion host, no osm snapshot on the VM.
//!
//! Some steps pass faster than the 20 ms polling can see: a missed step is recorded (the
//! agent is then killed at the step it reached instead) and most steps must be hit; the
//! kills inside the copy always. `OSM_KILL_STEPS=copy,boot` runs only the cold
//! migrations whose kill points start with those labels (the warm test still runs).
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use osm_agent::cloud::openstack::Client;
use osm_api::vsphere::VmInfo;
use osm_api::{JobInfo, JobState, MigrationInfo};
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::disk;
use osm_integration_tests::migration::*;

/// 1 GiB + 64 MiB of generated content (writable by the bed's guest-write).
const VM: &str = "osm-cbt-1";
const MIB: u64 = 1 << 20;
/// `[copy] checkpoint_mib` and `chunk_mib` of these agents (small, so that a window is
/// small next to the disks); connections are the default.
const CHECKPOINT_MIB: u64 = 8;
const CHUNK_MIB: u64 = 4;
const CONNECTIONS: u64 = 4;
/// What one disk's copy may read again after a kill: the work done since its last
/// checkpoint (and while that checkpoint's flush ran), and the chunks in flight.
const WINDOW: u64 = (2 * CHECKPOINT_MIB + (CONNECTIONS + 1) * CHUNK_MIB) * MIB;

/// Both tests migrate the same VM: one at a time.
static BED_VM: Mutex<()> = Mutex::new(());

fn lock_vm() -> std::sync::MutexGuard<'static, ()> {
    BED_VM.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts what the agent's nbdkits read from the source. Each nbdkit records itself as
/// `<generation>-<pid>.started` and its stats filter writes `<generation>-<pid>.txt` when
/// it exits; the test bumps the generation around a kill.
struct SourceReads {
    dir: PathBuf,
}

impl SourceReads {
    fn new(dir: &Path) -> SourceReads {
        let d = dir.join("nbdkit-stats");
        std::fs::create_dir_all(&d).unwrap();
        let nbdkit = osm_agent::exec::resolve("nbdkit").expect("nbdkit is installed");
        // A `rate` file (bits per second) slows the sources started while it exists.
        let script = format!(
            "#!/bin/sh\n# nbdkit with the stats filter outermost: counts what osm reads from the source.\nd='{d}'\nf=\"$d/$(cat \"$d/generation\")-$$\"\n: > \"$f.started\"\nif [ -s \"$d/rate\" ]; then\n  exec '{n}' --filter=stats --filter=rate \"$@\" statsfile=\"$f.txt\" rate=\"$(cat \"$d/rate\")\"\nfi\nexec '{n}' --filter=stats \"$@\" statsfile=\"$f.txt\"\n",
            n = nbdkit.display(),
            d = d.display()
        );
        let s = SourceReads { dir: d };
        std::fs::write(s.program(), script).unwrap();
        std::fs::set_permissions(s.program(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        s.set_generation(1);
        s
    }

    fn program(&self) -> PathBuf {
        self.dir.join("nbdkit")
    }

    /// Limit the sources started from now on to `rate` (nbdkit's rate filter), or not.
    fn set_rate(&self, rate: Option<&str>) {
        let f = self.dir.join("rate");
        match rate {
            Some(r) => std::fs::write(f, r).unwrap(),
            None => {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    fn set_generation(&self, g: u32) {
        std::fs::write(self.dir.join("generation"), g.to_string()).unwrap();
    }

    /// Bytes read by the nbdkits of generation `g`, once each has exited.
    fn read(&self, g: u32) -> u64 {
        let prefix = format!("{g}-");
        let started: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n.starts_with(&prefix) && n.ends_with(".started")
            })
            .collect();
        let end = Instant::now() + Duration::from_secs(15);
        let mut total = 0;
        for s in started {
            // The stats filter opens its file at start and fills it while nbdkit unloads:
            // wait for the process (the wrapper exec'd it: same pid) to be gone.
            let name = s.file_stem().unwrap().to_string_lossy().to_string();
            let pid = name.split_once('-').unwrap().1;
            let running = || {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
                    st.rsplit_once(')')
                        .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
                })
            };
            while running() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
            let stats = s.with_extension("txt");
            match std::fs::read_to_string(&stats) {
                Ok(t) if !t.is_empty() => total += disk::stats_bytes_read(&stats),
                _ => eprintln!("{}: nbdkit wrote no statistics (it never served?)", stats.display()),
            }
        }
        total
    }
}

/// An agent for the bed (as `bed_agent`) whose nbdkit is the counting wrapper.
fn start_agent(dir: &Path, reads: &SourceReads, migration: &str) -> Agent {
    let cfg = format!(
        "byid_dir = \"{}\"\nnbdkit = \"{}\"\n[openstack]\nmetadata_url = \"{}\"\n[migration]\ntransport = \"https\"\nshutdown_timeout_seconds = 20\n{migration}[copy]\ncheckpoint_mib = {CHECKPOINT_MIB}\nchunk_mib = {CHUNK_MIB}\n",
        env("OSM_BYID_DIR"),
        reads.program().display(),
        env("OSM_METADATA_URL"),
    );
    Agent::start(
        dir,
        Options {
            extra_config: cfg,
            ..Default::default()
        },
    )
}

/// The journey's order, from the job's step text.
fn rank(step: &str) -> usize {
    const ORDER: [&str; 11] = [
        "checks",
        "volumes",
        "full sync",
        "warm sync",
        "cutover: shutting",
        "cutover: final sync",
        "conversion",
        "detach",
        "network",
        "boot",
        "done",
    ];
    if step.starts_with("cutover") && !step.starts_with("cutover: final sync") {
        return 4;
    }
    ORDER.iter().position(|p| step.starts_with(p)).unwrap_or(0)
}

/// The bed's clients and the source VM as it was before the migrations.
struct Bed {
    rt: tokio::runtime::Runtime,
    c: Client,
    ep: osm_agent::cloud::vsphere::Endpoint,
    src: VmInfo,
    _tmp: tempfile::TempDir,
}

impl Bed {
    fn new() -> Bed {
        let tmp = osm_integration_tests::scratch();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ep = vc_endpoint(tmp.path());
        let src = rt.block_on(vm(&ep, VM));
        Bed {
            rt,
            c: cloud(),
            ep,
            src,
            _tmp: tmp,
        }
    }
}

/// Everything a finished migration must have left, and nothing more.
fn verify(bed: &Bed, m: &MigrationInfo) {
    let (rt, c, src) = (&bed.rt, &bed.c, &bed.src);
    assert_eq!(m.volumes.len(), src.disks.len(), "one volume per disk");
    for (d, v) in src.disks.iter().zip(&m.volumes) {
        same_bytes(&volume_file(v), &flat_file(&d.datastore_path), d.capacity_bytes).unwrap();
    }
    rt.block_on(async {
        let servers = servers_of(c, &src.moref).await;
        assert_eq!(
            servers
                .iter()
                .map(|s| (s.id.as_str(), s.status.as_str()))
                .collect::<Vec<_>>(),
            vec![(m.server_id.as_str(), "ACTIVE")],
            "exactly one server, ACTIVE"
        );
        let (mut vols, ports) = leftovers(c, &src.moref).await;
        vols.sort();
        let mut want = m.volumes.clone();
        want.sort();
        assert_eq!(vols, want, "no volume but the migration's");
        for v in &vols {
            let info = c.get_volume(v).await.unwrap();
            let on: Vec<_> = info.attachments.iter().filter_map(|a| a.server_id.clone()).collect();
            assert_eq!(on, vec![m.server_id.clone()], "volume {v} is the server's only");
        }
        assert_eq!(ports.len(), src.nics.len(), "one port per NIC");
        for p in c.list_ports(&format!("tags=osm-vm-{}", src.moref)).await.unwrap() {
            assert_eq!(p.device_id, m.server_id, "port {} is the server's", p.id);
        }
        let host = c.server_attachments(&env("OSM_CONVERSION_HOST_ID")).await.unwrap();
        assert!(
            !host.iter().any(|a| vols.contains(&a.volume_id)),
            "no volume stays attached to the conversion host: {host:?}"
        );
        let now = vm(&bed.ep, &src.name).await;
        assert!(
            !now.snapshots.list.iter().any(|s| s.osm),
            "no osm snapshot left: {:?}",
            now.snapshots
        );
    });
}

/// Remove what the migrations of the VM made (servers, ports, volumes) and power the
/// source on again.
fn clean(bed: &Bed) {
    let (c, src) = (&bed.c, &bed.src);
    bed.rt.block_on(async {
        for s in servers_of(c, &src.moref).await {
            let _ = c.delete_server(&s.id, Duration::from_secs(300)).await;
        }
        remove_migrated(c, &src.moref, "").await;
        restore_source(&bed.ep, &src.moref).await;
    });
}

/// Where to kill the agent: the job's step starts with `target` and `ready` holds.
struct Point {
    label: &'static str,
    target: &'static str,
    ready: Box<dyn Fn(&JobInfo) -> bool>,
}

impl Point {
    fn at(label: &'static str, target: &'static str, ready: impl Fn(&JobInfo) -> bool + 'static) -> Point {
        Point {
            label,
            target,
            ready: Box::new(ready),
        }
    }

    fn step(target: &'static str) -> Point {
        Point::at(target, target, |_| true)
    }
}

/// Where the agent was killed.
struct Kill {
    label: &'static str,
    /// The job's step at the kill ("" when the job ended first).
    at: String,
    progress: f64,
    hit: bool,
}

/// Poll (20 ms) until the job reaches the point, then SIGKILL. A job that is already
/// past it (a later step, or `passed`) is killed where it is; one that ended is not.
fn kill_at(agent: &mut Agent, id: u64, point: &Point, passed: impl Fn(&JobInfo) -> bool) -> Kill {
    let want = rank(point.target);
    loop {
        let j = agent.job(id);
        if j.state.is_terminal() {
            return Kill {
                label: point.label,
                at: String::new(),
                progress: 0.0,
                hit: false,
            };
        }
        let r = rank(&j.step);
        let hit = r == want && j.step.starts_with(point.target) && (point.ready)(&j);
        if hit || r > want || passed(&j) {
            agent.kill9();
            return Kill {
                label: point.label,
                at: j.step.clone(),
                progress: j.progress,
                hit,
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_plan(dir: &Path, more: &str) -> PathBuf {
    plan(dir, &[VM], more)
}

/// A copy far enough along (`percent`) that a redo would show (the counters are summed
/// every 500 ms; a 1 GiB copy takes several seconds here).
fn copied(percent: u64) -> impl Fn(&JobInfo) -> bool {
    move |j: &JobInfo| {
        j.bytes_total > 0 && j.bytes_done * 100 >= j.bytes_total * percent && j.bytes_done < j.bytes_total
    }
}

fn volumes_recorded(n: usize) -> impl Fn(&JobInfo) -> bool {
    move |j: &JobInfo| j.migration.as_ref().is_some_and(|m| m.volumes.len() >= n)
}

/// One cold migration, the agent killed at each point in turn and started again; then
/// the checks. Returns the kills.
fn cold_run(bed: &Bed, points: &[Point]) -> Vec<Kill> {
    let src = &bed.src;
    let tmp = osm_integration_tests::scratch();
    let reads = SourceReads::new(tmp.path());
    if points.iter().any(|p| p.target == "cutover: final sync") {
        // At most ~150 MB/s a disk, so that a fast machine still shows the copy's middle.
        reads.set_rate(Some("1200M"));
    }
    let mut agent = start_agent(tmp.path(), &reads, "");
    let plan = write_plan(tmp.path(), "mode = \"cold\"\nskip_conversion = true");
    let t = Instant::now();
    let job = migrate(&agent, &plan);
    let data: u64 = src.disks.iter().map(|d| d.capacity_bytes).sum();
    let copy = rank("cutover: final sync");
    let mut kills: Vec<Kill> = Vec::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // reads[g]: what the nbdkits read before kill g (the last: after the last restart).
        let mut reads_by_kill = Vec::new();
        for (g, point) in points.iter().enumerate() {
            let k = kill_at(&mut agent, job.id, point, |_| false);
            let killed = !k.at.is_empty();
            eprintln!(
                "  {}: {} ({:.0} %)",
                point.label,
                if killed {
                    format!("killed at '{}'", k.at)
                } else {
                    "the job ended first".into()
                },
                100.0 * k.progress
            );
            kills.push(k);
            reads_by_kill.push(reads.read(g as u32 + 1));
            reads.set_generation(g as u32 + 2);
            if !killed {
                break;
            }
            agent.restart();
        }
        let done = agent.wait_job(job.id, 300);
        reads_by_kill.push(reads.read(kills.len() as u32 + 1));
        let m = done.migration.clone().expect("migration info");
        assert_eq!(
            done.state,
            JobState::Succeeded,
            "killed at {:?}: {}\n{}",
            kills.iter().map(|k| k.at.as_str()).collect::<Vec<_>>(),
            done.error,
            agent.stderr()
        );
        eprintln!(
            "  source read (MiB) before each kill and after the last restart: {:?} (disks {} MiB); job bytes_read {} MiB; {:.1} s",
            reads_by_kill.iter().map(|r| r >> 20).collect::<Vec<_>>(),
            data >> 20,
            done.bytes_read >> 20,
            t.elapsed().as_secs_f64()
        );
        eprintln!("  steps: {}", step_timings(&m));
        if kills.iter().any(|k| !k.at.is_empty()) {
            assert!(agent.stderr().contains("resuming job"), "the job resumed");
        }
        for (i, k) in kills.iter().enumerate().filter(|(_, k)| !k.at.is_empty()) {
            if rank(&k.at) > copy {
                assert!(
                    reads_by_kill[i + 1..].iter().all(|r| *r == 0),
                    "the copy was complete at the kill at '{}': nothing is read again",
                    k.at
                );
            } else if rank(&k.at) < copy {
                assert!(
                    reads_by_kill[..=i].iter().all(|r| *r == 0),
                    "nothing is read before the copy step ('{}')",
                    k.at
                );
            }
        }
        let in_copy = kills.iter().filter(|k| rank(&k.at) == copy).count() as u64;
        let window = WINDOW * src.disks.len() as u64 * in_copy;
        let total: u64 = reads_by_kill.iter().sum();
        assert!(
            total <= data + window,
            "read {} MiB from the source in all for {} MiB of disks: more than a checkpoint window ({} MiB) per kill again",
            total >> 20,
            data >> 20,
            window >> 20
        );
        assert!(total >= data / 100 * 99, "the source reads were counted");
        assert!(
            done.bytes_read <= data + window,
            "the job reports {} bytes read for {data} bytes of disks",
            done.bytes_read
        );
        verify(bed, &m);
    }));
    let tc = Instant::now();
    let _ = agent.osmctl(&["cancel", &job.id.to_string()]);
    clean(bed);
    eprintln!("  cleanup {:.1} s", tc.elapsed().as_secs_f64());
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    kills
}

#[test]
fn kill_9_at_each_step_of_a_cold_migration_resumes_and_leaves_one_clean_server() {
    let _vm = lock_vm();
    let t = Instant::now();
    let bed = Bed::new();
    let disks = bed.src.disks.len();
    // One migration per group; the kills of a group hit the same migration in turn.
    let runs: Vec<Vec<Point>> = vec![
        vec![
            // While the second volume is created (a create the state has not recorded
            // yet is found again by its idempotency key)…
            Point::at("volumes: creating", "volumes", volumes_recorded(1)),
            // …and once all are, while they are attached to this host.
            Point::at("volumes: attaching", "volumes", {
                let since = std::cell::Cell::new(None::<Instant>);
                move |j: &JobInfo| {
                    if !volumes_recorded(disks)(j) {
                        return false;
                    }
                    let t = since.get().unwrap_or_else(Instant::now);
                    since.set(Some(t));
                    t.elapsed() >= Duration::from_millis(400)
                }
            }),
        ],
        vec![Point::step("cutover: shutting")],
        vec![
            // In the copy, twice: a resumed round is resumed again.
            Point::at("copy at 30 %", "cutover: final sync", copied(30)),
            Point::at("copy at 65 %", "cutover: final sync", copied(65)),
        ],
        // "conversion" takes no time with skip_conversion: it is never seen.
        vec![Point::step("detach")],
        vec![Point::step("network")],
        vec![Point::step("boot")],
    ];
    let only = std::env::var("OSM_KILL_STEPS").unwrap_or_default();
    let mut kills = Vec::new();
    for points in runs {
        if !only.is_empty() && !points.iter().any(|p| only.split(',').any(|o| p.label.starts_with(o))) {
            continue;
        }
        eprintln!(
            "cold migration killed at {}:",
            points.iter().map(|p| p.label).collect::<Vec<_>>().join(", ")
        );
        kills.extend(cold_run(&bed, &points));
    }
    let summary: Vec<String> = kills
        .iter()
        .map(|k| {
            format!(
                "{}: {}",
                k.label,
                match (k.hit, k.at.as_str()) {
                    (true, at) => format!("hit ({at})"),
                    (false, "") => "missed (the job ended first)".into(),
                    (false, at) => format!("missed, killed at '{at}'"),
                }
            )
        })
        .collect();
    eprintln!(
        "kills:\n  {}\n{:.0} s in all",
        summary.join("\n  "),
        t.elapsed().as_secs_f64()
    );
    let hit = kills.iter().filter(|k| k.hit).count();
    assert!(
        kills.iter().all(|k| !k.label.starts_with("copy") || k.hit),
        "the kill during the copy must be hit: {summary:?}"
    );
    assert!(
        hit * 3 >= kills.len() * 2,
        "at least two thirds of the steps are hit: {summary:?}"
    );
}

#[test]
fn kill_9_during_a_warm_delta_round_resumes_it_and_the_cutover_misses_no_write() {
    let _vm = lock_vm();
    let t = Instant::now();
    let bed = Bed::new();
    let src = &bed.src;
    let tmp = osm_integration_tests::scratch();
    let reads = SourceReads::new(tmp.path());
    let mut agent = start_agent(tmp.path(), &reads, "sync_interval_seconds = 3600\n");
    let plan = write_plan(
        tmp.path(),
        "mode = \"warm\"\ncutover = \"manual\"\nskip_conversion = true",
    );
    let job = migrate(&agent, &plan);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_cutover(&agent, job.id);
        let full = reads.read(1);
        reads.set_generation(2);
        let (key0, key1) = (src.disks[0].key, src.disks[1].key);
        // A delta round of 200 MiB (192 MiB on disk 0, 8 MiB on disk 1), read at 25 MB/s
        // so that it is killed in its middle (guest-write takes ~30 ms a MiB here).
        guest_write(VM, key0, 64 * MIB, 64 * MIB, 31);
        guest_write(VM, key0, 300 * MIB, 64 * MIB, 32);
        guest_write(VM, key0, 700 * MIB, 64 * MIB, 33);
        guest_write(VM, key1, 0, 8 * MIB, 34);
        let delta = 200 * MIB;
        reads.set_rate(Some("200M"));
        let out = agent.osmctl(&["sync", VM]);
        assert!(out.status.success(), "sync: {}", String::from_utf8_lossy(&out.stderr));
        let point = Point::at("delta round at 50 %", "warm sync: delta round", copied(50));
        let kill = kill_at(&mut agent, job.id, &point, |j| {
            j.migration.as_ref().is_some_and(|m| m.sync_rounds >= 1)
        });
        reads.set_rate(None);
        assert!(kill.hit, "the kill missed the delta round (killed at '{}')", kill.at);
        let before = reads.read(2);
        reads.set_generation(3);
        agent.restart();
        wait_cutover(&agent, job.id);
        // Writes after the restart, away from the interrupted round's areas: the cutover
        // must copy them too.
        guest_write(VM, key0, 1000 * MIB, MIB, 35);
        guest_write(VM, key1, 40 * MIB, MIB, 36);
        let out = agent.osmctl(&["cutover", VM]);
        assert!(
            out.status.success(),
            "cutover: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let done = agent.wait_job(job.id, 600);
        assert_eq!(done.state, JobState::Succeeded, "{}\n{}", done.error, agent.stderr());
        let after = reads.read(3);
        let m = done.migration.clone().unwrap();
        eprintln!(
            "warm: full sync read {} MiB; delta of {} MiB killed at {:.0} %: {} MiB read before, {} MiB after the restart (with 2 MiB written since); {} rounds; {:.1} s",
            full >> 20,
            delta >> 20,
            100.0 * kill.progress,
            before >> 20,
            after >> 20,
            m.sync_rounds,
            t.elapsed().as_secs_f64()
        );
        eprintln!("  steps: {}", step_timings(&m));
        verify(&bed, &m);
        // Disk 1's delta (8 MiB) is smaller than a window: at most all of it again.
        let window = WINDOW + 8 * MIB;
        assert!(
            before + after <= delta + 2 * MIB + window,
            "{} MiB read for {} MiB of changes: more than one checkpoint window ({} MiB) again",
            (before + after) >> 20,
            (delta + 2 * MIB) >> 20,
            window >> 20
        );
    }));
    let _ = agent.osmctl(&["cancel", &job.id.to_string()]);
    clean(&bed);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
