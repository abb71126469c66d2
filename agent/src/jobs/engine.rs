//! The engine owns every job: it persists each change before announcing it, runs job
//! bodies on blocking threads, and publishes events that both API layers turn into
//! replies, D-Bus signals and property changes.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use osm_api::{CopyRequest, JobInfo, JobState, MigrationInfo};
use tokio::sync::broadcast;
use tokio_util::task::TaskTracker;

use super::copy_job::{self, JobError};
use super::store::Store;
use super::Caller;
use crate::config::Settings;
use crate::error::Error;
use crate::nbd::copy::Counters;

#[derive(Debug, Clone)]
pub enum Event {
    Added(JobInfo),
    Changed(JobInfo),
    Completed(JobInfo),
}

#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    store: Store,
    admin_gid: Option<u32>,
    nbdkit: Option<PathBuf>,
    jobs: Mutex<BTreeMap<u64, Entry>>,
    events: broadcast::Sender<Event>,
    tracker: TaskTracker,
    shutting_down: AtomicBool,
}

/// What a job was asked to do, as stored (kind `copy` or `migrate`).
#[derive(Debug, Clone)]
pub enum JobRequest {
    Copy(CopyRequest),
    Migrate(Box<super::migrate::MigrateJob>),
}

impl JobRequest {
    fn kind(&self) -> &'static str {
        match self {
            JobRequest::Copy(_) => "copy",
            JobRequest::Migrate(_) => "migrate",
        }
    }

    fn to_json(&self) -> String {
        match self {
            JobRequest::Copy(r) => serde_json::to_string(r),
            JobRequest::Migrate(m) => serde_json::to_string(m),
        }
        .expect("request serializes")
    }

    fn from_row(kind: &str, json: &str) -> Result<JobRequest, String> {
        match kind {
            "copy" => serde_json::from_str(json).map(JobRequest::Copy),
            "migrate" => serde_json::from_str(json).map(|m| JobRequest::Migrate(Box::new(m))),
            other => return Err(format!("unknown job kind '{other}'")),
        }
        .map_err(|e| e.to_string())
    }
}

struct Entry {
    kind: String,
    request: JobRequest,
    /// Migration jobs: what `status` shows beyond bytes (kept current by the job body).
    migration: Option<MigrationInfo>,
    /// Migration jobs: `osmctl sync` / `osmctl cutover` asked for (the body polls).
    controls: Arc<super::migrate::Controls>,
    state: JobState,
    step: String,
    error: String,
    counters: Arc<Counters>,
    /// Set by a user's cancel or by shutdown; the job body polls it.
    stop: Arc<AtomicBool>,
    cancel_requested: bool,
    rate: u64,
    sample: (Instant, u64),
}

impl Entry {
    fn info(&self, id: u64) -> JobInfo {
        let c = &self.counters;
        let done = c.bytes_done.load(Ordering::Relaxed);
        let total = c.bytes_total.load(Ordering::Relaxed);
        let progress = match (self.state, total) {
            (JobState::Succeeded, _) => 1.0,
            (_, 0) => 0.0,
            _ => done as f64 / total as f64,
        };
        let (source, target) = match &self.request {
            JobRequest::Copy(r) => (r.source.clone(), r.target.clone()),
            JobRequest::Migrate(m) => (m.source_label(), m.target_label()),
        };
        JobInfo {
            id,
            kind: self.kind.clone(),
            state: self.state,
            step: self.step.clone(),
            progress,
            bytes_done: done,
            bytes_total: total,
            bytes_read: c.bytes_read.load(Ordering::Relaxed),
            bytes_written: c.bytes_written.load(Ordering::Relaxed),
            rate: if self.state == JobState::Running { self.rate } else { 0 },
            error: self.error.clone(),
            source,
            target,
            migration: self.migration.clone(),
        }
    }
}

impl Engine {
    pub fn new(settings: Settings, store: Store) -> Engine {
        let admin_gid = nix::unistd::Group::from_name(&settings.admin_group)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw());
        let nbdkit = crate::exec::resolve(&settings.nbdkit);
        if nbdkit.is_none() {
            tracing::warn!(
                "nbdkit ('{}') not found: copies from file: sources will fail until it is installed",
                settings.nbdkit
            );
        }
        let (events, _) = broadcast::channel(1024);
        Engine {
            inner: Arc::new(Inner {
                settings,
                store,
                admin_gid,
                nbdkit,
                jobs: Mutex::new(BTreeMap::new()),
                events,
                tracker: TaskTracker::new(),
                shutting_down: AtomicBool::new(false),
            }),
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    pub fn nbdkit(&self) -> Option<&PathBuf> {
        self.inner.nbdkit.as_ref()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Load every job from the store; resume those that were queued or running.
    pub fn recover(&self) -> Result<usize, Error> {
        let mut resumed = 0;
        for row in self.inner.store.all()? {
            let request = match JobRequest::from_row(&row.kind, &row.request) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(
                        job_id = row.id,
                        "job {} has an unreadable request and is skipped: {e}",
                        row.id
                    );
                    continue;
                }
            };
            let counters = Arc::new(Counters::default());
            counters.bytes_done.store(row.bytes_done, Ordering::Relaxed);
            counters.bytes_total.store(row.bytes_total, Ordering::Relaxed);
            let migration = match &request {
                JobRequest::Migrate(m) => Some(super::migrate::info_from_checkpoint(m, row.checkpoint.as_deref())),
                JobRequest::Copy(_) => None,
            };
            let entry = Entry {
                kind: row.kind,
                request,
                migration,
                controls: Default::default(),
                state: row.state,
                step: row.step,
                error: row.error,
                counters,
                stop: Arc::new(AtomicBool::new(false)),
                cancel_requested: false,
                rate: 0,
                sample: (Instant::now(), row.bytes_done),
            };
            self.inner.jobs.lock().expect("jobs").insert(row.id, entry);
            if !row.state.is_terminal() {
                tracing::info!(job_id = row.id, "resuming job {} from its last checkpoint", row.id);
                self.spawn(row.id);
                resumed += 1;
            }
        }
        Ok(resumed)
    }

    pub fn start_copy(&self, caller: &Caller, request: CopyRequest) -> Result<JobInfo, Error> {
        self.authorize(caller)?;
        copy_job::validate(&request)?;
        let info = self.add(JobRequest::Copy(request), None)?;
        tracing::info!(
            job_id = info.id,
            "job {} queued: copy {} → {}",
            info.id,
            info.source,
            info.target
        );
        Ok(info)
    }

    /// Persist a new job, announce it and start it.
    pub(crate) fn add(&self, request: JobRequest, migration: Option<MigrationInfo>) -> Result<JobInfo, Error> {
        self.add_with_checkpoint(request, migration, None)
    }

    /// As [`Engine::add`], the job starting from `checkpoint` (a migration continuing an
    /// earlier job's state).
    pub(crate) fn add_with_checkpoint(
        &self,
        request: JobRequest,
        migration: Option<MigrationInfo>,
        checkpoint: Option<String>,
    ) -> Result<JobInfo, Error> {
        if self.inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let id = self.inner.store.insert(request.kind(), &request.to_json())?;
        if let Some(cp) = &checkpoint {
            self.inner.store.set_checkpoint(id, cp, 0, 0)?;
        }
        let entry = Entry {
            kind: request.kind().into(),
            request,
            migration,
            controls: Default::default(),
            state: JobState::Queued,
            step: "queued".into(),
            error: String::new(),
            counters: Arc::new(Counters::default()),
            stop: Arc::new(AtomicBool::new(false)),
            cancel_requested: false,
            rate: 0,
            sample: (Instant::now(), 0),
        };
        let info = entry.info(id);
        self.inner.jobs.lock().expect("jobs").insert(id, entry);
        let _ = self.inner.events.send(Event::Added(info.clone()));
        self.spawn(id);
        Ok(info)
    }

    pub fn list(&self) -> Vec<JobInfo> {
        self.inner
            .jobs
            .lock()
            .expect("jobs")
            .iter()
            .map(|(id, e)| e.info(*id))
            .collect()
    }

    pub fn get(&self, id: u64) -> Result<JobInfo, Error> {
        self.inner
            .jobs
            .lock()
            .expect("jobs")
            .get(&id)
            .map(|e| e.info(id))
            .ok_or(Error::NoSuchJob(id))
    }

    pub fn cancel(&self, caller: &Caller, id: u64) -> Result<JobInfo, Error> {
        self.authorize(caller)?;
        let mut jobs = self.inner.jobs.lock().expect("jobs");
        let e = jobs.get_mut(&id).ok_or(Error::NoSuchJob(id))?;
        if e.state.is_terminal() {
            return Err(Error::InvalidState(format!(
                "job {id} already {}; nothing to cancel",
                e.state
            )));
        }
        e.cancel_requested = true;
        e.stop.store(true, Ordering::SeqCst);
        tracing::info!(job_id = id, "cancel requested for job {id}");
        Ok(e.info(id))
    }

    /// Root or the admin group, as for starting and cancelling jobs.
    pub fn authorize(&self, caller: &Caller) -> Result<(), Error> {
        caller.authorize_mutation(&self.inner.settings.admin_group, self.inner.admin_gid)
    }

    fn spawn(&self, id: u64) {
        let engine = self.clone();
        let is_copy = matches!(
            self.inner.jobs.lock().expect("jobs").get(&id).map(|e| &e.request),
            Some(JobRequest::Copy(_))
        );
        self.inner.tracker.spawn(async move {
            let body = engine.clone();
            let result = if is_copy {
                tokio::task::spawn_blocking(move || copy_job::execute(&body, id))
                    .await
                    .unwrap_or_else(|e| Err(JobError::Panicked(e.to_string())))
            } else {
                tokio::spawn(async move { super::migrate::execute(&body, id).await })
                    .await
                    .unwrap_or_else(|e| Err(JobError::Panicked(e.to_string())))
            };
            engine.finish(id, result);
        });
    }

    /// Record a step of a running job (persisted, then announced).
    pub(crate) fn set_step(&self, id: u64, step: &str) {
        let info = {
            let mut jobs = self.inner.jobs.lock().expect("jobs");
            let Some(e) = jobs.get_mut(&id) else { return };
            e.state = JobState::Running;
            e.step = step.to_string();
            if let Err(err) = self.inner.store.set_state(id, JobState::Running, step, "") {
                tracing::error!(job_id = id, "{err}");
            }
            e.info(id)
        };
        let _ = self.inner.events.send(Event::Changed(info));
    }

    pub(crate) fn job_handles(&self, id: u64) -> Option<(JobRequest, Arc<Counters>, Arc<AtomicBool>)> {
        let jobs = self.inner.jobs.lock().expect("jobs");
        jobs.get(&id)
            .map(|e| (e.request.clone(), e.counters.clone(), e.stop.clone()))
    }

    pub(crate) fn is_cancel_requested(&self, id: u64) -> bool {
        self.inner
            .jobs
            .lock()
            .expect("jobs")
            .get(&id)
            .is_some_and(|e| e.cancel_requested)
    }

    pub(crate) fn controls(&self, id: u64) -> Option<Arc<super::migrate::Controls>> {
        self.inner
            .jobs
            .lock()
            .expect("jobs")
            .get(&id)
            .map(|e| e.controls.clone())
    }

    /// Replace a migration job's report (kept in memory; the body persists its state).
    pub(crate) fn set_migration(&self, id: u64, m: MigrationInfo) {
        let info = {
            let mut jobs = self.inner.jobs.lock().expect("jobs");
            let Some(e) = jobs.get_mut(&id) else { return };
            e.migration = Some(m);
            e.info(id)
        };
        let _ = self.inner.events.send(Event::Changed(info));
    }

    /// The entry of a migration job, or why it is not one.
    pub(crate) fn migration_job(&self, id: u64) -> Result<(super::migrate::MigrateJob, JobState), Error> {
        let jobs = self.inner.jobs.lock().expect("jobs");
        let e = jobs.get(&id).ok_or(Error::NoSuchJob(id))?;
        match &e.request {
            JobRequest::Migrate(m) => Ok(((**m).clone(), e.state)),
            JobRequest::Copy(_) => Err(Error::InvalidArgument(format!("job {id} is a copy, not a migration"))),
        }
    }

    fn finish(&self, id: u64, result: Result<(), JobError>) {
        let info = {
            let mut jobs = self.inner.jobs.lock().expect("jobs");
            let Some(e) = jobs.get_mut(&id) else { return };
            let (state, error) = match result {
                Ok(()) => (JobState::Succeeded, String::new()),
                Err(JobError::Stopped) if !e.cancel_requested => {
                    // Shutdown: stay queued/running in the store; the next start resumes.
                    tracing::info!(job_id = id, "job {id} paused for shutdown at its last checkpoint");
                    return;
                }
                Err(JobError::Stopped) => (JobState::Cancelled, String::new()),
                Err(err) => (JobState::Failed, err.to_string()),
            };
            e.state = state;
            e.error = error.clone();
            e.step = state.as_str().to_string();
            if let Err(err) = self.inner.store.set_state(id, state, state.as_str(), &error) {
                tracing::error!(job_id = id, "{err}");
            }
            match state {
                JobState::Failed => tracing::error!(job_id = id, "job {id} failed: {error}"),
                _ => tracing::info!(job_id = id, "job {id} {state}"),
            }
            e.info(id)
        };
        let _ = self.inner.events.send(Event::Changed(info.clone()));
        let _ = self.inner.events.send(Event::Completed(info));
    }

    /// One turn of the engine loop: refresh rates and announce running jobs' progress.
    /// The daemon sends WATCHDOG=1 after each turn, so a wedged engine stops pinging.
    pub fn tick(&self) {
        let infos: Vec<JobInfo> = {
            let mut jobs = self.inner.jobs.lock().expect("jobs");
            jobs.iter_mut()
                .filter(|(_, e)| e.state == JobState::Running)
                .map(|(id, e)| {
                    let done = e.counters.bytes_done.load(Ordering::Relaxed);
                    let dt = e.sample.0.elapsed().as_secs_f64();
                    if dt >= 0.5 {
                        let now = done.saturating_sub(e.sample.1) as f64 / dt;
                        e.rate = if e.rate == 0 {
                            now as u64
                        } else {
                            (0.5 * e.rate as f64 + 0.5 * now) as u64
                        };
                        e.sample = (Instant::now(), done);
                    }
                    e.info(*id)
                })
                .collect()
        };
        for i in infos {
            let _ = self.inner.events.send(Event::Changed(i));
        }
    }

    /// A short summary for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let jobs = self.inner.jobs.lock().expect("jobs");
        let running: Vec<String> = jobs
            .iter()
            .filter(|(_, e)| e.state == JobState::Running)
            .map(|(id, e)| format!("job {id} {} {:.0}%", e.step, 100.0 * e.info(*id).progress))
            .collect();
        let queued = jobs.values().filter(|e| e.state == JobState::Queued).count();
        if running.is_empty() && queued == 0 {
            return "idle".into();
        }
        format!("{} running, {queued} queued: {}", running.len(), running.join(", "))
    }

    /// Stop every job at its next checkpoint (they resume on the next start) and wait.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        for e in self.inner.jobs.lock().expect("jobs").values() {
            e.stop.store(true, Ordering::SeqCst);
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}
