//! What the API layers call for migrations: start, sync, cutover, cleanup, logs.
use std::path::Path;
use std::sync::atomic::Ordering;

use osm_api::{CleanupReport, JobInfo, MigrateReply, MigrateRequest};

use super::MigrateJob;
use crate::error::Error;
use crate::jobs::engine::{Engine, JobRequest};
use crate::jobs::Caller;

impl Engine {
    /// Validate the plan and start one job per VM (all of the plan's, or those named).
    /// A VM whose earlier migration failed or was cancelled continues from that job's
    /// state (its volumes and copied data are reused); one whose newest migration
    /// succeeded is refused unless `again` (then it starts afresh).
    pub fn start_migrate(&self, caller: &Caller, req: MigrateRequest) -> Result<MigrateReply, Error> {
        self.authorize(caller)?;
        let loaded = crate::plan::parse(&req.plan, Path::new(&req.plan_path))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let plan = loaded.plan;
        for w in &loaded.warnings {
            tracing::warn!("plan {}: {w}", req.plan_path);
        }
        let vms: Vec<String> = if req.vms.is_empty() {
            plan.vms.clone()
        } else {
            if let Some(v) = req.vms.iter().find(|v| !plan.vms.contains(v)) {
                return Err(Error::InvalidArgument(format!(
                    "VM '{v}' is not in plan {} (it lists: {})",
                    req.plan_path,
                    plan.vms.join(", ")
                )));
            }
            req.vms.clone()
        };
        let existing = self.list();
        for vm in &vms {
            if let Some((j, what)) = self.migrating(&existing, &plan, vm) {
                return Err(Error::InvalidState(format!(
                    "VM '{vm}'{what} is already being migrated by job {} ({}); nothing was started. `osmctl watch {}` follows it",
                    j.id, j.step, j.id
                )));
            }
        }
        for vm in &vms {
            let newest = existing
                .iter()
                .rev()
                .find(|j| j.migration.as_ref().is_some_and(|m| &m.vm == vm));
            if let Some(j) = newest.filter(|j| j.state == osm_api::JobState::Succeeded && !req.again) {
                let server = j.migration.as_ref().map(|m| m.server_id.as_str()).unwrap_or_default();
                return Err(Error::InvalidState(format!(
                    "VM '{vm}' was already migrated by job {} (server {server}); nothing was started. \
                     To migrate it once more (a second server, new volumes), delete that server's ports \
                     first (they hold the source MACs) and run `osmctl migrate --again`",
                    j.id
                )));
            }
        }
        let mut jobs = Vec::new();
        for vm in vms {
            let job = MigrateJob {
                vm: vm.clone(),
                plan: plan.clone(),
                plan_path: req.plan_path.clone(),
            };
            let (previous, inherited) = match self.continued_job(&existing, &job, req.fresh)? {
                Some((p, state)) => (Some(p), Some(state)),
                None => (None, None),
            };
            let info = super::info_from_checkpoint(&job, inherited.as_deref());
            let added = self.add_with_checkpoint(JobRequest::Migrate(Box::new(job)), Some(info), inherited)?;
            match previous {
                Some(p) => tracing::info!(
                    job_id = added.id,
                    "job {}: migration of '{vm}' queued, continuing job {p}",
                    added.id
                ),
                None => tracing::info!(job_id = added.id, "job {}: migration of '{vm}' queued", added.id),
            }
            jobs.push(added);
        }
        Ok(MigrateReply {
            jobs,
            warnings: loaded.warnings,
        })
    }

    /// The unfinished job that migrates `vm` of the plan's vCenter: named so in its plan,
    /// or the VM it resolved has this moref, name, inventory path or instanceUuid (then
    /// said). A job not yet resolved is compared once it is: the checks let one job at a
    /// time hold a VM (see `identity::claim`).
    fn migrating<'a>(
        &self,
        existing: &'a [JobInfo],
        plan: &crate::plan::Plan,
        vm: &str,
    ) -> Option<(&'a JobInfo, String)> {
        let host = |v: &str| {
            v.trim_start_matches("https://")
                .trim_end_matches('/')
                .to_ascii_lowercase()
        };
        existing
            .iter()
            .filter(|j| !j.state.is_terminal() && j.migration.is_some())
            .find_map(|j| {
                let (job, _) = self.migration_job(j.id).ok()?;
                if host(&job.plan.source.vcenter) != host(&plan.source.vcenter) {
                    return None;
                }
                if job.vm == vm {
                    return Some((j, String::new()));
                }
                let state: super::state::State = serde_json::from_str(&self.store().checkpoint(j.id).ok()??).ok()?;
                let v = state.vm?;
                [&v.moref, &v.name, &v.inventory_path, &v.instance_uuid]
                    .iter()
                    .any(|x| !x.is_empty() && x.as_str() == vm)
                    .then(|| (j, format!(" ({}, {})", v.inventory_path, v.moref)))
            })
    }

    /// The job a new migration of `job.vm` continues, and the state it inherits: the
    /// VM's newest job if it failed or was cancelled (after a success, a cleanup or with
    /// `fresh` a migration starts afresh). A plan that differs from that job's in what
    /// the copied data or the cutover depend on is refused, listing the differences.
    fn continued_job(
        &self,
        existing: &[JobInfo],
        job: &MigrateJob,
        fresh: bool,
    ) -> Result<Option<(u64, String)>, Error> {
        let Some(p) = existing
            .iter()
            .rev()
            .find(|j| j.migration.as_ref().is_some_and(|m| m.vm == job.vm))
            .filter(|j| j.state != osm_api::JobState::Succeeded)
            .map(|j| j.id)
        else {
            return Ok(None);
        };
        let Some(state) = self
            .store()
            .checkpoint(p)?
            .and_then(|cp| super::state::resume_from(&cp))
        else {
            return Ok(None);
        };
        if fresh {
            tracing::info!(
                "migration of '{}': starting afresh (--fresh), not continuing job {p}",
                job.vm
            );
            return Ok(None);
        }
        let (old, _) = self.migration_job(p)?;
        let differs = plan_differences(&old.plan, &job.plan);
        if !differs.is_empty() {
            return Err(Error::InvalidState(format!(
                "VM '{}' continues job {p}, whose plan differs in {}; nothing was started. \
                 Run the migration with job {p}'s plan ({}), or `osmctl migrate --fresh` to start \
                 afresh (new volumes, a full copy; `osmctl cleanup {p}` removes the old ones)",
                job.vm,
                differs.join(", "),
                old.plan_path
            )));
        }
        Ok(Some((p, state)))
    }

    /// One more delta round now (warm migrations that wait for their cutover).
    pub fn sync_now(&self, caller: &Caller, id: u64) -> Result<JobInfo, Error> {
        self.authorize(caller)?;
        let (job, state) = self.migration_job(id)?;
        if state.is_terminal() {
            return Err(Error::InvalidState(format!("job {id} already {state}")));
        }
        if job.plan.mode == crate::plan::Mode::Cold {
            return Err(Error::InvalidState(format!(
                "job {id} is a cold migration: it has no delta rounds"
            )));
        }
        let c = self.controls(id).ok_or(Error::NoSuchJob(id))?;
        c.sync.store(true, Ordering::SeqCst);
        tracing::info!(job_id = id, "delta round requested");
        self.get(id)
    }

    /// Cut over now, or at `at` (RFC 3339).
    pub fn request_cutover(&self, caller: &Caller, id: u64, at: Option<String>) -> Result<JobInfo, Error> {
        self.authorize(caller)?;
        let (_, state) = self.migration_job(id)?;
        if state.is_terminal() {
            return Err(Error::InvalidState(format!("job {id} already {state}")));
        }
        if let Some(t) = &at {
            super::state::parse_time(t).map_err(Error::InvalidArgument)?;
        }
        let c = self.controls(id).ok_or(Error::NoSuchJob(id))?;
        *c.cutover.lock().expect("cutover") = Some(at.clone().unwrap_or_default());
        tracing::info!(
            job_id = id,
            "cutover requested{}",
            at.map(|t| format!(" at {t}")).unwrap_or_default()
        );
        self.get(id)
    }

    /// Remove what osm created for a failed or cancelled migration.
    pub async fn cleanup(&self, caller: &Caller, id: u64) -> Result<CleanupReport, Error> {
        self.authorize(caller)?;
        let (job, state) = self.migration_job(id)?;
        if !state.is_terminal() {
            return Err(Error::InvalidState(format!(
                "job {id} is still {state}: `osmctl cancel {id}` first"
            )));
        }
        if state == osm_api::JobState::Succeeded {
            return Err(Error::InvalidState(format!(
                "job {id} succeeded: its volumes, ports and flavor belong to the migrated server now"
            )));
        }
        let _held = super::release::lock().lock().await;
        let report = super::cleanup::run(self, id, &job).await?;
        if report.failed.is_empty() {
            super::release::clear_after_cleanup(self, id);
        }
        self.mark_cleaned_up(id)?;
        Ok(report)
    }

    /// After a cleanup nothing of the job is continued: the VM's next migration starts
    /// afresh (its volumes may be gone).
    fn mark_cleaned_up(&self, id: u64) -> Result<(), Error> {
        let Some(cp) = self.store().checkpoint(id)? else {
            return Ok(());
        };
        let Ok(mut s) = serde_json::from_str::<super::state::State>(&cp) else {
            return Ok(());
        };
        s.cleaned_up = true;
        let json = serde_json::to_string(&s).expect("state serializes");
        let j = self.get(id)?;
        self.store().set_checkpoint(id, &json, j.bytes_done, j.bytes_total)?;
        Ok(())
    }

    /// The last `lines` lines of the job's log.
    pub fn logs(&self, caller: &Caller, id: u64, lines: Option<u32>) -> Result<String, Error> {
        self.authorize(caller)?;
        self.get(id)?;
        let path = crate::daemon::job_log::path(&self.settings().log_dir, id);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::InvalidState(format!("cannot read {}: {e}", path.display()))),
        };
        let n = lines.unwrap_or(200) as usize;
        let all: Vec<&str> = text.lines().collect();
        Ok(all[all.len().saturating_sub(n)..].join("\n"))
    }
}

/// What a continued migration may not change: the mode, the cutover, the network and the
/// flavor (each named with both values).
fn plan_differences(old: &crate::plan::Plan, new: &crate::plan::Plan) -> Vec<String> {
    let mut d = Vec::new();
    if old.mode != new.mode {
        d.push(format!("mode ({:?} → {:?})", old.mode, new.mode));
    }
    if old.cutover != new.cutover {
        d.push(format!("cutover ({:?} → {:?})", old.cutover, new.cutover));
    }
    if old.network != new.network {
        d.push("network".to_string());
    }
    if old.flavor != new.flavor {
        d.push(format!("flavor ({:?} → {:?})", old.flavor, new.flavor));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::plan_differences;
    use crate::plan::{Cutover, Mode};

    #[test]
    fn a_continued_plan_may_not_change_mode_cutover_network_or_flavor() {
        let text = "vms = [\"web\"]\n[source]\nvcenter = \"vc\"\nuser = \"u\"\npassword = { file = \"/p\" }\n";
        let old = crate::plan::parse(text, std::path::Path::new("p.toml")).unwrap().plan;
        assert!(plan_differences(&old, &old).is_empty());
        let mut new = old.clone();
        new.mode = Mode::Cold;
        new.cutover = Cutover::Manual;
        new.network.fixed_ips = !old.network.fixed_ips;
        new.flavor = crate::plan::FlavorChoice::Create;
        new.skip_conversion = !old.skip_conversion; // may change
        let d = plan_differences(&old, &new);
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(
            d[0].starts_with("mode") && d[1].starts_with("cutover") && d[2] == "network" && d[3].starts_with("flavor")
        );
    }
}
