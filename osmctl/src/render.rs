//! Human output: job tables, sizes, and the live progress line of `watch`.
use osm_api::vsphere::{CheckReport, CheckStatus, VmInfo};
use osm_api::{CleanupReport, JobInfo, MigrationInfo};

pub fn size(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// Seconds as `42 s`, `3m05s`, `1h02m`; `-` for nothing (0 or less).
pub fn duration(s: f64) -> String {
    if s.is_nan() || s <= 0.0 {
        return "-".into();
    }
    let t = s.round() as u64;
    match t {
        0..=99 => format!("{t} s"),
        100..=3599 => format!("{}m{:02}s", t / 60, t % 60),
        _ => format!("{}h{:02}m", t / 3600, (t % 3600) / 60),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn detail(j: &JobInfo) -> &str {
    if j.error.is_empty() {
        &j.step
    } else {
        &j.error
    }
}

/// Jobs as tables: copies as before, migrations in their own table (VM, mode, rounds,
/// predicted downtime, cutover). No jobs at all: the copy table's header.
pub fn table(jobs: &[JobInfo]) -> String {
    let (migrations, copies): (Vec<&JobInfo>, Vec<&JobInfo>) = jobs.iter().partition(|j| j.migration.is_some());
    let mut out = String::new();
    if !copies.is_empty() || migrations.is_empty() {
        out += &copy_table(&copies);
    }
    if !migrations.is_empty() {
        if !out.is_empty() {
            out.push('\n');
        }
        out += &migration_table(&migrations);
    }
    out
}

fn migration_table(jobs: &[&JobInfo]) -> String {
    let vm_w = jobs
        .iter()
        .filter_map(|j| j.migration.as_ref().map(|m| m.vm.chars().count()))
        .max()
        .unwrap_or(0)
        .clamp(2, 32);
    let cut_w = jobs
        .iter()
        .filter_map(|j| j.migration.as_ref().map(|m| m.cutover.chars().count()))
        .max()
        .unwrap_or(0)
        .clamp(7, 40);
    let mut out = format!(
        "{:>4}  {:<vm_w$}  {:<4}  {:<10}  {:>6}  {:>6}  {:>8}  {:<cut_w$}  {}\n",
        "ID", "VM", "MODE", "STATE", "DONE", "ROUNDS", "DOWNTIME", "CUTOVER", "STEP / ERROR"
    );
    for j in jobs {
        let m = j.migration.clone().unwrap_or_default();
        out += &format!(
            "{:>4}  {:<vm_w$}  {:<4}  {:<10}  {:>5.1}%  {:>6}  {:>8}  {:<cut_w$}  {}\n",
            j.id,
            m.vm,
            or_dash(&m.mode),
            j.state.as_str(),
            100.0 * j.progress,
            m.sync_rounds,
            downtime(&m),
            or_dash(&m.cutover),
            detail(j)
        );
    }
    out
}

/// The measured downtime once known, else a warm migration's prediction (`~`), else "-".
fn downtime(m: &MigrationInfo) -> String {
    if m.downtime_seconds > 0.0 {
        duration(m.downtime_seconds)
    } else if m.mode == "warm" && m.predicted_downtime_seconds > 0.0 {
        format!("~{}", duration(m.predicted_downtime_seconds))
    } else {
        "-".into()
    }
}

/// One migration job in full: its table row, then volumes, server, last round and step times.
pub fn migration_detail(j: &JobInfo, m: &MigrationInfo) -> String {
    let mut out = migration_table(&[j]);
    if j.bytes_total > 0 {
        out += &format!(
            "  copied:      {}/{} at {}/s\n",
            size(j.bytes_done),
            size(j.bytes_total),
            size(j.rate)
        );
    }
    if m.last_round_seconds > 0.0 || m.last_round_bytes > 0 {
        out += &format!(
            "  last round:  {} in {}\n",
            size(m.last_round_bytes),
            duration(m.last_round_seconds)
        );
    }
    if !m.volumes.is_empty() {
        out += &format!("  volumes:     {}\n", m.volumes.join(", "));
    }
    if !m.server_id.is_empty() {
        out += &format!("  server:      {}\n", m.server_id);
    }
    if !m.pending_release.is_empty() {
        out += &format!(
            "  to release:  {} (retried by the agent until done)\n",
            m.pending_release.join(", ")
        );
    }
    if !m.steps.is_empty() {
        let steps: Vec<String> = m
            .steps
            .iter()
            .map(|s| format!("{} {}", s.step, duration(s.seconds)))
            .collect();
        out += &format!("  steps:       {}\n", steps.join(", "));
    }
    out
}

/// What `cleanup` did for one job.
pub fn cleanup(r: &CleanupReport) -> String {
    let mut out = format!(
        "job {} ({}): {} removed, {} failed\n",
        r.job,
        r.vm,
        r.removed.len(),
        r.failed.len()
    );
    for x in &r.removed {
        out += &format!("  removed  {x}\n");
    }
    for x in &r.failed {
        out += &format!("  FAILED   {x}\n");
    }
    out
}

fn copy_table(jobs: &[&JobInfo]) -> String {
    let mut out = format!(
        "{:>4}  {:<5}  {:<10}  {:>6}  {:>21}  {:>11}  {}\n",
        "ID", "KIND", "STATE", "DONE", "BYTES", "RATE", "STEP / ERROR"
    );
    for j in jobs {
        out += &format!(
            "{:>4}  {:<5}  {:<10}  {:>5.1}%  {:>21}  {:>11}  {}\n",
            j.id,
            j.kind,
            j.state.as_str(),
            100.0 * j.progress,
            format!("{}/{}", size(j.bytes_done), size(j.bytes_total)),
            format!("{}/s", size(j.rate)),
            detail(j)
        );
    }
    out
}

/// One line: bar, percentage, bytes, rate, ETA; for a migration also the VM, mode,
/// rounds, predicted downtime and cutover.
pub fn progress_line(j: &JobInfo) -> String {
    let line = copy_progress_line(j);
    let Some(m) = &j.migration else { return line };
    let mut extra = vec![format!("{} rounds", m.sync_rounds)];
    if m.downtime_seconds > 0.0 || m.predicted_downtime_seconds > 0.0 {
        extra.push(format!("downtime {}", downtime(m)));
    }
    if !m.cutover.is_empty() {
        extra.push(format!("cutover {}", m.cutover));
    }
    let head = format!("job {} ", j.id);
    let rest = line.strip_prefix(&head).unwrap_or(&line);
    format!("{head}{} ({}) {rest} | {}", m.vm, or_dash(&m.mode), extra.join(", "))
}

fn copy_progress_line(j: &JobInfo) -> String {
    let width = 30;
    let filled = ((j.progress.clamp(0.0, 1.0)) * width as f64).round() as usize;
    let eta = if j.rate > 0 && j.bytes_total > j.bytes_done {
        let s = (j.bytes_total - j.bytes_done) / j.rate;
        format!("ETA {}:{:02}", s / 60, s % 60)
    } else {
        "ETA --:--".into()
    };
    format!(
        "job {} {:<9} [{}{}] {:>5.1}% {}/{} {}/s {}",
        j.id,
        j.step,
        "#".repeat(filled),
        ".".repeat(width - filled),
        100.0 * j.progress,
        size(j.bytes_done),
        size(j.bytes_total),
        size(j.rate),
        eta
    )
}

/// `discover` as a table: one line per VM, then its disks and NICs indented.
pub fn vms(vms: &[VmInfo]) -> String {
    let mut out = format!(
        "{:<8}  {:<28}  {:<10}  {:>4}  {:>9}  {:<4}  {:<3}  {:<5}  {}\n",
        "MOREF", "NAME", "POWER", "CPU", "MEMORY", "FW", "CBT", "SNAPS", "PATH / HOST"
    );
    for v in vms {
        out += &format!(
            "{:<8}  {:<28}  {:<10}  {:>4}  {:>9}  {:<4}  {:<3}  {:<5}  {} on {}\n",
            v.moref,
            v.name,
            v.power_state,
            v.cpus,
            size(v.memory_mib << 20),
            v.firmware,
            if v.cbt_enabled { "on" } else { "off" },
            format!("{}/{}", v.snapshots.count, v.snapshots.depth),
            v.inventory_path,
            v.host.name
        );
        for d in &v.disks {
            let mut flags = vec![if d.thin { "thin" } else { "thick" }];
            if d.independent {
                flags.push("independent");
            }
            if d.rdm {
                flags.push("rdm");
            }
            out += &format!(
                "    disk {:<5} {:>10}  {}  {}:{}  {}  changeId {}\n",
                d.key,
                size(d.capacity_bytes),
                d.datastore_path,
                d.controller_bus,
                d.unit_number,
                flags.join(","),
                d.change_id.as_deref().unwrap_or("-")
            );
        }
        for n in &v.nics {
            let ips: Vec<&str> = n.ipv4.iter().chain(&n.ipv6).map(String::as_str).collect();
            out += &format!(
                "    nic  {:<5} {}  {:<8} {} ({}{})  {}\n",
                n.key,
                n.mac,
                n.adapter_type,
                n.network_name,
                if n.distributed { "distributed " } else { "" },
                n.network_key,
                ips.join(" ")
            );
        }
    }
    out
}

/// `check` as a table: per VM its verdict, then each check with the fix.
pub fn checks(reports: &[CheckReport]) -> String {
    let mut out = String::new();
    for r in reports {
        out += &format!("{} ({}): {}\n", r.vm, r.moref, r.status.as_str().to_uppercase());
        for i in &r.items {
            out += &format!("  {:<8}  {:<17}  {}\n", i.status.as_str(), i.check, i.detail);
            if !i.fix.is_empty() && i.status != CheckStatus::Ok {
                out += &format!("  {:<8}  {:<17}  fix: {}\n", "", "", i.fix);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, migration: Option<MigrationInfo>) -> JobInfo {
        JobInfo {
            id,
            kind: if migration.is_some() { "migrate" } else { "copy" }.into(),
            state: osm_api::JobState::Running,
            step: "copying".into(),
            progress: 0.5,
            bytes_done: 1 << 30,
            bytes_total: 2 << 30,
            bytes_read: 0,
            bytes_written: 0,
            rate: 1 << 20,
            error: String::new(),
            source: "s".into(),
            target: "t".into(),
            migration,
        }
    }

    #[test]
    fn migrations_get_their_own_table() {
        let m = MigrationInfo {
            vm: "web-1".into(),
            mode: "warm".into(),
            sync_rounds: 3,
            predicted_downtime_seconds: 125.0,
            cutover: "manual".into(),
            ..Default::default()
        };
        let t = table(&[job(1, None), job(2, Some(m))]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("KIND") && lines[1].contains("copy"), "{t}");
        assert_eq!(lines[2], "");
        assert!(lines[3].contains("VM") && lines[3].contains("DOWNTIME"), "{t}");
        for want in ["web-1", "warm", "50.0%", " 3 ", "~2m05s", "manual", "copying"] {
            assert!(lines[4].contains(want), "{want} in {t}");
        }
        // Cold: no prediction (the copy of a stopped VM); the measured downtime once done.
        let cold = |downtime_seconds| MigrationInfo {
            vm: "db-1".into(),
            mode: "cold".into(),
            predicted_downtime_seconds: 23.0,
            downtime_seconds,
            cutover: "cold: at the start".into(),
            ..Default::default()
        };
        let row = |t: String| t.lines().nth(1).unwrap().to_string();
        let running = row(migration_table(&[&job(4, Some(cold(0.0)))]));
        assert!(running.contains("  -  ") && !running.contains("23 s"), "{running}");
        let done = row(migration_table(&[&job(4, Some(cold(580.0)))]));
        assert!(done.contains("9m40s") && done.contains("cold: at the start"), "{done}");
        assert!(progress_line(&job(4, Some(cold(580.0)))).contains("downtime 9m40s"));
        assert!(!table(&[job(3, None)]).contains("DOWNTIME"));
        assert!(table(&[]).contains("KIND"));
        let p = progress_line(&job(2, table_vm()));
        assert!(p.starts_with("job 2 db (cold) copying"), "{p}");
    }

    fn table_vm() -> Option<MigrationInfo> {
        Some(MigrationInfo {
            vm: "db".into(),
            mode: "cold".into(),
            ..Default::default()
        })
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0.0), "-");
        assert_eq!(duration(42.4), "42 s");
        assert_eq!(duration(185.0), "3m05s");
        assert_eq!(duration(3720.0), "1h02m");
    }

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(size(1536 << 10), "1.5 MiB");
    }
}
