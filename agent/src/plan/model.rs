//! The plan model (osm's TOML format, documented in docs/plan.md).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A password given inline (discouraged: warned about) or, better, as a 0600 file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    File(String),
    Inline(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub source: Source,
    #[serde(default)]
    pub destination: Destination,
    /// VM names or morefs.
    pub vms: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub cutover: Cutover,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub flavor: FlavorChoice,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub skip_conversion: bool,
    /// Cinder volume type for every disk, unless `volume_type_mapping` names the datastore.
    #[serde(default)]
    pub volume_type: Option<String>,
    /// Datastore name → Cinder volume type.
    #[serde(default)]
    pub volume_type_mapping: BTreeMap<String, String>,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub ssh_key_name: Option<String>,
    /// Remove what osm created in the destination when a migration fails or is cleaned up.
    #[serde(default)]
    pub tear_down: bool,
    /// Read disks from this local mount of the datastore (cold only) instead of VDDK.
    #[serde(default)]
    pub local_disk_path: Option<String>,
    /// The conversion host's own Nova id, when the metadata service cannot tell.
    #[serde(default)]
    pub instance_uuid: Option<String>,
    #[serde(default)]
    pub debug: bool,
    /// After a failure before any server exists, leave a source that osm shut down off
    /// (default: osm powers it on again).
    #[serde(default)]
    pub keep_source_off_on_failure: bool,
    /// New volumes of every volume type read as zeros (the backend zeroes them, as most
    /// do): a whole copy onto a volume osm just created skips zero runs. `false` makes
    /// every copy write its zeros.
    #[serde(default = "zeroed")]
    pub new_volumes_read_as_zeros: bool,
}

fn zeroed() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// vCenter host name or address.
    pub vcenter: String,
    pub user: String,
    pub password: Secret,
    /// The datacenter the VMs are looked for in (all of vCenter's when absent).
    #[serde(default)]
    pub datacenter: Option<String>,
    /// The VM folder they are looked for under: `/DC0/vm/prod`, or relative to the
    /// datacenter's VM folder (`prod`).
    #[serde(default)]
    pub folder: Option<String>,
    #[serde(default)]
    pub esxi_host: Option<String>,
    /// SHA-1 or SHA-256 thumbprint of the vCenter certificate (pins it).
    #[serde(default)]
    pub thumbprint: Option<String>,
    /// PEM CA bundle to verify vCenter with.
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Where VDDK is installed.
    #[serde(default)]
    pub vddk_libdir: Option<String>,
    /// How disks are read: `vddk` (nbdkit's vddk plugin, from the snapshot) or `https`
    /// (the datastore's /folder URL through nbdkit's curl plugin: no VDDK needed, but the
    /// VM must have no snapshots of its own, and a CA file must verify vCenter). Absent:
    /// the agent's `[migration] transport` (default `vddk`).
    #[serde(default)]
    pub transport: Option<Transport>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    #[default]
    Vddk,
    Https,
}

/// Where the VMs go: a clouds.yaml cloud, or the seed's `dst_cloud` dictionary.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// A cloud name in clouds.yaml (default: OS_CLOUD, then the agent's configuration).
    #[serde(default)]
    pub cloud: Option<String>,
    #[serde(default)]
    pub clouds_yaml: Option<String>,
    /// The seed's dst_cloud dictionary (auth, region_name, interface, …), kept as given.
    #[serde(default)]
    pub dst_cloud: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Full copy while the VM runs, CBT deltas until cutover.
    #[default]
    Warm,
    /// Shut down, copy, convert, boot.
    Cold,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cutover {
    /// Cut over as soon as the first full copy is done.
    #[default]
    Immediate,
    /// Keep syncing until `osmctl cutover VM`.
    Manual,
    /// Keep syncing until this RFC 3339 time.
    At(String),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Port group name or key → Neutron network name or id.
    #[serde(default)]
    pub map: BTreeMap<String, String>,
    /// For NICs whose port group is not mapped.
    #[serde(default)]
    pub default_network: Option<String>,
    /// Create ports with the source MACs (else let Nova create them).
    #[serde(default = "yes")]
    pub create_ports: bool,
    /// Keep the guest's IP addresses as fixed IPs on the ports.
    #[serde(default)]
    pub fixed_ips: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlavorChoice {
    /// The smallest existing flavor that is never smaller than the VM; created if none.
    #[default]
    Closest,
    /// Always create `osm-vmware-<vm>-<id>`.
    Create,
    /// This flavor id.
    Id(String),
}

impl Plan {
    /// Refuse what cannot work; note what is risky.
    pub fn validate(&self, warnings: &mut Vec<String>) -> Result<(), String> {
        if self.vms.is_empty() {
            return Err("no VMs listed: add their names to `vms` (vms_list in vars.yaml)".into());
        }
        if let Some(i) = self.vms.iter().position(|v| v.trim().is_empty()) {
            return Err(format!("VM #{} has an empty name", i + 1));
        }
        let mut seen = std::collections::BTreeSet::new();
        for v in &self.vms {
            if !seen.insert(v) {
                return Err(format!("VM '{v}' is listed twice"));
            }
        }
        if self.source.vcenter.trim().is_empty() || self.source.user.trim().is_empty() {
            return Err("source.vcenter and source.user must be set (vcenter_hostname, vcenter_username)".into());
        }
        match &self.source.password {
            Secret::Inline(p) if p.is_empty() => return Err("the vCenter password is empty".into()),
            Secret::Inline(_) => warnings.push(
                "the vCenter password is written in the plan; prefer a 0600 file (password = { file = \"…\" }, or vcenter_password_file)".into(),
            ),
            Secret::File(f) if !f.starts_with('/') => return Err(format!("password file '{f}' must be an absolute path")),
            Secret::File(_) => {}
        }
        if self.local_disk_path.is_some() && self.mode == Mode::Warm {
            return Err("local_disk_path supports cold migration only: set mode = \"cold\" (cbt_sync: false)".into());
        }
        if let Cutover::At(t) = &self.cutover {
            if crate::jobs::migrate::state::parse_time(t).is_err() {
                return Err(format!(
                    "cutover time '{t}' is not RFC 3339 (e.g. 2026-12-01T22:00:00Z)"
                ));
            }
        }
        if self.mode == Mode::Cold && self.cutover != Cutover::Immediate {
            warnings.push("cutover timing applies to warm migrations only; a cold migration cuts over at once".into());
        }
        Ok(())
    }
}
