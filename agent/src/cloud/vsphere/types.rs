//! The vim25 types osm sends and reads, as serde structs for quick-xml. Field order is
//! the WSDL's sequence order (vCenter checks it). Unknown elements are ignored on read.
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// ManagedObjectReference: `<x type="VirtualMachine">vm-42</x>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Default)]
pub struct MoRef {
    #[serde(rename = "@type")]
    pub kind: String,
    #[serde(rename = "$text")]
    pub value: String,
}

impl MoRef {
    pub fn new(kind: &str, value: &str) -> MoRef {
        MoRef {
            kind: kind.into(),
            value: value.into(),
        }
    }
}

impl std::fmt::Display for MoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// A property value typed `xsi:type="ManagedObjectReference"` also carries `type="Folder"`;
/// both attributes have the local name `type`, so the derive would see a duplicate.
/// Keep the one that names the object's type.
impl<'de> Deserialize<'de> for MoRef {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MoRef, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MoRef;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a ManagedObjectReference")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<MoRef, A::Error> {
                let mut r = MoRef::default();
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "@type" => {
                            let t: String = m.next_value()?;
                            if t != "ManagedObjectReference" && !t.starts_with("xsd:") {
                                r.kind = t;
                            }
                        }
                        "$text" => r.value = m.next_value()?,
                        _ => {
                            m.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_struct("MoRef", &["@type", "$text"], V)
    }
}

// ---- requests ----

#[derive(Serialize)]
pub struct This<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
}

#[derive(Serialize)]
pub struct Login<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    #[serde(rename = "userName")]
    pub user_name: &'a str,
    pub password: &'a str,
}

#[derive(Serialize)]
pub struct SessionIsActive<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    #[serde(rename = "sessionID")]
    pub session_id: &'a str,
    #[serde(rename = "userName")]
    pub user_name: &'a str,
}

#[derive(Serialize)]
pub struct CreateContainerView<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    pub container: &'a MoRef,
    #[serde(rename = "type")]
    pub types: Vec<&'a str>,
    pub recursive: bool,
}

#[derive(Serialize)]
pub struct RetrievePropertiesEx<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    #[serde(rename = "specSet")]
    pub spec_set: Vec<PropertyFilterSpec>,
    pub options: RetrieveOptions,
}

#[derive(Serialize)]
pub struct ContinueRetrievePropertiesEx<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    pub token: &'a str,
}

#[derive(Serialize)]
pub struct PropertyFilterSpec {
    #[serde(rename = "propSet")]
    pub prop_set: Vec<PropertySpec>,
    #[serde(rename = "objectSet")]
    pub object_set: Vec<ObjectSpec>,
}

#[derive(Serialize)]
pub struct PropertySpec {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "pathSet")]
    pub path_set: Vec<String>,
}

#[derive(Serialize)]
pub struct ObjectSpec {
    pub obj: MoRef,
    pub skip: bool,
    #[serde(rename = "selectSet")]
    pub select_set: Vec<TraversalSpec>,
}

#[derive(Serialize)]
pub struct TraversalSpec {
    #[serde(rename = "@xsi:type")]
    pub xsi_type: &'static str,
    #[serde(rename = "type")]
    pub kind: String,
    pub path: String,
    pub skip: bool,
}

#[derive(Serialize)]
pub struct RetrieveOptions {
    #[serde(rename = "maxObjects")]
    pub max_objects: u32,
}

#[derive(Serialize)]
pub struct CreateSnapshot<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    pub name: &'a str,
    pub description: &'a str,
    pub memory: bool,
    pub quiesce: bool,
}

#[derive(Serialize)]
pub struct RemoveSnapshot<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    #[serde(rename = "removeChildren")]
    pub remove_children: bool,
    pub consolidate: bool,
}

#[derive(Serialize)]
pub struct QueryChangedDiskAreas<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<&'a MoRef>,
    #[serde(rename = "deviceKey")]
    pub device_key: i32,
    #[serde(rename = "startOffset")]
    pub start_offset: u64,
    #[serde(rename = "changeId")]
    pub change_id: &'a str,
}

#[derive(Serialize)]
pub struct ReconfigVm<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    pub spec: ConfigSpec,
}

#[derive(Serialize)]
pub struct ConfigSpec {
    #[serde(rename = "changeTrackingEnabled")]
    pub change_tracking_enabled: bool,
}

#[derive(Serialize)]
pub struct HasPrivilegeOnEntity<'a> {
    #[serde(rename = "_this")]
    pub this: &'a MoRef,
    pub entity: &'a MoRef,
    #[serde(rename = "sessionId")]
    pub session_id: &'a str,
    #[serde(rename = "privId")]
    pub priv_id: Vec<&'a str>,
}

// ---- replies ----

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ServiceContent {
    #[serde(rename = "rootFolder")]
    pub root_folder: MoRef,
    #[serde(rename = "propertyCollector")]
    pub property_collector: MoRef,
    #[serde(rename = "viewManager")]
    pub view_manager: MoRef,
    #[serde(rename = "sessionManager")]
    pub session_manager: MoRef,
    #[serde(rename = "authorizationManager")]
    pub authorization_manager: MoRef,
    pub about: About,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct About {
    #[serde(rename = "fullName")]
    pub full_name: String,
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// vCenter's own id (empty on a standalone ESXi host).
    #[serde(rename = "instanceUuid")]
    pub instance_uuid: String,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct UserSession {
    pub key: String,
    #[serde(rename = "userName")]
    pub user_name: String,
}

/// Text content of an element (the scalar property values).
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct Text {
    #[serde(rename = "$text")]
    pub text: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct DiskChangeInfo {
    #[serde(rename = "startOffset")]
    pub start_offset: u64,
    pub length: u64,
    #[serde(rename = "changedArea")]
    pub changed_area: Vec<DiskChangeExtent>,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
#[serde(default)]
pub struct DiskChangeExtent {
    pub start: u64,
    pub length: u64,
}

/// TaskInfo, the parts osm reads.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct TaskInfo {
    pub key: String,
    #[serde(rename = "descriptionId")]
    pub description_id: String,
    pub state: String,
    pub error: Option<LocalizedMethodFault>,
    pub result: Option<MoRef>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct LocalizedMethodFault {
    pub fault: FaultDetail,
    #[serde(rename = "localizedMessage")]
    pub localized_message: String,
}

/// Any fault object: its xsi:type and the fields of the kinds osm names in messages.
#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct FaultDetail {
    #[serde(rename = "@type")]
    pub kind: String,
    #[serde(rename = "privilegeId")]
    pub privilege_id: Option<String>,
    pub object: Option<MoRef>,
    pub obj: Option<MoRef>,
    pub task: Option<MoRef>,
    pub file: Option<String>,
    #[serde(rename = "faultMessage")]
    pub fault_message: Vec<LocalizableMessage>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct LocalizableMessage {
    pub key: String,
    pub message: String,
}

// ---- VM configuration parts ----

/// One `VirtualDevice` of `config.hardware.device`; the fields of every subtype osm reads.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Device {
    #[serde(rename = "@type")]
    pub kind: String,
    pub key: i32,
    #[serde(rename = "deviceInfo")]
    pub device_info: Option<Description>,
    pub backing: Option<Backing>,
    pub connectable: Option<Connectable>,
    #[serde(rename = "controllerKey")]
    pub controller_key: Option<i32>,
    #[serde(rename = "unitNumber")]
    pub unit_number: Option<i32>,
    #[serde(rename = "busNumber")]
    pub bus_number: Option<i32>,
    #[serde(rename = "capacityInKB")]
    pub capacity_in_kb: Option<u64>,
    #[serde(rename = "capacityInBytes")]
    pub capacity_in_bytes: Option<u64>,
    #[serde(rename = "macAddress")]
    pub mac_address: Option<String>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Description {
    pub label: String,
    pub summary: String,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Connectable {
    pub connected: bool,
}

/// Disk and NIC backings (flat, sparse, RDM, network, distributed port).
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct Backing {
    #[serde(rename = "@type")]
    pub kind: String,
    #[serde(rename = "fileName")]
    pub file_name: Option<String>,
    pub datastore: Option<MoRef>,
    #[serde(rename = "diskMode")]
    pub disk_mode: Option<String>,
    #[serde(rename = "thinProvisioned")]
    pub thin_provisioned: Option<bool>,
    #[serde(rename = "compatibilityMode")]
    pub compatibility_mode: Option<String>,
    #[serde(rename = "changeId")]
    pub change_id: Option<String>,
    #[serde(rename = "deviceName")]
    pub device_name: Option<String>,
    pub network: Option<MoRef>,
    pub port: Option<DvPort>,
}

#[derive(Debug, Deserialize, Default, Clone)]
#[serde(default)]
pub struct DvPort {
    #[serde(rename = "switchUuid")]
    pub switch_uuid: String,
    #[serde(rename = "portgroupKey")]
    pub portgroup_key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ArrayOfDevice {
    #[serde(rename = "VirtualDevice")]
    pub devices: Vec<Device>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ArrayOfGuestNic {
    #[serde(rename = "GuestNicInfo")]
    pub nics: Vec<GuestNicInfo>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct GuestNicInfo {
    pub network: String,
    #[serde(rename = "ipAddress")]
    pub ip_address: Vec<String>,
    #[serde(rename = "macAddress")]
    pub mac_address: String,
    pub connected: bool,
    #[serde(rename = "deviceConfigId")]
    pub device_config_id: i32,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct BootOptions {
    #[serde(rename = "efiSecureBootEnabled")]
    pub efi_secure_boot_enabled: bool,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct SnapshotInfo {
    #[serde(rename = "currentSnapshot")]
    pub current_snapshot: Option<MoRef>,
    #[serde(rename = "rootSnapshotList")]
    pub root_snapshot_list: Vec<SnapshotTree>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct SnapshotTree {
    pub snapshot: MoRef,
    pub name: String,
    pub description: String,
    #[serde(rename = "childSnapshotList")]
    pub child_snapshot_list: Vec<SnapshotTree>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ArrayOfHostVirtualNic {
    #[serde(rename = "HostVirtualNic")]
    pub nics: Vec<HostVirtualNic>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct HostVirtualNic {
    pub spec: HostVirtualNicSpec,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct HostVirtualNicSpec {
    pub ip: Option<HostIpConfig>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct HostIpConfig {
    #[serde(rename = "ipAddress")]
    pub ip_address: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(default)]
pub struct ArrayOfBoolean {
    pub boolean: Vec<bool>,
}
