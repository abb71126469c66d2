//! Volumes (one per disk, tagged), attachment to this host, and the copy rounds: ONE
//! snapshot for all disks, changed areas from the changeIds the volumes hold, all disks
//! copied in parallel (bounded), changeIds committed only after the data is durable.
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::body::{fail, Ctx};
use super::identity::Identity;
use super::state::{now_unix, DiskState, Phase, Round};
use crate::blockdev;
use crate::cloud::openstack::{Metadata, VolumeSpec};
use crate::cloud::vsphere::{self, snapshot::vm_ref, ChangedAreas};
use crate::exec::nbdkit::{Nbdkit, NbdkitSpec};
use crate::jobs::copy_job::JobError;
use crate::nbd::copy::{self, Checkpoint, CopySpec, Counters};
use crate::nbd::Endpoint;

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// One volume per disk (found again by its idempotency key after a crash), attached.
pub async fn ensure_volumes(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Volumes;
    let st = ctx.snapshot_state();
    let vm = st
        .vm
        .clone()
        .ok_or_else(|| fail(p, "the checks did not record the VM"))?;
    let plan = &ctx.job.plan;
    let origin = if st.origin_job == 0 { ctx.id } else { st.origin_job };
    ctx.update(|s| s.origin_job = origin)?;
    // Keys and tags name this vCenter, VM, host and lineage: another agent's volume of a
    // VM with the same moref and job id is never adopted. (A volume an older osm made
    // and did not record before a crash is not found again: cleanup of that job lists
    // what it recorded only.)
    let identity = Identity::of(&ctx.snapshot_state(), ctx.id);
    for (i, d) in vm.disks.iter().enumerate() {
        ctx.stopped()?;
        let known = st.disks.iter().find(|x| x.key == d.key).cloned();
        if let Some(k) = &known {
            // Only a volume Cinder says is gone is replaced; any other error stops here.
            match ctx.os.get_volume(&k.volume_id).await {
                Ok(_) => continue,
                Err(e) if e.is_not_found() => tracing::warn!(
                    "volume {} of disk {} is gone; creating a new one (its data is copied again)",
                    k.volume_id,
                    d.label
                ),
                Err(e) => return Err(fail(p, format!("volume {} of disk {}: {e}", k.volume_id, d.label))),
            }
        }
        let mut metadata = identity.tags();
        metadata.insert("osm_vm_name".into(), truncate(&vm.name, 255));
        metadata.insert("osm_disk_key".into(), d.key.to_string());
        metadata.insert("osm_disk_index".into(), i.to_string());
        let spec = VolumeSpec {
            name: truncate(&format!("osm-{}-disk{i}", vm.name), 255),
            size_bytes: d.capacity_bytes,
            volume_type: plan
                .volume_type_mapping
                .get(&d.datastore)
                .or(plan.volume_type.as_ref())
                .cloned(),
            availability_zone: plan.availability_zone.clone(),
            description: Some(truncate(
                &format!("{} of VMware VM {} ({}), copied by osm", d.label, vm.name, vm.moref),
                255,
            )),
            metadata,
            idempotency_key: Some(identity.volume_key(d.key)),
        };
        // A volume an earlier try of this step made (found by its key) may hold data: only
        // one created now, on a backend whose new volumes read as zeros, is fresh.
        let earlier = ctx
            .os
            .volume_by_key(spec.idempotency_key.as_deref().unwrap_or_default())
            .await
            .map_err(|e| fail(p, e))?;
        let fresh = earlier.is_none() && plan.new_volumes_read_as_zeros;
        let v = match earlier {
            Some(v) => v,
            None => ctx.os.create_volume(&spec).await.map_err(|e| fail(p, e))?,
        };
        let timeout = ctx.engine.settings().openstack.volume_timeout;
        ctx.os
            .wait_volume(&v.id, &["available", "in-use"], timeout)
            .await
            .map_err(|e| fail(p, e))?;
        tracing::info!(
            "volume {} ({} GiB) for {} ({})",
            v.id,
            v.size,
            d.label,
            d.datastore_path
        );
        ctx.update(|s| {
            s.disks.retain(|x| x.key != d.key);
            s.disks.push(DiskState {
                key: d.key,
                datastore_path: d.datastore_path.clone(),
                datastore: d.datastore.clone(),
                capacity_bytes: d.capacity_bytes,
                volume_id: v.id.clone(),
                fresh,
                ..Default::default()
            });
            let order: Vec<i32> = vm.disks.iter().map(|d| d.key).collect();
            s.disks.sort_by_key(|x| order.iter().position(|k| *k == x.key));
        })?;
    }
    ensure_attached(ctx, p).await
}

/// Every volume attached to this host with its identity verified (by-id link of its
/// serial → a block device of the volume's size): at every round and after every
/// restart. A device that vanished or no longer matches is attached again (a volume
/// detached by hand); a migration never writes to an unverified path.
pub async fn ensure_attached(ctx: &Ctx, p: Phase) -> Result<(), JobError> {
    let st = ctx.snapshot_state();
    for d in st.disks.iter().filter(|d| d.device.is_some()) {
        let device = d.device.as_deref().unwrap_or_default();
        if let Err(why) = blockdev::verify(&ctx.block.byid_dir, &d.volume_id, device, d.capacity_bytes) {
            tracing::warn!("volume {}: {why}; attaching it again", d.volume_id);
            let key = d.key;
            ctx.update(|s| {
                if let Some(x) = s.disks.iter_mut().find(|x| x.key == key) {
                    x.device = None;
                }
            })?;
        }
    }
    let st = ctx.snapshot_state();
    for d in st.disks.iter().filter(|d| d.device.is_none()) {
        ctx.stopped()?;
        let v = ctx.os.get_volume(&d.volume_id).await.map_err(|e| fail(p, e))?;
        let here = v
            .attachments
            .iter()
            .any(|a| a.server_id.as_deref() == Some(st.host_server_id.as_str()));
        let device = match blockdev::find_byid(&ctx.block.byid_dir, &d.volume_id) {
            Some((link, _)) if here => link,
            _ => {
                if here {
                    blockdev::detach(ctx.os.as_ref(), &ctx.block, &st.host_server_id, &d.volume_id)
                        .await
                        .map_err(|e| fail(p, e))?;
                } else if !v.attachments.is_empty() {
                    return Err(fail(
                        p,
                        format!(
                            "volume {} is attached to another server ({}); detach it there or run `osmctl cleanup`",
                            d.volume_id,
                            v.attachments
                                .iter()
                                .filter_map(|a| a.server_id.clone())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
                blockdev::attach(ctx.os.as_ref(), &ctx.block, &st.host_server_id, &d.volume_id)
                    .await
                    .map_err(|e| fail(p, e))?
                    .path
            }
        };
        tracing::info!("volume {} is {}", d.volume_id, device.display());
        let key = d.key;
        ctx.update(|s| {
            if let Some(x) = s.disks.iter_mut().find(|x| x.key == key) {
                x.device = Some(device.display().to_string());
            }
        })?;
    }
    Ok(())
}

/// Detach every volume from this host: each one is tried, a failure does not stop the
/// rest; the error names every volume that failed.
pub async fn detach_all(ctx: &Ctx) -> Result<(), JobError> {
    let mut failed = Vec::new();
    for d in ctx.snapshot_state().disks {
        if let Err(e) = super::release::detach_one(ctx, &d.volume_id).await {
            failed.push(format!("volume {}: {e}", d.volume_id));
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    Err(fail(Phase::Detach, failed.join("; ")))
}

/// One copy round over all disks: `FullSync` (whole disks), `Warm` (deltas), `Cutover`
/// (deltas, or whole disks for a cold migration).
pub async fn sync_round(ctx: &Ctx, phase: Phase) -> Result<(), JobError> {
    ensure_attached(ctx, phase).await?;
    let moref = ctx.moref();
    let vm = vm_ref(&moref);
    let label = format!("sync-j{}-{}", ctx.id, now_unix());
    let lineage = Identity::of(&ctx.snapshot_state(), ctx.id).lineage();
    let t0 = Instant::now();
    let https = ctx.source.transport == crate::plan::Transport::Https && ctx.source.local_disk_path.is_none();
    let snap = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
        if https {
            refuse_foreign_snapshots(c, &vm).await?;
        }
        let snap = c.create_lineage_snapshot(&vm, &label, false, &lineage).await?;
        let st = ctx.snapshot_state();
        if let Err(e) = check_disk_set(&st.disks, &snap, https) {
            let _ = c.remove_snapshot(&snap.snapshot).await;
            return Err(vsphere::Error::Config(e));
        }
        let mut rounds = Vec::new();
        for d in &st.disks {
            let sd = snap.disks.iter().find(|s| s.key == d.key).expect("checked above");
            if let Some(r) = &d.round {
                // Resumed: keep its oldest changeId, extents and checkpoint; read this
                // round's snapshot.
                let mut r = r.clone();
                r.datastore_path = sd.datastore_path.clone();
                rounds.push((d.key, r));
                continue;
            }
            if d.synced && d.synced_change_id.is_some() && sd.change_id.is_none() {
                tracing::warn!(
                    "changed block tracking is off for disk {}: every round copies it whole (and the cutover takes as long); turn it on again (`osmctl check --enable-cbt`)",
                    d.datastore_path
                );
            }
            let extents = match (&d.synced_change_id, d.synced) {
                (Some(cid), true) => match c
                    .changed_areas(&vm, &snap.snapshot, d.key, sd.capacity_bytes, cid)
                    .await?
                {
                    ChangedAreas::Extents(v) => Some(v),
                    ChangedAreas::FullCopy { reason } => {
                        tracing::warn!("{reason}: copying disk {} whole", d.datastore_path);
                        None
                    }
                },
                _ => None,
            };
            rounds.push((
                d.key,
                Round {
                    change_id: sd.change_id.clone(),
                    extents,
                    checkpoint: None,
                    datastore_path: sd.datastore_path.clone(),
                },
            ));
        }
        Ok((snap, rounds))
    })
    .await;
    let (snap, rounds) = snap.map_err(|e| fail(phase, e))?;
    let snap_secs = t0.elapsed().as_secs_f64();
    ctx.update(|s| {
        for (key, r) in rounds {
            if let Some(d) = s.disks.iter_mut().find(|d| d.key == key) {
                d.round = Some(r);
            }
        }
    })?;
    let t1 = Instant::now();
    let copied = copy_disks(ctx, phase, &snap.snapshot.value).await;
    let copy_secs = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let removed = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
        c.remove_snapshot(&snap.snapshot).await
    })
    .await;
    let read = copied?;
    removed.map_err(|e| {
        fail(
            phase,
            format!("the data is safe, but removing snapshot {}: {e}", snap.name),
        )
    })?;
    let snap_secs = snap_secs + t2.elapsed().as_secs_f64();
    ctx.update(|s| {
        for d in &mut s.disks {
            if let Some(r) = d.round.take() {
                d.synced_change_id = r.change_id;
                d.synced = true;
                d.fresh = false;
            }
        }
        if phase == Phase::Warm {
            s.rounds += 1;
        }
        s.last_round_bytes = read;
        s.last_round_seconds = copy_secs + snap_secs;
        s.last_sync_unix = now_unix();
        // A cutover now: the guest's shutdown, a round like this one, the snapshot work.
        let shutdown = s
            .steps
            .iter()
            .rev()
            .find(|t| t.step == "shutdown")
            .map_or(60.0, |t| t.seconds);
        s.predicted_downtime_seconds = (shutdown + copy_secs + snap_secs).round();
        s.add_timing(&format!("{} round", phase.as_str()), copy_secs + snap_secs);
    })?;
    tracing::info!(
        "{} round: {read} bytes read in {copy_secs:.1} s (+{snap_secs:.1} s snapshot work)",
        phase.as_str()
    );
    // The volumes carry their changeIds too: what they hold survives a lost job store.
    for d in ctx.snapshot_state().disks {
        if let Some(cid) = d.synced_change_id {
            let md: Metadata = [("osm_change_id".to_string(), cid)].into();
            if let Err(e) = ctx.os.merge_volume_metadata(&d.volume_id, &md).await {
                tracing::warn!("volume {}: recording its changeId in its metadata: {e}", d.volume_id);
            }
        }
    }
    Ok(())
}

/// The https transport reads one flat file: a snapshot osm did not take (backup
/// software, a person) means the current data is in a delta it cannot read. Checked at
/// every round, before osm's own snapshot.
async fn refuse_foreign_snapshots(c: &vsphere::Client, vm: &vsphere::types::MoRef) -> Result<(), vsphere::Error> {
    let foreign = c.foreign_snapshots(vm).await?;
    if foreign.is_empty() {
        return Ok(());
    }
    Err(vsphere::Error::Config(format!(
        "the VM has snapshot(s) osm did not take ({}): with them its current data is in delta files that the https transport cannot read, so this round would copy stale data. Remove or consolidate them (a backup tool's snapshot goes when its job ends), or use transport = \"vddk\", then run `osmctl migrate` again",
        foreign.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
    )))
}

/// The snapshot must hold exactly the job's disks at their sizes (a disk added after the
/// volumes were made is not dropped silently), and for https each disk where the job
/// found it (a delta in its place is a snapshot's).
fn check_disk_set(disks: &[DiskState], snap: &vsphere::snapshot::SyncSnapshot, https: bool) -> Result<(), String> {
    for d in disks {
        let Some(sd) = snap.disks.iter().find(|s| s.key == d.key) else {
            return Err(format!(
                "disk {} ({}) is no longer in the VM; run `osmctl cleanup` and migrate again",
                d.key, d.datastore_path
            ));
        };
        if sd.capacity_bytes != d.capacity_bytes {
            return Err(format!(
                "disk {} changed size ({} → {} bytes) during the migration; run `osmctl cleanup` and migrate again",
                d.datastore_path, d.capacity_bytes, sd.capacity_bytes
            ));
        }
        if https && sd.datastore_path != d.datastore_path {
            return Err(format!(
                "disk {} is now read from {} (a snapshot's delta, or the disk moved): the https transport reads only the base file; consolidate the VM's snapshots or use transport = \"vddk\"",
                d.datastore_path, sd.datastore_path
            ));
        }
    }
    let added: Vec<&str> = snap
        .disks
        .iter()
        .filter(|s| !disks.iter().any(|d| d.key == s.key))
        .map(|s| s.datastore_path.as_str())
        .collect();
    if !added.is_empty() {
        return Err(format!(
            "disk(s) {} were added to the VM after its volumes were made; run `osmctl migrate` again: the new disks get volumes and a full copy",
            added.join(", ")
        ));
    }
    Ok(())
}

/// Copy every disk with a round, `parallel_disks` at a time; the bytes read.
async fn copy_disks(ctx: &Ctx, phase: Phase, snapshot: &str) -> Result<u64, JobError> {
    let st = ctx.snapshot_state();
    let work: Vec<(usize, DiskState)> = st
        .disks
        .iter()
        .cloned()
        .enumerate()
        .filter(|(_, d)| {
            d.round
                .as_ref()
                .is_some_and(|r| r.extents.as_ref().is_none_or(|e| !e.is_empty()))
        })
        .collect();
    // Each disk's work is known before its copy starts: the progress counts every disk
    // from the first tick (not only those whose copy already started).
    let per_disk: Vec<Arc<Counters>> = work
        .iter()
        .map(|(_, d)| {
            let c = Counters::default();
            let total = match d.round.as_ref().and_then(|r| r.extents.as_ref()) {
                Some(e) => e.iter().map(|x| x.length).sum(),
                None => d.capacity_bytes,
            };
            c.bytes_total.store(total, Ordering::Relaxed);
            Arc::new(c)
        })
        .collect();
    let limit = Arc::new(tokio::sync::Semaphore::new(
        ctx.engine.settings().migration.parallel_disks,
    ));
    let host = st.vm.as_ref().map(|v| v.host.name.clone()).unwrap_or_default();
    let host_limit = host_readers(&host, ctx.engine.settings().migration.readers_per_host);
    let nbdkit = ctx.engine.nbdkit().cloned();
    let source = ctx.source();
    let mut tasks = tokio::task::JoinSet::new();
    for ((index, disk), counters) in work.into_iter().zip(per_disk.iter().cloned()) {
        let plugin = super::source::plugin(&source, round_path(&disk), snapshot).map_err(|e| fail(phase, e))?;
        let program = nbdkit
            .clone()
            .ok_or_else(|| fail(phase, "nbdkit is not installed (package nbdkit)"))?;
        let (limit, host_limit) = (limit.clone(), host_limit.clone());
        let state = ctx.state.clone();
        let store_job = (ctx.engine.clone(), ctx.id);
        let stop = ctx.stop.clone();
        let socket = ctx.work_dir.join(format!("disk{index}.sock"));
        let log = ctx
            .engine
            .settings()
            .log_dir
            .join(format!("job-{}-nbdkit-disk{index}.log", ctx.id));
        let tuning = ctx.engine.settings().copy.clone();
        let span = tracing::Span::current();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let _host_permit = host_limit.acquire_owned().await;
            tokio::task::spawn_blocking(move || {
                let _e = span.enter();
                copy_one(
                    &program, index, &disk, plugin, socket, &log, tuning, &state, &store_job, &stop, &counters,
                )
            })
            .await
            .unwrap_or_else(|e| Err(format!("copy thread panicked: {e}")))
        });
    }
    // Progress: the sum of the disks' counters.
    let mut failures = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = tasks.join_next() => match r {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(e))) => failures.push(e),
                Some(Err(e)) => failures.push(e.to_string()),
            },
            _ = tick.tick() => sum_counters(&ctx.counters, &per_disk),
        }
    }
    sum_counters(&ctx.counters, &per_disk);
    if failures.iter().any(|e| e == "cancelled") {
        return Err(JobError::Stopped);
    }
    if !failures.is_empty() {
        return Err(fail(phase, failures.join("; ")));
    }
    Ok(per_disk.iter().map(|c| c.bytes_read.load(Ordering::Relaxed)).sum())
}

/// The disk file this round reads: its snapshot's (older checkpoints recorded none).
fn round_path(disk: &DiskState) -> &str {
    match disk.round.as_ref().map(|r| r.datastore_path.as_str()) {
        Some(p) if !p.is_empty() => p,
        _ => &disk.datastore_path,
    }
}

/// The readers allowed at once on one ESXi host, shared by every migration.
fn host_readers(host: &str, per_host: usize) -> Arc<tokio::sync::Semaphore> {
    type Hosts = std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>;
    static HOSTS: std::sync::OnceLock<Hosts> = std::sync::OnceLock::new();
    HOSTS
        .get_or_init(Default::default)
        .lock()
        .expect("hosts")
        .entry(host.to_string())
        .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(per_host.max(1))))
        .clone()
}

fn sum_counters(total: &Counters, parts: &[Arc<Counters>]) {
    let sum = |f: fn(&Counters) -> &std::sync::atomic::AtomicU64| {
        parts.iter().map(|c| f(c).load(Ordering::Relaxed)).sum::<u64>()
    };
    total.bytes_total.store(sum(|c| &c.bytes_total), Ordering::Relaxed);
    total.bytes_done.store(sum(|c| &c.bytes_done), Ordering::Relaxed);
    total.bytes_read.store(sum(|c| &c.bytes_read), Ordering::Relaxed);
    total.bytes_written.store(sum(|c| &c.bytes_written), Ordering::Relaxed);
}

#[allow(clippy::too_many_arguments)]
fn copy_one(
    program: &std::path::Path,
    index: usize,
    disk: &DiskState,
    plugin: crate::exec::nbdkit::Plugin,
    socket: PathBuf,
    log: &std::path::Path,
    tuning: copy::Tuning,
    state: &std::sync::Mutex<super::state::State>,
    (engine, id): &(crate::jobs::engine::Engine, u64),
    stop: &std::sync::atomic::AtomicBool,
    counters: &Counters,
) -> Result<(), String> {
    let round = disk.round.clone().expect("disk has a round");
    let device = disk.device.clone().ok_or("volume is not attached")?;
    let server = Nbdkit::start(program, &NbdkitSpec { plugin, socket }, log, Duration::from_secs(60))
        .map_err(|e| format!("disk {index} ({}): {e}", disk.datastore_path))?;
    let spec = CopySpec {
        source: Endpoint::Unix(server.socket().to_path_buf()),
        target: PathBuf::from(&device),
        extents: round.extents.clone(),
        target_is_zero: disk.fresh && round.extents.is_none(),
        device_only: true,
        tuning,
    };
    let key = disk.key;
    let mut save = |cp: &Checkpoint| -> Result<(), String> {
        let json = {
            let mut s = state.lock().expect("state");
            if let Some(r) = s.disks.iter_mut().find(|d| d.key == key).and_then(|d| d.round.as_mut()) {
                r.checkpoint = Some(cp.clone());
            }
            serde_json::to_string(&*s).map_err(|e| e.to_string())?
        };
        engine
            .store()
            .set_checkpoint(*id, &json, 0, 0)
            .map_err(|e| e.to_string())
    };
    tracing::info!(
        "disk {index}: copying {} to {device} ({})",
        disk.datastore_path,
        match &round.extents {
            None => "whole disk".to_string(),
            Some(e) => format!(
                "{} changed areas, {} bytes",
                e.len(),
                e.iter().map(|x| x.length).sum::<u64>()
            ),
        }
    );
    match copy::run(&spec, round.checkpoint.clone(), stop, counters, &mut save) {
        Ok(cp) => {
            tracing::info!(
                "disk {index}: {} bytes read, {} written, flushed",
                cp.bytes_read,
                cp.bytes_written
            );
            Ok(())
        }
        Err(copy::CopyError::Cancelled) => Err("cancelled".into()),
        Err(e) => Err(format!("disk {index} ({}): {e}", disk.datastore_path)),
    }
}
