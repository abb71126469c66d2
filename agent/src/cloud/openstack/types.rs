//! The typed requests and replies the engine sees (only the fields osm uses).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Metadata = BTreeMap<String, String>;

/// The metadata key that makes a create idempotent: a retried step finds what the
/// first try made instead of making a second one.
pub const IDEMPOTENCY_KEY: &str = "osm:key";

const GIB: u64 = 1 << 30;

/// Bytes → whole GiB, rounded up (a volume is never smaller than its disk); at least 1.
pub fn gib_for_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

#[derive(Debug, Clone, Default)]
pub struct VolumeSpec {
    pub name: String,
    /// The source disk's size; the volume gets it rounded up to whole GiB.
    pub size_bytes: u64,
    pub volume_type: Option<String>,
    pub availability_zone: Option<String>,
    pub description: Option<String>,
    pub metadata: Metadata,
    /// Stored as `osm:key`; a create with a key that already has a volume returns it.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Volume {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    pub status: String,
    /// GiB.
    pub size: u64,
    #[serde(default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub volume_type: Option<String>,
    /// "true" / "false" as Cinder returns it.
    #[serde(default)]
    pub bootable: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub volume_image_metadata: Metadata,
    #[serde(default)]
    pub attachments: Vec<VolumeAttachmentInfo>,
}

impl Volume {
    pub fn size_bytes(&self) -> u64 {
        self.size * GIB
    }
    pub fn is_bootable(&self) -> bool {
        self.bootable.as_deref() == Some("true")
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct VolumeAttachmentInfo {
    #[serde(default)]
    pub server_id: Option<String>,
    #[serde(default)]
    pub attachment_id: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
}

/// Image properties copied to a volume (Nova boots from them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageProperties {
    /// bios | uefi
    pub hw_firmware_type: Option<String>,
    /// e.g. q35, pc
    pub hw_machine_type: Option<String>,
    /// linux | windows
    pub os_type: Option<String>,
    /// virtio | scsi | sata | ide
    pub hw_disk_bus: Option<String>,
    /// virtio | e1000 | e1000e | vmxnet3
    pub hw_vif_model: Option<String>,
    /// required | disabled | optional
    pub os_secure_boot: Option<String>,
}

impl ImageProperties {
    pub fn to_metadata(&self) -> Metadata {
        [
            ("hw_firmware_type", &self.hw_firmware_type),
            ("hw_machine_type", &self.hw_machine_type),
            ("os_type", &self.os_type),
            ("hw_disk_bus", &self.hw_disk_bus),
            ("hw_vif_model", &self.hw_vif_model),
            ("os_secure_boot", &self.os_secure_boot),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_string(), v)))
        .collect()
    }
}

/// Cinder's absolute limits of the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeLimits {
    pub max_gigabytes: i64,
    pub used_gigabytes: i64,
    pub max_volumes: i64,
    pub used_volumes: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Attachment {
    /// Nova's attachment id (the volume id for the legacy API).
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "volumeId")]
    pub volume_id: String,
    #[serde(rename = "serverId", default)]
    pub server_id: Option<String>,
    /// The guest device name Nova guessed ("/dev/vdb"): not to be trusted.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Flavor {
    pub id: String,
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// GB (root disk; 0 for boot-from-volume flavors).
    pub disk: u64,
    #[serde(rename = "OS-FLV-EXT-DATA:ephemeral", default)]
    pub ephemeral: u64,
    #[serde(rename = "os-flavor-access:is_public", default)]
    pub is_public: Option<bool>,
    #[serde(default)]
    pub extra_specs: Metadata,
}

#[derive(Debug, Clone, Default)]
pub struct FlavorSpec {
    pub name: String,
    pub vcpus: u32,
    pub ram_mib: u64,
    pub disk_gb: u64,
    pub is_public: bool,
    pub extra_specs: Metadata,
}

#[derive(Debug, Clone)]
pub struct BootVolume {
    pub volume_id: String,
    /// 0 for the boot disk, then 1, 2…; None for a disk that is not bootable.
    pub boot_index: Option<i32>,
}

#[derive(Debug, Clone, Default)]
pub struct ServerSpec {
    pub name: String,
    pub flavor_id: String,
    pub volumes: Vec<BootVolume>,
    /// Pre-created ports, in NIC order.
    pub port_ids: Vec<String>,
    /// Names or ids; applied to the server's own ports (pre-created ports carry theirs).
    pub security_groups: Vec<String>,
    pub availability_zone: Option<String>,
    pub key_name: Option<String>,
    /// Raw user data (base64-encoded here).
    pub user_data: Option<Vec<u8>>,
    pub metadata: Metadata,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(rename = "OS-EXT-AZ:availability_zone", default)]
    pub availability_zone: Option<String>,
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub metadata: Metadata,
    #[serde(default)]
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: Option<u16>,
}

/// Nova's absolute limits of the project (`-1` = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputeLimits {
    pub max_total_instances: i64,
    pub total_instances_used: i64,
    pub max_total_cores: i64,
    pub total_cores_used: i64,
    #[serde(rename = "maxTotalRAMSize")]
    pub max_total_ram_size: i64,
    #[serde(rename = "totalRAMUsed")]
    pub total_ram_used: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub subnets: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subnet {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub network_id: String,
    pub cidr: String,
    pub ip_version: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FixedIp {
    pub subnet_id: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ip_address: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct PortSpec {
    pub network_id: String,
    pub name: String,
    /// The source NIC's MAC: a port with this MAC on this network is reused.
    pub mac_address: Option<String>,
    pub fixed_ips: Vec<FixedIp>,
    /// Ids (resolve names with `find_security_group`).
    pub security_group_ids: Vec<String>,
    pub tags: Vec<String>,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub network_id: String,
    pub mac_address: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub security_groups: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub status: String,
}

#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    pub name: String,
    /// raw | qcow2 …
    pub disk_format: String,
    pub container_format: String,
    pub visibility: Option<String>,
    pub properties: Metadata,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub status: String,
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub checksum: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_gib() {
        assert_eq!(gib_for_bytes(0), 1);
        assert_eq!(gib_for_bytes(1), 1);
        assert_eq!(gib_for_bytes(GIB), 1);
        assert_eq!(gib_for_bytes(GIB + 1), 2);
        assert_eq!(gib_for_bytes(40 * GIB - 512), 40);
    }
}
