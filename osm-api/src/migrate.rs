//! Migration requests and what the agent reports about a migration job.
use serde::{Deserialize, Serialize};

/// Start one migration job per VM of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The plan's text (osmctl reads the file, so the agent needs no access to it).
    pub plan: String,
    /// Where the plan came from: named in messages; `*.yaml`/`*.yml` is read as the
    /// seed's vars.yaml, anything else as osm's TOML plan.
    pub plan_path: String,
    /// Migrate only these VMs of the plan (all when empty).
    #[serde(default)]
    pub vms: Vec<String>,
    /// Migrate a VM once more although its newest migration succeeded (a second server
    /// and new volumes); without it such a VM is refused.
    #[serde(default)]
    pub again: bool,
    /// Start afresh (new volumes, a full copy) instead of continuing the VM's newest
    /// failed or cancelled migration.
    #[serde(default)]
    pub fresh: bool,
}

/// The reply to `migrate`: the jobs started and what the operator should know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateReply {
    pub jobs: Vec<crate::JobInfo>,
    /// Plan keys osm does not use, risky settings… (also in the agent's log).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// What `cleanup` removed (or would have, had it failed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CleanupReport {
    pub job: u64,
    pub vm: String,
    /// One line per object removed, e.g. `volume 1234… (osm-web-1-disk0)`.
    pub removed: Vec<String>,
    /// Objects that could not be removed, with the reason and what to do.
    pub failed: Vec<String>,
}

/// How long one step of a migration took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: String,
    pub seconds: f64,
}

/// The migration part of a job's record (absent for copy jobs).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MigrationInfo {
    pub vm: String,
    /// `warm` or `cold`.
    pub mode: String,
    /// Delta rounds done after the full copy.
    pub sync_rounds: u32,
    /// Bytes copied by the last round, and how long it took.
    pub last_round_bytes: u64,
    pub last_round_seconds: f64,
    /// Predicted downtime of a cutover now: shutdown + one delta of the measured dirty
    /// rate + snapshot handling (seconds; 0 until a delta round was measured).
    pub predicted_downtime_seconds: f64,
    /// The downtime measured once the migration is done: from the start of the guest's
    /// shutdown to the migrated server ACTIVE, agent restarts included (0 before).
    pub downtime_seconds: f64,
    /// Waiting for `osmctl cutover` (manual), or the RFC 3339 time it happens at.
    pub cutover: String,
    /// Cinder volume ids, in the VM's disk order.
    pub volumes: Vec<String>,
    /// The Nova server once created.
    pub server_id: String,
    pub steps: Vec<StepTiming>,
    /// What a failed or cancelled job has not given back yet (osm snapshots on the
    /// source, volumes attached to the conversion host): retried until done.
    pub pending_release: Vec<String>,
}
