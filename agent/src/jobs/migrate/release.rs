//! What a failed or cancelled migration gives back: the osm snapshots on the source and
//! the attachments of its volumes to this host. Recorded in the job's state before the
//! first try and tried item by item (one failure does not stop the rest); what is left
//! is retried with backoff by the daemon, after restarts too, until done, and by
//! `osmctl cleanup`. `status` shows what is pending.
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use osm_api::JobState;

use super::body::{prepare, Ctx};
use super::state::{Release, State};
use crate::blockdev;
use crate::cloud::vsphere::{self, snapshot::vm_ref};
use crate::jobs::engine::Engine;

/// Held while releasing for a job that has ended (the retrier, cleanup), and taken by a
/// migration before it starts: a continuation never races a release of its VM.
pub fn lock() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(Default::default)
}

/// After a failure or cancel: record everything to give back, then one try at each.
/// Returns what is left (retried later).
pub async fn release(ctx: &Ctx) -> Vec<String> {
    let st = ctx.snapshot_state();
    let mut todo = Vec::new();
    let moref = ctx.moref();
    if !moref.is_empty() {
        todo.push(Release::Snapshots { moref });
    }
    todo.extend(st.disks.iter().map(|d| Release::Detach {
        volume_id: d.volume_id.clone(),
    }));
    let recorded = ctx.update(|s| {
        for t in todo {
            if !s.pending_release.contains(&t) {
                s.pending_release.push(t);
            }
        }
    });
    if let Err(e) = recorded {
        tracing::error!("recording what to release: {e}");
    }
    try_pending(ctx).await
}

/// One try at every pending item; those done leave the list. Returns what is left.
pub async fn try_pending(ctx: &Ctx) -> Vec<String> {
    for item in ctx.snapshot_state().pending_release {
        let done = match &item {
            Release::Snapshots { moref } => remove_snapshots(ctx, moref).await,
            Release::Detach { volume_id } => detach_one(ctx, volume_id).await,
        };
        match done {
            Ok(()) => {
                if let Err(e) = ctx.update(|s| s.pending_release.retain(|x| x != &item)) {
                    tracing::error!("recording the release of {}: {e}", item.describe());
                }
            }
            Err(e) => tracing::warn!(
                "could not release {}: {e}; retried with backoff (or `osmctl cleanup`)",
                item.describe()
            ),
        }
    }
    ctx.snapshot_state()
        .pending_release
        .iter()
        .map(Release::describe)
        .collect()
}

async fn remove_snapshots(ctx: &Ctx, moref: &str) -> Result<(), String> {
    // Only this lineage's snapshots: another job's (another agent's) sync snapshot stays.
    let lineage = super::identity::Identity::of(&ctx.snapshot_state(), ctx.id).lineage();
    let removed = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
        c.remove_lineage_snapshots(&vm_ref(moref), &lineage).await.map(|r| r.0)
    })
    .await
    .map_err(|e| e.to_string())?;
    if !removed.is_empty() {
        tracing::info!("removed snapshot(s) {}", removed.join(", "));
    }
    Ok(())
}

/// Detach one volume from this host if it is attached here (gone or elsewhere: done).
pub async fn detach_one(ctx: &Ctx, volume_id: &str) -> Result<(), String> {
    let host = ctx.snapshot_state().host_server_id;
    let v = match ctx.os.get_volume(volume_id).await {
        Ok(v) => v,
        Err(e) if e.is_not_found() => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    if !host.is_empty()
        && v.attachments
            .iter()
            .any(|a| a.server_id.as_deref() == Some(host.as_str()))
    {
        blockdev::detach(ctx.os.as_ref(), &ctx.block, &host, volume_id)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!("volume {volume_id} detached");
    }
    ctx.update(|s| {
        if let Some(d) = s.disks.iter_mut().find(|d| d.volume_id == volume_id) {
            d.device = None;
        }
    })
    .map_err(|e| e.to_string())
}

/// First wait between tries; it doubles up to `[migration] release_retry_max_seconds`.
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// The daemon's retrier: every failed or cancelled migration with pending releases is
/// tried again with backoff until nothing is left. When a newer job of the same VM
/// exists, that job owns the VM's osm snapshots and its own volumes: those items are
/// handed over (dropped here); the rest is still retried.
pub fn spawn_retrier(engine: Engine) {
    tokio::spawn(async move {
        let mut next: HashMap<u64, (Instant, Duration)> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let max = engine.settings().migration.release_retry_max;
            let _held = lock().lock().await;
            let jobs = engine.list();
            for j in &jobs {
                let Some(m) = j.migration.as_ref().filter(|m| !m.pending_release.is_empty()) else {
                    continue;
                };
                if !matches!(j.state, JobState::Failed | JobState::Cancelled) {
                    continue;
                }
                let newer = jobs
                    .iter()
                    .filter(|n| n.id > j.id)
                    .filter_map(|n| n.migration.as_ref())
                    .find(|x| x.vm == m.vm);
                let (at, wait) = next.get(&j.id).copied().unwrap_or((Instant::now(), FIRST_RETRY));
                if Instant::now() < at && newer.is_none() {
                    continue;
                }
                let left = retry(&engine, j.id, newer).await;
                if left.is_empty() {
                    tracing::info!(job_id = j.id, "job {}: everything it held is released", j.id);
                    next.remove(&j.id);
                } else if Instant::now() >= at {
                    tracing::warn!(
                        job_id = j.id,
                        "job {}: still to release: {}; next try in {} s",
                        j.id,
                        left.join(", "),
                        wait.as_secs()
                    );
                    next.insert(j.id, (Instant::now() + wait, (wait * 2).min(max)));
                }
            }
        }
    });
}

/// One try for an ended job, from its stored state (after dropping what `newer` owns).
async fn retry(engine: &Engine, id: u64, newer: Option<&osm_api::MigrationInfo>) -> Vec<String> {
    let failed = |e: String| {
        tracing::warn!(job_id = id, "job {id}: cannot retry its releases: {e}");
        vec![e]
    };
    let Ok((job, _)) = engine.migration_job(id) else {
        return vec![];
    };
    let Some((_, counters, _)) = engine.job_handles(id) else {
        return vec![];
    };
    let mut state: State = match engine.store().checkpoint(id) {
        Ok(cp) => cp.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default(),
        Err(e) => return failed(e.to_string()),
    };
    if let Some(n) = newer {
        let before = state.pending_release.len();
        state.pending_release.retain(|r| match r {
            Release::Snapshots { .. } => false,
            Release::Detach { volume_id } => !n.volumes.contains(volume_id),
        });
        if state.pending_release.len() != before {
            tracing::info!(
                job_id = id,
                "job {id}: a newer job of the VM owns its snapshots and volumes now"
            );
            let json = serde_json::to_string(&state).expect("state serializes");
            let (done, total) = (counters.bytes_done.load(Relaxed), counters.bytes_total.load(Relaxed));
            if let Err(e) = engine.store().set_checkpoint(id, &json, done, total) {
                return failed(e.to_string());
            }
            engine.set_migration(id, state.info(&job));
        }
        if state.pending_release.is_empty() {
            return vec![];
        }
    }
    let work_dir = engine.settings().runtime_dir.join("jobs").join(format!("{id}-release"));
    if let Err(e) = std::fs::create_dir_all(&work_dir) {
        return failed(format!("{}: {e}", work_dir.display()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let left = match prepare(
        engine,
        id,
        job,
        state,
        stop,
        Default::default(),
        counters,
        work_dir.clone(),
    )
    .await
    {
        Ok(ctx) => try_pending(&ctx).await,
        Err(e) => failed(e.to_string()),
    };
    let _ = std::fs::remove_dir_all(&work_dir);
    left
}

/// After `osmctl cleanup` removed all it found (snapshots, attachments): nothing is
/// pending any more.
pub fn clear_after_cleanup(engine: &Engine, id: u64) {
    let (Ok((job, _)), Ok(Some(cp)), Some((_, counters, _))) = (
        engine.migration_job(id),
        engine.store().checkpoint(id),
        engine.job_handles(id),
    ) else {
        return;
    };
    let Ok(mut s) = serde_json::from_str::<State>(&cp) else {
        return;
    };
    if s.pending_release.is_empty() {
        return;
    }
    s.pending_release.clear();
    let json = serde_json::to_string(&s).expect("state serializes");
    let (done, total) = (counters.bytes_done.load(Relaxed), counters.bytes_total.load(Relaxed));
    if engine.store().set_checkpoint(id, &json, done, total).is_ok() {
        engine.set_migration(id, s.info(&job));
    }
}
