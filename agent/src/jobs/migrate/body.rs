//! The journey of one VM: each phase saves the state before it starts and after it ends;
//! a resumed job skips the phases it finished. On failure (or cancel) the snapshots are
//! removed and the volumes detached; the volumes stay for `osmctl migrate` to continue,
//! or `osmctl cleanup` to remove.
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::source::SourceContext;
use super::state::{now_unix, Phase, State};
use super::{Controls, MigrateJob};
use crate::blockdev;
use crate::cloud::openstack::{self, OpenStack};
use crate::cloud::vsphere::{self, snapshot::vm_ref, Trust};
use crate::jobs::copy_job::JobError;
use crate::jobs::engine::{Engine, JobRequest};
use crate::nbd::copy::Counters;
use crate::plan::{Cutover, Mode, Secret};

/// Everything a running migration holds.
pub(super) struct Ctx {
    pub engine: Engine,
    pub id: u64,
    pub job: MigrateJob,
    pub state: Arc<Mutex<State>>,
    pub stop: Arc<AtomicBool>,
    pub controls: Arc<Controls>,
    pub counters: Arc<Counters>,
    pub work_dir: PathBuf,
    pub vc: vsphere::Endpoint,
    pub os: Arc<dyn OpenStack>,
    pub block: blockdev::Settings,
    pub source: SourceContext,
}

/// A step failed: the phase and what to do.
pub(super) fn fail(phase: Phase, message: impl std::fmt::Display) -> JobError {
    JobError::Step {
        step: phase.as_str().to_string(),
        message: message.to_string(),
    }
}

impl Ctx {
    pub fn snapshot_state(&self) -> State {
        self.state.lock().expect("state").clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut State)) -> Result<(), JobError> {
        f(&mut self.state.lock().expect("state"));
        self.save()
    }

    /// Persist the state and refresh what `status` shows.
    pub fn save(&self) -> Result<(), JobError> {
        let (json, info) = {
            let s = self.state.lock().expect("state");
            (serde_json::to_string(&*s).expect("state serializes"), s.info(&self.job))
        };
        let done = self.counters.bytes_done.load(Ordering::Relaxed);
        let total = self.counters.bytes_total.load(Ordering::Relaxed);
        self.engine.store().set_checkpoint(self.id, &json, done, total)?;
        self.engine.set_migration(self.id, info);
        Ok(())
    }

    pub fn stopped(&self) -> Result<(), JobError> {
        if self.stop.load(Ordering::SeqCst) {
            return Err(JobError::Stopped);
        }
        Ok(())
    }

    /// The disk source settings, completed from what the checks found.
    pub fn source(&self) -> SourceContext {
        let s = self.state.lock().expect("state");
        let mut src = self.source.clone();
        src.thumbprint = s.thumbprint.clone();
        if let Some(vm) = &s.vm {
            src.vm_moref = vm.moref.clone();
            src.datacenter = vm.datacenter.clone();
        }
        src
    }

    pub fn moref(&self) -> String {
        self.state
            .lock()
            .expect("state")
            .vm
            .as_ref()
            .map(|v| v.moref.clone())
            .unwrap_or_default()
    }

    pub fn phase(&self) -> Phase {
        self.state.lock().expect("state").phase
    }

    /// Enter `phase` (recorded), run `f`, record its time and move to `next`.
    pub async fn run_phase<F>(&self, phase: Phase, next: Phase, f: F) -> Result<(), JobError>
    where
        F: AsyncFnOnce(&Ctx) -> Result<(), JobError>,
    {
        if self.phase() > phase {
            return Ok(());
        }
        self.stopped()?;
        self.engine.set_step(self.id, phase.as_str());
        self.update(|s| s.phase = phase)?;
        let t = Instant::now();
        f(self).await?;
        let secs = t.elapsed().as_secs_f64();
        tracing::info!("{} done in {secs:.1} s", phase.as_str());
        self.update(|s| {
            s.add_timing(phase.as_str(), secs);
            s.phase = next;
            if phase == Phase::Boot {
                s.up_again_unix = now_unix();
            }
        })
    }
}

static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();

pub async fn execute(engine: &Engine, id: u64) -> Result<(), JobError> {
    let span = tracing::info_span!("job", job_id = id);
    run(engine, id).instrument(span).await
}

async fn run(engine: &Engine, id: u64) -> Result<(), JobError> {
    let (request, counters, stop) = engine.job_handles(id).ok_or(JobError::Vanished)?;
    let JobRequest::Migrate(job) = request else {
        return Err(JobError::Vanished);
    };
    let controls = engine.controls(id).ok_or(JobError::Vanished)?;
    let slots = SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(engine.settings().migration.max_concurrent)))
        .clone();
    let _slot = match slots.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            tracing::info!("waiting for a free migration slot ([migration] max_concurrent)");
            tokio::select! {
                p = slots.acquire_owned() => p.map_err(|_| JobError::Vanished)?,
                _ = wait_stop(&stop) => return Err(JobError::Stopped),
            }
        }
    };
    // A release for an ended job of this VM (retrier, cleanup) finishes first.
    drop(super::release::lock().lock().await);
    let state: State = engine
        .store()
        .checkpoint(id)?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default();
    let work_dir = engine.settings().runtime_dir.join("jobs").join(id.to_string());
    for d in [work_dir.parent().expect("jobs dir"), &work_dir] {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(JobError::JobDir(d.to_path_buf(), e))
            }
            _ => {}
        }
    }
    let ctx = prepare(engine, id, *job, state, stop, controls, counters, work_dir.clone()).await?;
    // The VM stays held until the run ends (its snapshots removed below).
    let _held = Held(id);
    let mut result = journey(&ctx).await;
    if let Err(e) = &mut result {
        let shutdown = matches!(e, JobError::Stopped) && !engine.is_cancel_requested(id);
        if !shutdown {
            let left = super::release::release(&ctx).await;
            let mut said: Vec<String> = super::source_power::restore_after_failure(&ctx)
                .await
                .into_iter()
                .collect();
            if !left.is_empty() {
                said.push(format!(
                    "not yet released (retried until done; `osmctl status` shows it): {}",
                    left.join(", ")
                ));
            }
            if let JobError::Step { message, .. } = e {
                for s in said {
                    message.push_str("; ");
                    message.push_str(&s);
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&work_dir);
    result
}

/// Frees the job's VM for other jobs when the job's run ends (see `identity::claim`).
struct Held(u64);

impl Drop for Held {
    fn drop(&mut self) {
        super::identity::release(self.0);
    }
}

async fn wait_stop(stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn prepare(
    engine: &Engine,
    id: u64,
    job: MigrateJob,
    state: State,
    stop: Arc<AtomicBool>,
    controls: Arc<Controls>,
    counters: Arc<Counters>,
    work_dir: PathBuf,
) -> Result<Ctx, JobError> {
    let plan = &job.plan;
    let p = Phase::Checks;
    let settings = engine.settings();
    let password_file = match &plan.source.password {
        Secret::File(f) => PathBuf::from(f),
        Secret::Inline(pw) => {
            let f = work_dir.join("vcenter.password");
            write_private(&f, pw.as_bytes()).map_err(|e| fail(p, format!("cannot write {}: {e}", f.display())))?;
            f
        }
    };
    let vcenter = plan.source.vcenter.trim_start_matches("https://").trim_end_matches('/');
    let vcenter = vcenter.strip_suffix("/sdk").unwrap_or(vcenter).to_string();
    let url = url::Url::parse(&format!("https://{vcenter}/sdk"))
        .map_err(|e| fail(p, format!("vCenter address '{vcenter}': {e}")))?;
    let mut ca_file = plan.source.ca_file.as_ref().map(PathBuf::from);
    let trust = match (&ca_file, &plan.source.thumbprint) {
        (Some(ca), _) => Trust::CaFile(ca.clone()),
        (None, Some(t)) => Trust::Thumbprint(vsphere::tls::parse_thumbprint(t).map_err(|_| {
            fail(
                p,
                format!("source.thumbprint '{t}' is not a SHA-1 or SHA-256 fingerprint"),
            )
        })?),
        // A plan that cannot say how to trust vCenter (the seed's vars.yaml has no such
        // key): the agent's own `[vsphere]` section, when it names the same vCenter.
        (None, None) => match settings.vsphere.as_ref().filter(|ep| same_server(&ep.url, &url)) {
            Some(ep) => {
                if let Trust::CaFile(ca) = &ep.trust {
                    ca_file = Some(ca.clone());
                }
                tracing::info!("vCenter {vcenter}: trusted as the agent's [vsphere] section says");
                ep.trust.clone()
            }
            None => Trust::System,
        },
    };
    let vc = vsphere::Endpoint {
        url,
        user: plan.source.user.clone(),
        password_file: password_file.clone(),
        trust,
        timeout: Duration::from_secs(120),
    };
    let cloud = openstack_client(engine, &job).map_err(|e| fail(p, e))?;
    let transport = super::source::transport(plan, settings.migration.transport);
    if transport == crate::plan::Transport::Https && ca_file.is_none() {
        return Err(fail(
            p,
            "transport https needs source.ca_file (or the agent's [vsphere] ca_file for the same vCenter): nbdkit's curl plugin verifies vCenter with a CA, it cannot pin a thumbprint",
        ));
    }
    let mut block = blockdev::Settings::new(&settings.byid_dir, &settings.runtime_dir);
    block.device_timeout = settings.openstack.device_timeout;
    block.volume_timeout = settings.openstack.volume_timeout;
    let source = SourceContext {
        transport,
        vcenter,
        user: plan.source.user.clone(),
        password_file,
        ca_file,
        thumbprint: String::new(),
        vddk_libdir: plan.source.vddk_libdir.as_ref().map(PathBuf::from),
        datacenter: String::new(),
        vm_moref: String::new(),
        local_disk_path: plan.local_disk_path.as_ref().map(PathBuf::from),
    };
    Ok(Ctx {
        engine: engine.clone(),
        id,
        job,
        state: Arc::new(Mutex::new(state)),
        stop,
        controls,
        counters,
        work_dir,
        vc,
        os: Arc::new(cloud),
        block,
        source,
    })
}

/// Same host (case-insensitive) and port.
fn same_server(a: &url::Url, b: &url::Url) -> bool {
    a.host_str().map(str::to_ascii_lowercase) == b.host_str().map(str::to_ascii_lowercase)
        && a.port_or_known_default() == b.port_or_known_default()
}

fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

/// The plan's destination, else the agent's `[openstack]` settings.
fn openstack_client(engine: &Engine, job: &MigrateJob) -> Result<openstack::Client, String> {
    let s = &engine.settings().openstack;
    let d = &job.plan.destination;
    let cfg = if let Some(dst) = &d.dst_cloud {
        let text = serde_json::to_string(dst).map_err(|e| e.to_string())?;
        openstack::CloudConfig::from_dst_cloud(&text)
    } else {
        let file = d
            .clouds_yaml
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| s.clouds_file.clone());
        openstack::CloudConfig::from_environment(d.cloud.as_deref().or(s.cloud.as_deref()), file.as_deref())
    }
    .map_err(|e| format!("destination cloud: {e}"))?;
    openstack::Client::new(cfg, s.retry_policy()).map_err(|e| format!("destination cloud: {e}"))
}

/// The journey, walked again from the cutover when the source was found running after it.
async fn journey(ctx: &Ctx) -> Result<(), JobError> {
    super::checks::checks(ctx).await?;
    loop {
        match walk(ctx).await {
            Err(JobError::Rewound) => continue,
            r => return r,
        }
    }
}

async fn walk(ctx: &Ctx) -> Result<(), JobError> {
    let warm = ctx.job.plan.mode == Mode::Warm;
    ctx.run_phase(
        Phase::Volumes,
        if warm { Phase::FullSync } else { Phase::Cutover },
        async |c: &Ctx| super::disks::ensure_volumes(c).await,
    )
    .await?;
    ctx.run_phase(Phase::FullSync, Phase::Warm, async |c: &Ctx| {
        super::disks::sync_round(c, Phase::FullSync).await
    })
    .await?;
    ctx.run_phase(Phase::Warm, Phase::Cutover, async |c: &Ctx| warm_loop(c).await)
        .await?;
    ctx.run_phase(Phase::Cutover, Phase::Convert, async |c: &Ctx| cutover(c).await)
        .await?;
    use super::source_power::ensure_still_off;
    ensure_still_off(ctx, Phase::Convert).await?;
    ctx.run_phase(Phase::Convert, Phase::Detach, async |c: &Ctx| {
        super::convert::run(c).await
    })
    .await?;
    ensure_still_off(ctx, Phase::Detach).await?;
    ctx.run_phase(Phase::Detach, Phase::Network, async |c: &Ctx| {
        super::disks::detach_all(c).await
    })
    .await?;
    ensure_still_off(ctx, Phase::Network).await?;
    ctx.run_phase(Phase::Network, Phase::Boot, async |c: &Ctx| {
        super::boot::network_and_flavor(c).await
    })
    .await?;
    ensure_still_off(ctx, Phase::Boot).await?;
    ctx.run_phase(Phase::Boot, Phase::Done, async |c: &Ctx| super::boot::boot(c).await)
        .await?;
    let s = ctx.snapshot_state();
    let total: f64 = s.steps.iter().map(|t| t.seconds).sum();
    tracing::info!(
        "migration of '{}' done: server {} ACTIVE; steps: {}; total {total:.1} s",
        ctx.job.vm,
        s.server_id,
        s.steps
            .iter()
            .map(|t| format!("{} {:.1} s", t.step, t.seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Delta rounds until the cutover is due.
async fn warm_loop(ctx: &Ctx) -> Result<(), JobError> {
    let interval = ctx.engine.settings().migration.sync_interval;
    ctx.engine.set_step(ctx.id, "warm sync: waiting for the cutover");
    loop {
        ctx.stopped()?;
        if let Some(req) = ctx.controls.cutover.lock().expect("cutover").take() {
            ctx.update(|s| s.cutover = Some(req))?;
        }
        let (cutover, last) = {
            let s = ctx.state.lock().expect("state");
            (s.cutover.clone(), s.last_sync_unix)
        };
        let due = match (cutover.as_deref(), &ctx.job.plan.cutover) {
            (Some(""), _) => true,
            (Some(t), _) => super::state::parse_time(t).is_ok_and(|at| now_unix() >= at),
            (None, Cutover::At(t)) => super::state::parse_time(t).is_ok_and(|at| now_unix() >= at),
            (None, Cutover::Immediate) => true,
            (None, Cutover::Manual) => false,
        };
        if due {
            return Ok(());
        }
        let asked = ctx.controls.sync.swap(false, Ordering::SeqCst);
        if asked || now_unix().saturating_sub(last) >= interval.as_secs() {
            ctx.engine.set_step(ctx.id, "warm sync: delta round");
            super::disks::sync_round(ctx, Phase::Warm).await?;
            ctx.engine.set_step(ctx.id, "warm sync: waiting for the cutover");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Guest shutdown (power off after the timeout), then the final round. Whether the
/// source runs is read from vCenter: a continued job or a rewound one shuts down again.
async fn cutover(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Cutover;
    let moref = ctx.moref();
    let st = ctx.snapshot_state();
    if super::source_power::is_running(ctx, p).await? {
        // A delta round interrupted by a restart is still pending: the next round only
        // finishes it and commits its older changeId, so as the final round it would
        // miss every write made since. Finish it while the guest runs; the final round
        // then reads all that was written after it.
        if st.disks.iter().any(|d| d.round.is_some()) {
            ctx.engine
                .set_step(ctx.id, "cutover: finishing the interrupted delta round");
            super::disks::sync_round(ctx, Phase::Warm).await?;
        }
        ctx.engine.set_step(ctx.id, "cutover: shutting the guest down");
        ctx.update(|s| {
            if s.down_since_unix == 0 {
                s.down_since_unix = now_unix();
            }
        })?;
        let timeout = ctx.engine.settings().migration.shutdown_timeout;
        let t = Instant::now();
        let how = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
            c.shutdown(&vm_ref(&moref), timeout).await
        })
        .await
        .map_err(|e| fail(p, e))?;
        tracing::info!("source VM is off ({how:?}) after {:.1} s", t.elapsed().as_secs_f64());
        let secs = t.elapsed().as_secs_f64();
        ctx.update(|s| {
            s.powered_off = true;
            s.add_timing("shutdown", secs);
        })?;
    }
    ctx.engine.set_step(ctx.id, "cutover: final sync");
    super::disks::sync_round(ctx, Phase::Cutover).await
}
