//! Migration jobs: one per VM. The body walks the journey of ARCHITECTURE.md (checks,
//! volumes, full sync, warm deltas, cutover, conversion, detach, network, boot), saving
//! its [`state::State`] in the job's checkpoint before and after every step, so a
//! restarted agent (or `osmctl migrate` again after a failure) continues where it was.
mod api;
mod body;
mod boot;
mod checks;
mod cleanup;
mod convert;
mod disks;
mod identity;
mod preflight;
mod release;
pub mod settings;
mod source;
mod source_power;
pub mod state;

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;

use osm_api::MigrationInfo;
use serde::{Deserialize, Serialize};

use crate::plan::Plan;

pub use body::execute;
pub use release::spawn_retrier as spawn_release_retrier;

/// What a migration job was asked to do (the stored request).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrateJob {
    /// The VM's name or moref as the plan lists it.
    pub vm: String,
    /// The validated plan (the whole plan: other VMs' entries are harmless).
    pub plan: Plan,
    pub plan_path: String,
}

impl MigrateJob {
    pub fn source_label(&self) -> String {
        format!("vsphere://{}/{}", self.plan.source.vcenter, self.vm)
    }

    pub fn target_label(&self) -> String {
        let cloud = self.plan.destination.cloud.as_deref().unwrap_or("default cloud");
        format!("openstack://{cloud}")
    }
}

/// Requests from `osmctl sync` and `osmctl cutover`, polled by the running body.
#[derive(Debug, Default)]
pub struct Controls {
    pub sync: AtomicBool,
    /// `Some("")`: cut over now; `Some(time)`: at that RFC 3339 time.
    pub cutover: Mutex<Option<String>>,
}

/// The report of a job from its stored checkpoint (at start-up, before the body runs).
pub fn info_from_checkpoint(job: &MigrateJob, checkpoint: Option<&str>) -> MigrationInfo {
    let state = checkpoint
        .and_then(|j| serde_json::from_str::<state::State>(j).ok())
        .unwrap_or_default();
    state.info(job)
}
