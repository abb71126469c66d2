//! Migration plans: osm's own TOML format, and the seed kit's `vars.yaml` accepted as it
//! is. Both become one validated [`Plan`]; keys osm does not use are named in warnings,
//! never silently dropped. See docs/plan.md.
mod model;
mod vars_yaml;

use std::path::Path;

pub use model::{Cutover, Destination, FlavorChoice, Mode, Network, Plan, Secret, Source, Transport};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("cannot read plan {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("plan {path}: {message}")]
    Parse { path: String, message: String },
    #[error("plan {path}: {message}")]
    Invalid { path: String, message: String },
}

/// A plan and what the operator should know about how it was read.
#[derive(Debug)]
pub struct Loaded {
    pub plan: Plan,
    pub warnings: Vec<String>,
}

/// Load a plan: `*.yaml`/`*.yml` are the seed's vars.yaml, anything else osm's TOML.
pub fn load(path: &Path) -> Result<Loaded, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse(&text, path)
}

/// Parse a plan's text; `path` picks the format (as in [`load`]) and names it in errors.
pub fn parse(text: &str, path: &Path) -> Result<Loaded, PlanError> {
    let p = path.display().to_string();
    let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let (plan, warnings) = if is_yaml {
        vars_yaml::parse(text).map_err(|message| PlanError::Parse {
            path: p.clone(),
            message,
        })?
    } else {
        let plan: Plan = toml::from_str(text).map_err(|e| PlanError::Parse {
            path: p.clone(),
            message: e.to_string(),
        })?;
        (plan, Vec::new())
    };
    let mut warnings = warnings;
    plan.validate(&mut warnings)
        .map_err(|message| PlanError::Invalid { path: p, message })?;
    Ok(Loaded { plan, warnings })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn toml_plans_are_strict_and_validated() {
        let dir = tempfile::tempdir().unwrap();
        let good = r#"
vms = ["web-1", "db [prod]"]
mode = "warm"
cutover = { at = "2026-12-01T22:00:00Z" }
security_groups = ["default"]
[source]
vcenter = "vcenter.example"
user = "osm@vsphere.local"
password = { file = "/etc/osm/vcenter.password" }
thumbprint = "AA:BB"
[destination]
cloud = "prod"
[network]
map = { "VM Network" = "private" }
default_network = "private"
fixed_ips = true
[flavor]
id = "4"
"#;
        let l = load(&write(dir.path(), "plan.toml", good)).unwrap();
        assert_eq!(l.plan.cutover, Cutover::At("2026-12-01T22:00:00Z".into()));
        assert_eq!(l.plan.flavor, FlavorChoice::Id("4".into()));
        assert!(l.plan.network.create_ports, "create_ports defaults to true");
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);

        let typo = good.replace("fixed_ips", "fixed_ip");
        let e = load(&write(dir.path(), "typo.toml", &typo)).unwrap_err().to_string();
        assert!(e.contains("typo.toml") && e.contains("fixed_ip"), "{e}");
        let twice = good.replace("\"db [prod]\"", "\"web-1\"");
        let e = load(&write(dir.path(), "twice.toml", &twice)).unwrap_err().to_string();
        assert!(e.contains("'web-1' is listed twice"), "{e}");
        let late = good.replace("2026-12-01T22:00:00Z", "tonight");
        let e = load(&write(dir.path(), "late.toml", &late)).unwrap_err().to_string();
        assert!(e.contains("not RFC 3339"), "{e}");
        let e = load(&dir.path().join("missing.toml")).unwrap_err().to_string();
        assert!(e.contains("cannot read plan"), "{e}");
    }

    #[test]
    fn yaml_files_are_read_as_the_seed_vars() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "vars.yaml",
            "vcenter_hostname: vc\nvcenter_username: u\nvcenter_password: p\nvms_list: [a]\nfoo: 1\n",
        );
        let l = load(&p).unwrap();
        assert_eq!(l.plan.mode, Mode::Cold);
        assert!(l.warnings.iter().any(|w| w.contains("'foo'")));
        assert!(l.warnings.iter().any(|w| w.contains("password is written in the plan")));
    }
}
