//! vSphere discovery and pre-migration check results, as the agent returns them on both
//! transports (JSON on the socket, JSON strings on D-Bus). See docs/api.md.
use serde::{Deserialize, Serialize};

/// One VM as vCenter describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VmInfo {
    /// Managed object id, e.g. `vm-42`.
    pub moref: String,
    /// `config.instanceUuid`: unlike the moref, unique across vCenters (a job keeps it).
    pub instance_uuid: String,
    pub name: String,
    /// `/DC0/vm/folder/name` (names as vCenter shows them; `/` inside a name is `%2f`).
    pub inventory_path: String,
    pub datacenter: String,
    pub host: HostInfo,
    /// `poweredOn`, `poweredOff`, `suspended`.
    pub power_state: String,
    pub guest_id: String,
    pub guest_full_name: String,
    /// `bios` or `efi`.
    pub firmware: String,
    pub secure_boot: bool,
    pub cpus: u32,
    pub memory_mib: u64,
    /// e.g. `vmx-13`.
    pub hardware_version: String,
    /// `guestToolsRunning`, `guestToolsNotRunning`, …
    pub tools_running_status: String,
    /// `guestToolsCurrent`, `guestToolsNotInstalled`, …
    pub tools_version_status: String,
    pub tools_version: String,
    /// `config.changeTrackingEnabled` of the VM.
    pub cbt_enabled: bool,
    pub template: bool,
    pub consolidation_needed: bool,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    pub snapshots: SnapshotSummary,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HostInfo {
    pub moref: String,
    pub name: String,
    /// Management address (first VMkernel NIC), else the name.
    pub address: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskInfo {
    pub key: i32,
    pub label: String,
    pub capacity_bytes: u64,
    /// `[datastore1] dir/name.vmdk`
    pub datastore_path: String,
    pub datastore: String,
    pub datastore_moref: String,
    /// e.g. `ParaVirtualSCSIController`, `VirtualLsiLogicController`, `VirtualAHCIController`.
    pub controller_type: String,
    pub controller_key: i32,
    pub controller_bus: i32,
    pub unit_number: i32,
    pub thin: bool,
    /// `persistent`, `independent_persistent`, `independent_nonpersistent`, …
    pub disk_mode: String,
    pub independent: bool,
    /// Raw device mapping (`physicalMode` or `virtualMode` in `rdm_mode`).
    pub rdm: bool,
    pub rdm_mode: String,
    /// CBT tracks this disk: on for the VM, and the disk is neither independent nor a physical RDM.
    pub change_tracking: bool,
    /// The disk's current changeId (set once a snapshot was taken with CBT on).
    pub change_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NicInfo {
    pub key: i32,
    pub label: String,
    pub mac: String,
    /// `vmxnet3`, `e1000`, `e1000e`, `pcnet32`, `vmxnet2`, `sriov`, …
    pub adapter_type: String,
    pub network_name: String,
    /// Network moref for a standard port group, the port group key for a distributed one.
    pub network_key: String,
    pub distributed: bool,
    pub switch_uuid: String,
    pub connected: bool,
    pub ipv4: Vec<String>,
    pub ipv6: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotSummary {
    pub count: u32,
    /// Longest chain from a root snapshot (1 = one snapshot).
    pub depth: u32,
    pub current: Option<String>,
    pub list: Vec<SnapshotEntry>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SnapshotEntry {
    pub moref: String,
    pub name: String,
    pub description: String,
    /// Made by osm (name prefix and description marker).
    pub osm: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Warn,
    Blocking,
}

impl CheckStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Warn => "warn",
            CheckStatus::Blocking => "blocking",
        }
    }
}

/// One pre-migration check of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckItem {
    /// Stable id, e.g. `cbt`, `tools`, `esxi-902`.
    pub check: String,
    pub status: CheckStatus,
    pub detail: String,
    /// What to do about it (empty when ok).
    #[serde(default)]
    pub fix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub vm: String,
    pub moref: String,
    /// The worst status of the items.
    pub status: CheckStatus,
    pub items: Vec<CheckItem>,
}
