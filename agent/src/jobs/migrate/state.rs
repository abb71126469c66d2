//! The persisted state of one VM's migration (the job's checkpoint, JSON). Each step
//! records itself here before and after it runs; every field a resumed run needs is here.
use std::time::{SystemTime, UNIX_EPOCH};

use osm_api::vsphere::VmInfo;
use osm_api::{Extent, MigrationInfo, StepTiming};
use serde::{Deserialize, Serialize};

use super::MigrateJob;
use crate::nbd::copy::Checkpoint;

/// Where the journey is. Ordered: a resumed job skips every phase before its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Checks,
    Volumes,
    FullSync,
    Warm,
    Cutover,
    Convert,
    Detach,
    Network,
    Boot,
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Checks => "checks",
            Phase::Volumes => "volumes",
            Phase::FullSync => "full sync",
            Phase::Warm => "warm sync",
            Phase::Cutover => "cutover",
            Phase::Convert => "conversion",
            Phase::Detach => "detach",
            Phase::Network => "network",
            Phase::Boot => "boot",
            Phase::Done => "done",
        }
    }
}

/// A copy round in progress on one disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Round {
    /// The changeId of the snapshot this round started from: committed when the round
    /// ends (a resumed round keeps the oldest one, so the next delta covers every later
    /// write whatever snapshot the rest was read from).
    pub change_id: Option<String>,
    /// None: the whole disk.
    pub extents: Option<Vec<Extent>>,
    /// What is durable on the volume (the copy engine's checkpoint).
    pub checkpoint: Option<Checkpoint>,
    /// The disk file as this round's snapshot froze it (what VDDK reads).
    #[serde(default)]
    pub datastore_path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DiskState {
    pub key: i32,
    pub datastore_path: String,
    pub datastore: String,
    pub capacity_bytes: u64,
    pub volume_id: String,
    /// The device while attached to this host.
    pub device: Option<String>,
    /// The volume holds the disk as it was at the snapshot with this changeId.
    pub synced_change_id: Option<String>,
    /// The volume holds a complete copy (full sync done).
    pub synced: bool,
    /// Created by osm and never written: zero runs need not be written.
    pub fresh: bool,
    pub round: Option<Round>,
}

/// Something a failed or cancelled job must give back, recorded before the first try
/// and kept until it is done (the daemon retries it, `osmctl cleanup` too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Release {
    /// The osm snapshots on the source VM.
    Snapshots { moref: String },
    /// The volume's attachment to this conversion host.
    Detach { volume_id: String },
}

impl Release {
    pub fn describe(&self) -> String {
        match self {
            Release::Snapshots { moref } => format!("osm snapshots of {moref}"),
            Release::Detach { volume_id } => format!("volume {volume_id} attached to this host"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    /// Index (in disk order) of the disk holding the guest's root, from inspection.
    pub root_disk: usize,
    /// Index of the disk holding the boot loader (boot index 0), read from the volumes;
    /// None in a state recorded before osm looked (the root disk boots).
    #[serde(default)]
    pub boot_disk: Option<usize>,
    /// `bios` or `uefi`.
    pub firmware: String,
    /// e.g. `linux`, `windows`.
    pub os_type: String,
    pub os_distro: String,
    pub skipped: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub phase: Phase,
    /// The job that created the volumes (their idempotency keys carry it).
    pub origin_job: u64,
    /// The VM, resolved once (by name at the first checks); found again by its
    /// instanceUuid at every later start.
    pub vm: Option<VmInfo>,
    /// The vCenter's instance UUID (see `identity`).
    pub vcenter_id: String,
    /// This conversion host's Nova server id.
    pub host_server_id: String,
    /// SHA-1 thumbprint vCenter presented at the checks (for VDDK).
    pub thumbprint: String,
    pub disks: Vec<DiskState>,
    pub rounds: u32,
    pub last_round_bytes: u64,
    pub last_round_seconds: f64,
    /// Seconds the last guest shutdown took (or a default guess before the first).
    pub predicted_downtime_seconds: f64,
    /// Set by `osmctl cutover` (persisted so a restart keeps the request): "" now, or a time.
    pub cutover: Option<String>,
    /// osm shut the source down (so it powers it on again after a failure before any
    /// server exists). Never trusted as the source's power state: that is read from
    /// vCenter before every step that depends on it.
    pub powered_off: bool,
    /// osm powered the source on again after a failure (said in the job's error).
    pub powered_on_again: bool,
    /// virt-v2v was started on the volumes and did not finish: they are dirty.
    pub converting: bool,
    /// The source was found running again after the cutover this many times.
    pub rewinds: u32,
    /// `osmctl cleanup` removed what this job made: a later migration starts afresh.
    pub cleaned_up: bool,
    pub conversion: Option<Conversion>,
    pub port_ids: Vec<String>,
    pub flavor_id: String,
    pub flavor_created: bool,
    pub server_id: String,
    pub steps: Vec<StepTiming>,
    /// Unix time of the last full or delta round's end.
    pub last_sync_unix: u64,
    /// The downtime's ends: the guest's shutdown began; the migrated server was ACTIVE.
    pub down_since_unix: u64,
    pub up_again_unix: u64,
    /// What this (failed or cancelled) job has not given back yet.
    pub pending_release: Vec<Release>,
}

impl State {
    pub fn info(&self, job: &MigrateJob) -> MigrationInfo {
        MigrationInfo {
            vm: job.vm.clone(),
            mode: match job.plan.mode {
                crate::plan::Mode::Warm => "warm",
                crate::plan::Mode::Cold => "cold",
            }
            .into(),
            sync_rounds: self.rounds,
            last_round_bytes: self.last_round_bytes,
            last_round_seconds: self.last_round_seconds,
            predicted_downtime_seconds: self.predicted_downtime_seconds,
            downtime_seconds: match (self.down_since_unix, self.up_again_unix) {
                (0, _) | (_, 0) => 0.0,
                (down, up) => up.saturating_sub(down) as f64,
            },
            cutover: match (&self.cutover, &job.plan.cutover) {
                _ if job.plan.mode == crate::plan::Mode::Cold => "cold: at the start".into(),
                (Some(t), _) if t.is_empty() => "now".into(),
                (Some(t), _) => t.clone(),
                (None, crate::plan::Cutover::Immediate) => "after the full sync".into(),
                (None, crate::plan::Cutover::Manual) => "waiting for `osmctl cutover`".into(),
                (None, crate::plan::Cutover::At(t)) => t.clone(),
            },
            volumes: self.disks.iter().map(|d| d.volume_id.clone()).collect(),
            server_id: self.server_id.clone(),
            steps: self.steps.clone(),
            pending_release: self.pending_release.iter().map(Release::describe).collect(),
        }
    }

    pub fn add_timing(&mut self, step: &str, seconds: f64) {
        self.steps.push(StepTiming {
            step: step.to_string(),
            seconds: (seconds * 1000.0).round() / 1000.0,
        });
    }
}

/// An earlier job's state, made ready for a new job that continues it: device paths are
/// stale (volumes are re-attached), the old job's cutover request is not the new one's,
/// a finished server is not touched again. None when there is nothing to continue (a
/// cleaned-up job).
pub fn resume_from(checkpoint: &str) -> Option<String> {
    let mut s = serde_json::from_str::<State>(checkpoint).ok()?;
    if s.cleaned_up {
        return None;
    }
    for d in &mut s.disks {
        d.device = None;
    }
    s.cutover = None;
    s.rewinds = 0;
    // The new job's checks remove osm snapshots and it owns the attachments now.
    s.pending_release.clear();
    // Checks run again (the VM may have changed); copied data stays valid. From the
    // conversion on, the source's power is checked again before each step.
    if s.phase < Phase::Convert {
        s.phase = Phase::Checks;
    }
    Some(serde_json::to_string(&s).expect("state serializes"))
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 3339 (`2026-12-01T22:00:00Z`, `…+02:00`) → Unix seconds.
pub fn parse_time(t: &str) -> Result<u64, String> {
    let bad = || format!("'{t}' is not an RFC 3339 time such as 2026-12-01T22:00:00Z");
    let b = t.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| t.get(r).and_then(|s| s.parse::<i64>().ok()).ok_or_else(bad);
    let (y, mo, d, h, mi, s) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    let mut rest = &t[19..];
    if let Some(r) = rest.strip_prefix('.') {
        rest = r.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset = match rest {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) && &o[3..4] == ":" => {
            let hh: i64 = o[1..3].parse().map_err(|_| bad())?;
            let mm: i64 = o[4..6].parse().map_err(|_| bad())?;
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (hh * 3600 + mm * 60)
        }
        _ => return Err(bad()),
    };
    // Days from civil (Howard Hinnant's algorithm).
    let (yy, m) = if mo <= 2 { (y - 1, mo + 9) } else { (y, mo - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let secs = days * 86400 + h * 3600 + mi * 60 + s - offset;
    u64::try_from(secs).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_time("2026-12-01T22:00:00Z"), Ok(1_796_162_400));
        assert_eq!(parse_time("2026-12-02T00:00:00+02:00"), Ok(1_796_162_400));
        assert_eq!(parse_time("2026-12-01T22:00:00.250Z"), Ok(1_796_162_400));
        assert!(parse_time("tonight").is_err());
        assert!(parse_time("2026-13-01T22:00:00Z").is_err());
    }

    #[test]
    fn a_conversion_recorded_before_the_boot_disk_existed_has_none() {
        let c: Conversion = serde_json::from_str(
            r#"{"root_disk":1,"firmware":"bios","os_type":"linux","os_distro":"","skipped":false}"#,
        )
        .unwrap();
        assert_eq!((c.root_disk, c.boot_disk), (1, None));
    }

    #[test]
    fn pending_releases_survive_a_save_and_older_states_have_none() {
        let old: State = serde_json::from_str(r#"{"phase":"warm","rounds":2}"#).unwrap();
        assert!(old.pending_release.is_empty());
        let s = State {
            pending_release: vec![
                Release::Snapshots { moref: "vm-7".into() },
                Release::Detach { volume_id: "v1".into() },
            ],
            ..Default::default()
        };
        let back: State = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.pending_release, s.pending_release);
        let r: State = serde_json::from_str(&resume_from(&serde_json::to_string(&s).unwrap()).unwrap()).unwrap();
        assert!(
            r.pending_release.is_empty(),
            "a continuation owns the VM's snapshots and volumes"
        );
    }

    #[test]
    fn resumed_state_forgets_devices_and_redoes_checks() {
        let s = State {
            phase: Phase::Warm,
            disks: vec![DiskState {
                device: Some("/dev/vdb".into()),
                synced: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let r: State = serde_json::from_str(&resume_from(&serde_json::to_string(&s).unwrap()).unwrap()).unwrap();
        assert_eq!(r.phase, Phase::Checks);
        assert_eq!(r.disks[0].device, None);
        assert!(r.disks[0].synced);
    }

    #[test]
    fn a_cleaned_up_job_is_not_continued_and_its_cutover_request_is_not_inherited() {
        let s = State {
            cutover: Some(String::new()),
            ..Default::default()
        };
        let r: State = serde_json::from_str(&resume_from(&serde_json::to_string(&s).unwrap()).unwrap()).unwrap();
        assert_eq!(r.cutover, None);
        let cleaned = State {
            cleaned_up: true,
            ..Default::default()
        };
        assert_eq!(resume_from(&serde_json::to_string(&cleaned).unwrap()), None);
    }
}
