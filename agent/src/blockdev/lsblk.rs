//! `lsblk --json` (whole disks only) and the before/after diff.
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub size: u64,
    pub kind: String,
    pub serial: Option<String>,
}

#[derive(Deserialize)]
struct Out {
    blockdevices: Vec<Raw>,
}

#[derive(Deserialize)]
struct Raw {
    name: String,
    /// A number with --bytes (util-linux ≥ 2.33), a string in older ones.
    size: serde_json::Value,
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    serial: Option<String>,
}

pub fn parse(json: &[u8]) -> Result<Vec<Disk>, String> {
    let out: Out = serde_json::from_slice(json).map_err(|e| format!("lsblk --json: {e}"))?;
    Ok(out
        .blockdevices
        .into_iter()
        .map(|r| Disk {
            name: r.name,
            size: match &r.size {
                serde_json::Value::Number(n) => n.as_u64().unwrap_or(0),
                serde_json::Value::String(s) => s.parse().unwrap_or(0),
                _ => 0,
            },
            kind: r.kind.unwrap_or_default(),
            serial: r.serial.filter(|s| !s.is_empty()),
        })
        .collect())
}

pub async fn lsblk() -> Result<Vec<Disk>, String> {
    let out = tokio::process::Command::new("lsblk")
        .args(["--json", "--bytes", "--nodeps", "--output", "NAME,SIZE,TYPE,SERIAL"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("lsblk: {e}"))?;
    if !out.status.success() {
        return Err(format!("lsblk: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    parse(&out.stdout)
}

/// Disks (or loop devices with a backing file) in `after` that were not in `before`.
pub fn new_disks(before: &[Disk], after: &[Disk]) -> Vec<Disk> {
    after
        .iter()
        .filter(|d| matches!(d.kind.as_str(), "disk" | "loop") && d.size > 0)
        .filter(|d| !before.iter().any(|b| b.name == d.name && b.size == d.size))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_the_new_disk() {
        let before = parse(br#"{"blockdevices":[{"name":"vda","size":10737418240,"type":"disk","serial":null},{"name":"loop0","size":0,"type":"loop","serial":null}]}"#).unwrap();
        let after = parse(br#"{"blockdevices":[{"name":"vda","size":"10737418240","type":"disk","serial":null},{"name":"vdb","size":1073741824,"type":"disk","serial":"0e0f3c1a-1b2c-4d5e-8"},{"name":"loop0","size":0,"type":"loop","serial":null}]}"#).unwrap();
        let new = new_disks(&before, &after);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].name, "vdb");
        assert_eq!(new[0].size, 1 << 30);
        assert_eq!(new[0].serial.as_deref(), Some("0e0f3c1a-1b2c-4d5e-8"));
    }
}
