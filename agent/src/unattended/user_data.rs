//! Plans written in the user-data itself, without `write_files`: a `#cloud-config` whose
//! top-level `osm:` section holds `plans:`, a mapping of plan name to plan text.
//!
//! ```yaml
//! #cloud-config
//! osm:
//!   plans:
//!     10-wave1.toml: |
//!       vms = ["web-1"]
//!       …
//! ```
//!
//! cloud-init leaves unknown top-level keys alone and saves the user-data it was given as
//! `/var/lib/cloud/instance/user-data.txt` (root, 0600) before osm-agent starts, whatever
//! the datasource (metadata service, config drive, NoCloud): that file is read
//! (`[agent] user_data`). Each plan is then started once, like a file of `plans_dir`, and
//! named `user-data:osm.plans.<name>` in the record, the journal and `osm_plan_error_*`.
use std::path::{Path, PathBuf};

/// What a plan of the user-data is called where a file path would be.
pub fn plan_path(name: &str) -> PathBuf {
    PathBuf::from(format!("user-data:osm.plans.{name}"))
}

/// One plan of the section: its pseudo-path ([`plan_path`]) and its text, or why it is refused.
pub type Plan = (PathBuf, Result<String, String>);

/// The plans of the `osm:` section of `text` (a whole user-data), in name order. Ok(empty)
/// when the user-data is no `#cloud-config` or has no `osm:` section; Err when that
/// section is malformed.
pub fn plans(text: &str) -> Result<Vec<Plan>, String> {
    if !text.starts_with("#cloud-config") {
        return Ok(Vec::new()); // a script, MIME multi-part, …: only write_files plans apply
    }
    let doc: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| format!("the #cloud-config is not valid YAML: {e}"))?;
    let Some(osm) = doc.get("osm") else {
        return Ok(Vec::new());
    };
    let osm = osm
        .as_mapping()
        .ok_or("the `osm` section must be a mapping with the key `plans`")?;
    for key in osm.keys() {
        if key.as_str() != Some("plans") {
            return Err(format!(
                "the `osm` section has an unknown key {}: only `plans` (name: plan text) is read",
                show(key)
            ));
        }
    }
    let Some(plans) = osm.get("plans") else {
        return Ok(Vec::new());
    };
    let plans = plans
        .as_mapping()
        .ok_or("`osm.plans` must map plan names (NAME.toml or NAME.yaml) to plan texts")?;
    let mut out: Vec<Plan> = plans
        .iter()
        .map(|(name, body)| {
            let name = name.as_str().map(str::to_string).unwrap_or_else(|| show(name));
            let plan = check_name(&name).and_then(|()| {
                body.as_str().map(str::to_string).ok_or_else(|| {
                    "the plan must be a text (use a block scalar: `NAME.toml: |` and the plan indented below)"
                        .to_string()
                })
            });
            (plan_path(&name), plan)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn show(v: &serde_yaml::Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Names become record keys and tell the plan's format: `NAME.toml`, `NAME.yaml`, `NAME.yml`.
fn check_name(name: &str) -> Result<(), String> {
    let ok_chars = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        && !name.starts_with('.');
    let ext = Path::new(name).extension().and_then(|e| e.to_str());
    if ok_chars && matches!(ext, Some("toml" | "yaml" | "yml")) {
        Ok(())
    } else {
        Err(format!(
            "plan name {name:?}: use letters, digits, '.', '_', '-', ending in .toml, .yaml or .yml (the format)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_osm_section_of_a_cloud_config() {
        let text = "#cloud-config\nwrite_files: []\nosm:\n  plans:\n    20-b.yaml: |\n      vms_list: [a]\n    10-a.toml: |\n      vms = [\"x\"]\n";
        let got = plans(text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, PathBuf::from("user-data:osm.plans.10-a.toml"));
        assert_eq!(got[0].1.as_deref(), Ok("vms = [\"x\"]\n"));
        assert_eq!(got[1].1.as_deref(), Ok("vms_list: [a]\n"));
        assert_eq!(got[0].0.extension().unwrap(), "toml");
    }

    #[test]
    fn no_section_or_no_cloud_config_is_no_plan() {
        assert!(plans("#!/bin/sh\necho hi\n").unwrap().is_empty());
        assert!(plans("#cloud-config\npackages: [tmux]\n").unwrap().is_empty());
        assert!(plans("#cloud-config\nosm:\n  plans: {}\n").unwrap().is_empty());
    }

    #[test]
    fn malformed_sections_and_plans_are_named() {
        let e = plans("#cloud-config\nosm: [a]\n").unwrap_err();
        assert!(e.contains("mapping"), "{e}");
        let e = plans("#cloud-config\nosm:\n  plan: {}\n").unwrap_err();
        assert!(e.contains("unknown key plan"), "{e}");
        let e = plans("#cloud-config\nosm:\n  plans: [x]\n").unwrap_err();
        assert!(e.contains("osm.plans"), "{e}");
        let e = plans("#cloud-config\nosm: {plans: {a: 1\n").unwrap_err();
        assert!(e.contains("not valid YAML"), "{e}");
        let got = plans("#cloud-config\nosm:\n  plans:\n    wave1: 'vms = []'\n    ../x.toml: 'a'\n    ok.toml: [1]\n")
            .unwrap();
        let errs: Vec<&str> = got.iter().map(|(_, r)| r.as_ref().unwrap_err().as_str()).collect();
        assert!(
            errs.iter().any(|e| e.contains("\"wave1\"") && e.contains(".toml")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("\"../x.toml\"")), "{errs:?}");
        assert!(errs.iter().any(|e| e.contains("block scalar")), "{errs:?}");
    }
}
