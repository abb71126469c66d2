//! Human output: job tables, sizes, and the live progress line of `watch`.
use osm_api::vsphere::{CheckReport, CheckStatus, VmInfo};
use osm_api::JobInfo;

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

pub fn table(jobs: &[JobInfo]) -> String {
    let mut out = format!(
        "{:>4}  {:<5}  {:<10}  {:>6}  {:>21}  {:>11}  {}\n",
        "ID", "KIND", "STATE", "DONE", "BYTES", "RATE", "STEP / ERROR"
    );
    for j in jobs {
        let detail = if j.error.is_empty() {
            j.step.clone()
        } else {
            j.error.clone()
        };
        out += &format!(
            "{:>4}  {:<5}  {:<10}  {:>5.1}%  {:>21}  {:>11}  {}\n",
            j.id,
            j.kind,
            j.state.as_str(),
            100.0 * j.progress,
            format!("{}/{}", size(j.bytes_done), size(j.bytes_total)),
            format!("{}/s", size(j.rate)),
            detail
        );
    }
    out
}

/// One line: bar, percentage, bytes, rate, ETA.
pub fn progress_line(j: &JobInfo) -> String {
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

    #[test]
    fn sizes_are_binary_units() {
        assert_eq!(size(512), "512 B");
        assert_eq!(size(3 << 30), "3.0 GiB");
        assert_eq!(size(1536 << 10), "1.5 MiB");
    }
}
