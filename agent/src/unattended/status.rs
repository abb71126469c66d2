//! The status the conversion host publishes in its own Nova server metadata, built from
//! the engine's jobs and the plans that failed to start. Pure: no I/O, no clock.
//!
//! Keys (Nova allows `[A-Za-z0-9-_:. ]{1,255}` for keys, 255 characters for values):
//! - `osm_status`: `2 running, 1 done, 1 failed; 1 plan error; updated 2026-11-27T10:00:00Z`
//! - `osm_vm_<name>`: `<state>; <step>; <progress>%[; <error>]` for each VM's latest
//!   migration job. `<name>` is the VM name when it is only `[A-Za-z0-9_-]` and at most
//!   200 characters; otherwise every other character becomes `_`, it is cut to 191
//!   characters and `-` + 8 hex digits of the name's SHA-256 are appended (unique, ≤ 200).
//! - `osm_plan_error_<n>` (n = 1, 2, … in file order): `<file name>: <error>`.
use std::collections::BTreeMap;

use osm_api::{JobInfo, JobState};
use sha2::Digest;

/// Nova's limit for a metadata value (and key), in characters.
pub const MAX_VALUE: usize = 255;
/// Longest `<name>` part of an `osm_vm_<name>` key.
pub const MAX_VM_KEY_NAME: usize = 200;
pub const STATUS_KEY: &str = "osm_status";
pub const VM_PREFIX: &str = "osm_vm_";
pub const PLAN_ERROR_PREFIX: &str = "osm_plan_error_";

/// A plan file that was not started (refused, unreadable, invalid, or the engine said no).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanError {
    /// The file name (not the whole path), as shown to the operator.
    pub file: String,
    pub message: String,
}

/// What one VM's migration looks like now (its latest job).
#[derive(Debug, Clone, PartialEq)]
pub struct VmStatus {
    pub vm: String,
    pub job: u64,
    pub state: JobState,
    pub step: String,
    /// 0 ..= 100.
    pub percent: u32,
    pub error: String,
}

/// Everything the metadata says, before it is turned into strings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Summary {
    pub vms: Vec<VmStatus>,
    pub plan_errors: Vec<PlanError>,
}

impl Summary {
    /// The latest migration job of each VM (copy jobs are not migrations: left out).
    pub fn new(jobs: &[JobInfo], plan_errors: &[PlanError]) -> Summary {
        let mut latest: BTreeMap<&str, &JobInfo> = BTreeMap::new();
        for j in jobs {
            let Some(m) = &j.migration else { continue };
            match latest.get(m.vm.as_str()) {
                Some(prev) if prev.id > j.id => {}
                _ => {
                    latest.insert(&m.vm, j);
                }
            }
        }
        let vms = latest
            .into_iter()
            .map(|(vm, j)| VmStatus {
                vm: vm.to_string(),
                job: j.id,
                state: j.state,
                step: j.step.clone(),
                percent: (j.progress.clamp(0.0, 1.0) * 100.0).floor() as u32,
                error: j.error.clone(),
            })
            .collect();
        Summary {
            vms,
            plan_errors: plan_errors.to_vec(),
        }
    }

    /// Whether any migration is still queued or running.
    pub fn active(&self) -> bool {
        self.vms.iter().any(|v| !v.state.is_terminal())
    }

    /// Whether there is anything to publish at all.
    pub fn is_empty(&self) -> bool {
        self.vms.is_empty() && self.plan_errors.is_empty()
    }

    /// `2 running, 1 done, 1 failed; 1 plan error` (no time).
    pub fn counts(&self) -> String {
        let n = |st: JobState| self.vms.iter().filter(|v| v.state == st).count();
        let parts: Vec<String> = [
            (JobState::Queued, "queued"),
            (JobState::Running, "running"),
            (JobState::Succeeded, "done"),
            (JobState::Failed, "failed"),
            (JobState::Cancelled, "cancelled"),
        ]
        .into_iter()
        .filter(|(st, _)| n(*st) > 0)
        .map(|(st, word)| format!("{} {word}", n(st)))
        .collect();
        let mut s = if parts.is_empty() {
            "no migrations".to_string()
        } else {
            parts.join(", ")
        };
        match self.plan_errors.len() {
            0 => {}
            1 => s.push_str("; 1 plan error"),
            k => s.push_str(&format!("; {k} plan errors")),
        }
        s
    }

    /// The same as [`metadata`](Self::metadata) without progress and time: what is worth
    /// a journal line and an immediate publish when it changes.
    pub fn significant(&self) -> Vec<(String, String)> {
        let mut v = vec![(STATUS_KEY.to_string(), self.counts())];
        for s in &self.vms {
            v.push((vm_key(&s.vm), vm_value(s, false)));
        }
        for (i, e) in self.plan_errors.iter().enumerate() {
            v.push((format!("{PLAN_ERROR_PREFIX}{}", i + 1), plan_error_value(e)));
        }
        v
    }

    /// The metadata map; `now` is the RFC 3339 time shown in `osm_status`, `prefix` is put
    /// before the counts (e.g. `agent stopped; `).
    pub fn metadata(&self, now: &str, prefix: &str) -> BTreeMap<String, String> {
        let mut md = BTreeMap::new();
        md.insert(
            STATUS_KEY.to_string(),
            value(&format!("{prefix}{}; updated {now}", self.counts())),
        );
        for s in &self.vms {
            md.insert(vm_key(&s.vm), vm_value(s, true));
        }
        for (i, e) in self.plan_errors.iter().enumerate() {
            md.insert(format!("{PLAN_ERROR_PREFIX}{}", i + 1), plan_error_value(e));
        }
        md
    }
}

/// Whether a metadata key is one this module writes (and so may remove when stale).
pub fn is_ours(key: &str) -> bool {
    key == STATUS_KEY || key.starts_with(VM_PREFIX) || key.starts_with(PLAN_ERROR_PREFIX)
}

/// `osm_vm_<name>`, see the module documentation.
pub fn vm_key(name: &str) -> String {
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.is_empty() && name.len() <= MAX_VM_KEY_NAME && name.chars().all(allowed) {
        return format!("{VM_PREFIX}{name}");
    }
    let clean: String = name
        .chars()
        .map(|c| if allowed(c) { c } else { '_' })
        .take(MAX_VM_KEY_NAME - 9)
        .collect();
    let hash = sha2::Sha256::digest(name.as_bytes());
    let hex: String = hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{VM_PREFIX}{clean}-{hex}")
}

fn vm_value(s: &VmStatus, with_progress: bool) -> String {
    let mut v = format!("{}; {}", s.state, one_line(&s.step));
    if with_progress {
        v.push_str(&format!("; {}%", s.percent));
    }
    if !s.error.is_empty() {
        v.push_str("; ");
        v.push_str(&one_line(&s.error));
    }
    value(&v)
}

fn plan_error_value(e: &PlanError) -> String {
    value(&format!("{}: {}", e.file, one_line(&e.message)))
}

/// Newlines and other control characters become spaces (runs collapsed).
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.trim().chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && out.ends_with(' ') {
            continue;
        }
        out.push(c);
    }
    out
}

/// A value Nova stores: characters outside the Basic Multilingual Plane become `?`
/// (MySQL's `utf8` columns, which Nova's database often still uses, refuse them), then
/// cut to 255 characters with `…` at the end when longer.
pub fn value(s: &str) -> String {
    let bmp = s.chars().map(|c| if (c as u32) > 0xFFFF { '?' } else { c });
    truncate(bmp, MAX_VALUE)
}

fn truncate(chars: impl Iterator<Item = char> + Clone, max: usize) -> String {
    if chars.clone().count() <= max {
        return chars.collect();
    }
    let mut s: String = chars.take(max - 1).collect();
    s.push('…');
    s
}

/// Unix seconds → `2026-11-27T10:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    rfc3339(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use osm_api::MigrationInfo;

    fn job(id: u64, vm: &str, state: JobState, step: &str, progress: f64, error: &str) -> JobInfo {
        JobInfo {
            id,
            kind: "migrate".into(),
            state,
            step: step.into(),
            progress,
            bytes_done: 0,
            bytes_total: 0,
            bytes_read: 0,
            bytes_written: 0,
            rate: 0,
            error: error.into(),
            source: String::new(),
            target: String::new(),
            migration: Some(MigrationInfo {
                vm: vm.into(),
                mode: "cold".into(),
                sync_rounds: 0,
                last_round_bytes: 0,
                last_round_seconds: 0.0,
                predicted_downtime_seconds: 0.0,
                downtime_seconds: 0.0,
                cutover: String::new(),
                volumes: vec![],
                server_id: String::new(),
                steps: vec![],
                pending_release: vec![],
            }),
        }
    }

    fn copy_job(id: u64) -> JobInfo {
        JobInfo {
            kind: "copy".into(),
            migration: None,
            ..job(id, "", JobState::Running, "copying", 0.5, "")
        }
    }

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_773_600), "2026-11-27T10:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn metadata_from_jobs_and_plan_errors() {
        let jobs = vec![
            job(1, "web-1", JobState::Failed, "checks", 0.0, "old failure"),
            copy_job(2),
            job(3, "web-1", JobState::Running, "copying disk 1/2", 0.426, ""),
            job(4, "db-1", JobState::Succeeded, "done", 1.0, ""),
            job(
                5,
                "app",
                JobState::Failed,
                "checks",
                0.0,
                "VM 'app' not found\nin vCenter",
            ),
        ];
        let errs = vec![PlanError {
            file: "20-bad.toml".into(),
            message: "plan /etc/osm/plans.d/20-bad.toml: expected `=`".into(),
        }];
        let s = Summary::new(&jobs, &errs);
        assert!(s.active());
        let md = s.metadata("2026-11-27T10:00:00Z", "");
        assert_eq!(
            md["osm_status"],
            "1 running, 1 done, 1 failed; 1 plan error; updated 2026-11-27T10:00:00Z"
        );
        // The latest job of web-1 wins; the copy job is not a VM.
        assert_eq!(md["osm_vm_web-1"], "running; copying disk 1/2; 42%");
        assert_eq!(md["osm_vm_db-1"], "succeeded; done; 100%");
        assert_eq!(md["osm_vm_app"], "failed; checks; 0%; VM 'app' not found in vCenter");
        assert_eq!(
            md["osm_plan_error_1"],
            "20-bad.toml: plan /etc/osm/plans.d/20-bad.toml: expected `=`"
        );
        assert_eq!(md.len(), 5);
        // Progress and time are not significant changes; state, step and errors are.
        let mut later = jobs.clone();
        later[2].progress = 0.9;
        assert_eq!(Summary::new(&later, &errs).significant(), s.significant());
        later[2].step = "converting".into();
        assert_ne!(Summary::new(&later, &errs).significant(), s.significant());

        let idle = Summary::new(&[copy_job(1)], &[]);
        assert!(idle.is_empty() && !idle.active());
        assert_eq!(
            idle.metadata("T", "agent stopped; ")["osm_status"],
            "agent stopped; no migrations; updated T"
        );
    }

    #[test]
    fn keys_are_sanitized_unique_and_bounded() {
        assert_eq!(vm_key("web-1_A"), "osm_vm_web-1_A");
        let odd = vm_key("web [prod] ünïcode 1");
        assert!(odd.starts_with("osm_vm_web__prod___n_code_1-"), "{odd}");
        assert_eq!(odd.len(), "osm_vm_web__prod___n_code_1-".len() + 8);
        // Names that sanitize alike still get different keys.
        assert_ne!(vm_key("a b"), vm_key("a.b"));
        assert_ne!(vm_key("a b"), vm_key("a_b"));
        let long = "x".repeat(300);
        let k = vm_key(&long);
        assert_eq!(k.len(), VM_PREFIX.len() + MAX_VM_KEY_NAME);
        assert_eq!(vm_key(&"y".repeat(200)), format!("osm_vm_{}", "y".repeat(200)));
        assert_ne!(vm_key(&"y".repeat(201)), vm_key(&"y".repeat(202)));
        let cjk = vm_key(&"虚".repeat(250));
        assert!(cjk.len() <= VM_PREFIX.len() + MAX_VM_KEY_NAME, "{cjk}");
        for k in [odd, k, cjk, vm_key(""), vm_key("😀")] {
            assert!(
                k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
                "{k}"
            );
            assert!(k.len() <= MAX_VALUE);
        }
    }

    #[test]
    fn values_are_truncated_by_characters_and_kept_storable() {
        let long_err = "é".repeat(400);
        let jobs = vec![job(
            7,
            "ünï 😀",
            JobState::Failed,
            "copying",
            0.5,
            &format!("😀 {long_err}"),
        )];
        let many: Vec<PlanError> = (0..3)
            .map(|i| PlanError {
                file: format!("{i}-plan.toml"),
                message: "ß".repeat(300),
            })
            .collect();
        let md = Summary::new(&jobs, &many).metadata("2026-11-27T10:00:00Z", "");
        for (k, v) in &md {
            assert!(v.chars().count() <= MAX_VALUE, "{k}: {} chars", v.chars().count());
            assert!(v.chars().all(|c| (c as u32) <= 0xFFFF), "{k}");
        }
        let v = &md[&vm_key("ünï 😀")];
        assert!(v.starts_with("failed; copying; 50%; ? éé"), "{v}");
        assert!(v.ends_with('…'));
        assert_eq!(v.chars().count(), MAX_VALUE);
        assert!(md["osm_plan_error_3"].starts_with("2-plan.toml: ßß"));
        assert_eq!(
            md["osm_status"],
            "1 failed; 3 plan errors; updated 2026-11-27T10:00:00Z"
        );
        assert_eq!(value("short"), "short");
        assert_eq!(value(&"a".repeat(255)), "a".repeat(255));
        assert_eq!(value(&"a".repeat(256)).chars().count(), 255);
    }
}
