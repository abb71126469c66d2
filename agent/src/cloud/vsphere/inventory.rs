//! Discovery: every VM with its placement, hardware, disks, NICs, guest IPs and
//! snapshots, read in one PropertyCollector pass over a ContainerView (one round trip
//! per page of objects, whatever the number of VMs).
use std::collections::HashMap;
use std::net::IpAddr;

use osm_api::vsphere::{DiskInfo, HostInfo, NicInfo, SnapshotEntry, SnapshotSummary, VmInfo};

use super::client::Client;
use super::error::{Error, Result};
use super::snapshot::is_osm_snapshot;
use super::soap::ObjectContent;
use super::types::*;

pub const VM_PATHS: &[&str] = &[
    "name",
    "parent",
    "runtime.host",
    "runtime.powerState",
    "runtime.consolidationNeeded",
    "config.instanceUuid",
    "config.guestId",
    "config.guestFullName",
    "config.firmware",
    "config.bootOptions",
    "config.hardware.numCPU",
    "config.hardware.memoryMB",
    "config.version",
    "config.changeTrackingEnabled",
    "config.template",
    "config.hardware.device",
    "guest.toolsRunningStatus",
    "guest.toolsVersionStatus2",
    "guest.toolsVersion",
    "guest.net",
    "snapshot",
];

/// What discovery found, with the inventory around the VMs.
pub struct Inventory {
    pub vms: Vec<VmInfo>,
    /// Inventory paths of every folder (`/DC0/vm/sub`).
    pub folders: Vec<String>,
}

pub async fn discover(c: &Client) -> Result<Inventory> {
    let root = c.sc.root_folder.clone();
    let objs = c
        .view(
            &root,
            &[
                ("VirtualMachine", VM_PATHS),
                ("Folder", &["name", "parent"]),
                ("Datacenter", &["name", "parent"]),
                ("HostSystem", &["name", "config.network.vnic"]),
                ("Network", &["name"]),
                ("DistributedVirtualPortgroup", &["name", "key"]),
            ],
        )
        .await?;
    build(&root, &objs)
}

/// Turn the PropertyCollector's objects into VmInfo (pure: unit-tested on fixtures).
pub fn build(root: &MoRef, objs: &[ObjectContent]) -> Result<Inventory> {
    // Folders and datacenters: name and parent, for inventory paths.
    let mut nodes: HashMap<&MoRef, (String, Option<MoRef>)> = HashMap::new();
    let mut hosts: HashMap<&MoRef, HostInfo> = HashMap::new();
    let mut portgroups: HashMap<String, String> = HashMap::new();
    let mut networks: HashMap<String, String> = HashMap::new();
    for o in objs {
        match o.obj.kind.as_str() {
            "Folder" | "Datacenter" => {
                nodes.insert(&o.obj, (o.text("name"), o.moref("parent")));
            }
            "HostSystem" => {
                let name = o.text("name");
                let vnics: ArrayOfHostVirtualNic = o.get("config.network.vnic")?.unwrap_or_default();
                let address = vnics
                    .nics
                    .iter()
                    .filter_map(|n| n.spec.ip.as_ref())
                    .map(|ip| ip.ip_address.clone())
                    .find(|a| !a.is_empty())
                    .unwrap_or_else(|| name.clone());
                hosts.insert(
                    &o.obj,
                    HostInfo {
                        moref: o.obj.value.clone(),
                        name,
                        address,
                    },
                );
            }
            "DistributedVirtualPortgroup" => {
                let key = o.text("key");
                let key = if key.is_empty() { o.obj.value.clone() } else { key };
                portgroups.insert(key, o.text("name"));
                networks.insert(o.obj.value.clone(), o.text("name"));
            }
            "Network" | "OpaqueNetwork" => {
                networks.insert(o.obj.value.clone(), o.text("name"));
            }
            _ => {}
        }
    }
    let path_of = |start: &MoRef| -> (String, String) {
        let mut names = Vec::new();
        let mut dc = String::new();
        let mut cur = Some(start.clone());
        let mut guard = 0;
        while let Some(m) = cur {
            guard += 1;
            if m == *root || guard > 256 {
                break;
            }
            let Some((name, parent)) = nodes.get(&m) else { break };
            if m.kind == "Datacenter" && dc.is_empty() {
                dc = name.clone();
            }
            names.push(name.clone());
            cur = parent.clone();
        }
        names.reverse();
        (format!("/{}", names.join("/")), dc)
    };
    let folders = nodes
        .keys()
        .filter(|m| m.kind == "Folder" && **m != root)
        .map(|m| path_of(m).0)
        .collect();
    let mut vms = Vec::new();
    for o in objs.iter().filter(|o| o.obj.kind == "VirtualMachine") {
        let name = o.text("name");
        let (parent_path, datacenter) = o.moref("parent").map(|p| path_of(&p)).unwrap_or_default();
        let host = o
            .moref("runtime.host")
            .and_then(|h| hosts.get(&h).cloned())
            .unwrap_or_default();
        let devices: ArrayOfDevice = o.get("config.hardware.device")?.unwrap_or_default();
        let guest_net: ArrayOfGuestNic = o.get("guest.net")?.unwrap_or_default();
        let boot: BootOptions = o.get("config.bootOptions")?.unwrap_or_default();
        let snaps: SnapshotInfo = o.get("snapshot")?.unwrap_or_default();
        let cbt = o.parse::<bool>("config.changeTrackingEnabled");
        let mut firmware = o.text("config.firmware");
        if firmware.is_empty() {
            firmware = "bios".into();
        }
        vms.push(VmInfo {
            moref: o.obj.value.clone(),
            instance_uuid: o.text("config.instanceUuid"),
            inventory_path: if parent_path.len() > 1 {
                format!("{parent_path}/{name}")
            } else {
                format!("/{name}")
            },
            name,
            datacenter,
            host,
            power_state: o.text("runtime.powerState"),
            guest_id: o.text("config.guestId"),
            guest_full_name: o.text("config.guestFullName"),
            secure_boot: firmware == "efi" && boot.efi_secure_boot_enabled,
            firmware,
            cpus: o.parse("config.hardware.numCPU"),
            memory_mib: o.parse("config.hardware.memoryMB"),
            hardware_version: o.text("config.version"),
            tools_running_status: o.text("guest.toolsRunningStatus"),
            tools_version_status: o.text("guest.toolsVersionStatus2"),
            tools_version: o.text("guest.toolsVersion"),
            cbt_enabled: cbt,
            template: o.parse("config.template"),
            consolidation_needed: o.parse("runtime.consolidationNeeded"),
            disks: disks(&devices.devices, cbt),
            nics: nics(&devices.devices, &guest_net.nics, &networks, &portgroups),
            snapshots: snapshot_summary(&snaps),
        });
    }
    vms.sort_by(|a, b| a.inventory_path.cmp(&b.inventory_path).then(a.moref.cmp(&b.moref)));
    Ok(Inventory { vms, folders })
}

pub fn disks(devices: &[Device], cbt: bool) -> Vec<DiskInfo> {
    let by_key: HashMap<i32, &Device> = devices.iter().map(|d| (d.key, d)).collect();
    devices
        .iter()
        .filter(|d| d.kind == "VirtualDisk")
        .map(|d| {
            let b = d.backing.clone().unwrap_or_default();
            let file = b.file_name.clone().unwrap_or_default();
            let datastore = file
                .strip_prefix('[')
                .and_then(|r| r.split_once(']'))
                .map(|(ds, _)| ds.to_string())
                .unwrap_or_default();
            let disk_mode = b.disk_mode.clone().unwrap_or_default();
            let independent = disk_mode.starts_with("independent");
            let rdm = b.kind.contains("RawDiskMapping");
            let rdm_mode = if rdm {
                b.compatibility_mode.clone().unwrap_or_default()
            } else {
                String::new()
            };
            let ctrl = d.controller_key.and_then(|k| by_key.get(&k));
            DiskInfo {
                key: d.key,
                label: d.device_info.as_ref().map(|i| i.label.clone()).unwrap_or_default(),
                capacity_bytes: d
                    .capacity_in_bytes
                    .filter(|b| *b > 0)
                    .or(d.capacity_in_kb.map(|k| k * 1024))
                    .unwrap_or_default(),
                datastore_path: file,
                datastore,
                datastore_moref: b.datastore.as_ref().map(|m| m.value.clone()).unwrap_or_default(),
                controller_type: ctrl.map(|c| c.kind.clone()).unwrap_or_default(),
                controller_key: d.controller_key.unwrap_or_default(),
                controller_bus: ctrl.and_then(|c| c.bus_number).unwrap_or_default(),
                unit_number: d.unit_number.unwrap_or_default(),
                thin: b.thin_provisioned.unwrap_or(false),
                independent,
                change_tracking: cbt && !independent && rdm_mode != "physicalMode",
                rdm,
                rdm_mode,
                disk_mode,
                change_id: b.change_id.filter(|c| !c.is_empty()),
            }
        })
        .collect()
}

/// vim25 Ethernet card types and the adapter names osm reports.
const NIC_TYPES: &[(&str, &str)] = &[
    ("VirtualVmxnet3", "vmxnet3"),
    ("VirtualVmxnet3Vrdma", "vmxnet3vrdma"),
    ("VirtualVmxnet2", "vmxnet2"),
    ("VirtualVmxnet", "vmxnet"),
    ("VirtualE1000", "e1000"),
    ("VirtualE1000e", "e1000e"),
    ("VirtualPCNet32", "pcnet32"),
    ("VirtualSriovEthernetCard", "sriov"),
];

fn nics(
    devices: &[Device],
    guest: &[GuestNicInfo],
    networks: &HashMap<String, String>,
    portgroups: &HashMap<String, String>,
) -> Vec<NicInfo> {
    devices
        .iter()
        .filter_map(|d| NIC_TYPES.iter().find(|(k, _)| *k == d.kind).map(|(_, a)| (d, *a)))
        .map(|(d, adapter)| {
            let b = d.backing.clone().unwrap_or_default();
            let mac = d.mac_address.clone().unwrap_or_default();
            let (distributed, network_key, network_name, switch_uuid) = match &b.port {
                Some(p) => (
                    true,
                    p.portgroup_key.clone(),
                    portgroups.get(&p.portgroup_key).cloned().unwrap_or_default(),
                    p.switch_uuid.clone(),
                ),
                None => {
                    let key = b.network.as_ref().map(|n| n.value.clone()).unwrap_or_default();
                    let name = b
                        .device_name
                        .clone()
                        .filter(|n| !n.is_empty())
                        .or_else(|| networks.get(&key).cloned())
                        .unwrap_or_default();
                    (false, key, name, String::new())
                }
            };
            let mut ipv4 = Vec::new();
            let mut ipv6 = Vec::new();
            let g = guest.iter().find(|g| g.device_config_id == d.key).or_else(|| {
                guest
                    .iter()
                    .find(|g| !mac.is_empty() && g.mac_address.eq_ignore_ascii_case(&mac))
            });
            for ip in g.map(|g| g.ip_address.as_slice()).unwrap_or_default() {
                match ip.parse::<IpAddr>() {
                    Ok(IpAddr::V4(_)) => ipv4.push(ip.clone()),
                    Ok(IpAddr::V6(_)) => ipv6.push(ip.clone()),
                    Err(_) => {}
                }
            }
            NicInfo {
                key: d.key,
                label: d.device_info.as_ref().map(|i| i.label.clone()).unwrap_or_default(),
                mac,
                adapter_type: adapter.into(),
                network_name,
                network_key,
                distributed,
                switch_uuid,
                connected: d.connectable.as_ref().is_some_and(|c| c.connected),
                ipv4,
                ipv6,
            }
        })
        .collect()
}

pub fn snapshot_summary(s: &SnapshotInfo) -> SnapshotSummary {
    fn walk(t: &SnapshotTree, depth: u32, out: &mut SnapshotSummary) {
        out.count += 1;
        out.depth = out.depth.max(depth);
        out.list.push(SnapshotEntry {
            moref: t.snapshot.value.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            osm: is_osm_snapshot(&t.name, &t.description),
        });
        if depth < 1024 {
            for c in &t.child_snapshot_list {
                walk(c, depth + 1, out);
            }
        }
    }
    let mut out = SnapshotSummary {
        current: s.current_snapshot.as_ref().map(|m| m.value.clone()),
        ..Default::default()
    };
    for t in &s.root_snapshot_list {
        walk(t, 1, &mut out);
    }
    out
}

/// The VMs the caller named (moref, exact name or inventory path) under `folder`, in
/// the order named. A name that several VMs carry is refused, listing their paths.
pub fn select(inv: Inventory, names: &[String], folder: Option<&str>) -> Result<Vec<VmInfo>> {
    let mut vms = inv.vms;
    if let Some(f) = folder {
        let f = f.trim_end_matches('/');
        if !inv.folders.iter().any(|p| p == f) {
            return Err(Error::FolderNotFound(f.to_string()));
        }
        let prefix = format!("{f}/");
        vms.retain(|v| v.inventory_path.starts_with(&prefix));
    }
    if names.is_empty() {
        return Ok(vms);
    }
    let mut out = Vec::new();
    for n in names {
        let hit = one_named(&vms, n)?;
        if !out.iter().any(|v: &VmInfo| v.moref == hit.moref) {
            out.push(hit.clone());
        }
    }
    Ok(out)
}

/// The one VM with this moref, else this exact name or inventory path.
fn one_named<'a>(vms: &'a [VmInfo], n: &str) -> Result<&'a VmInfo> {
    if let Some(v) = vms.iter().find(|v| v.moref == n) {
        return Ok(v);
    }
    let hits: Vec<&VmInfo> = vms.iter().filter(|v| v.name == n || v.inventory_path == n).collect();
    match hits.as_slice() {
        [] => Err(Error::VmNotFound(n.to_string())),
        [one] => Ok(one),
        many => Err(Error::AmbiguousVm {
            name: n.to_string(),
            paths: many
                .iter()
                .map(|v| format!("{} ({})", v.inventory_path, v.moref))
                .collect(),
        }),
    }
}

/// Where a migration looks for its VM: the plan's datacenter and folder (a path such
/// as `/DC0/vm/prod`, or one relative to the datacenter's VM folder, `prod`).
#[derive(Debug, Clone, Default)]
pub struct Scope<'a> {
    pub datacenter: Option<&'a str>,
    pub folder: Option<&'a str>,
}

/// A migration's VM. Once recorded (`known`), it is found again by its instanceUuid
/// (by its moref for a job recorded before osm kept the uuid), never by its name: a
/// renamed VM, or a new one with its old name, does not change what the job reads.
/// The first time, by name within `scope`; a name several VMs carry is refused.
pub fn resolve(inv: Inventory, name: &str, scope: &Scope, known: Option<&VmInfo>) -> Result<VmInfo> {
    if let Some(k) = known.filter(|k| !k.instance_uuid.is_empty() || !k.moref.is_empty()) {
        let hit = if k.instance_uuid.is_empty() {
            inv.vms.into_iter().find(|v| v.moref == k.moref)
        } else {
            inv.vms.into_iter().find(|v| v.instance_uuid == k.instance_uuid)
        };
        return hit.ok_or_else(|| Error::VmGone {
            what: format!(
                "{} ({}, instanceUuid {})",
                k.inventory_path,
                k.moref,
                if k.instance_uuid.is_empty() {
                    "unknown"
                } else {
                    &k.instance_uuid
                }
            ),
        });
    }
    let mut vms = inv.vms;
    if let Some(dc) = scope.datacenter.filter(|d| !d.is_empty()) {
        vms.retain(|v| v.datacenter == dc);
    }
    if let Some(f) = scope.folder.filter(|f| !f.is_empty()) {
        let f = f.trim_end_matches('/');
        let path = match (f.starts_with('/'), scope.datacenter) {
            (true, _) => f.to_string(),
            (false, Some(dc)) => format!("/{dc}/vm/{f}"),
            (false, None) => {
                return Err(Error::Config(format!(
                "source.folder '{f}' is relative: give the datacenter (source.datacenter) or a path like /DC0/vm/{f}"
            )))
            }
        };
        if !inv.folders.contains(&path) {
            return Err(Error::FolderNotFound(path));
        }
        let prefix = format!("{path}/");
        vms.retain(|v| v.inventory_path.starts_with(&prefix));
    }
    let vm = one_named(&vms, name).map_err(|e| match (e, scope.datacenter) {
        (Error::VmNotFound(n), Some(dc)) => Error::VmNotFound(format!(
            "{n}' in datacenter '{dc}{}",
            scope.folder.map(|f| format!("', folder '{f}")).unwrap_or_default()
        )),
        (e, _) => e,
    })?;
    Ok(vm.clone())
}

#[cfg(test)]
mod resolve_tests {
    use super::*;

    fn vm(moref: &str, name: &str, path: &str, uuid: &str) -> VmInfo {
        VmInfo {
            moref: moref.into(),
            name: name.into(),
            inventory_path: path.into(),
            datacenter: path.split('/').nth(1).unwrap_or_default().into(),
            instance_uuid: uuid.into(),
            ..Default::default()
        }
    }

    fn inv() -> Inventory {
        Inventory {
            vms: vec![
                vm("vm-1", "web", "/DC0/vm/a/web", "u1"),
                vm("vm-2", "web", "/DC0/vm/b/web", "u2"),
                vm("vm-1", "web", "/DC1/vm/web", "u3"),
                vm("vm-9", "db", "/DC0/vm/db", "u9"),
            ],
            folders: vec![
                "/DC0/vm".into(),
                "/DC0/vm/a".into(),
                "/DC0/vm/b".into(),
                "/DC1/vm".into(),
            ],
        }
    }

    #[test]
    fn an_ambiguous_name_is_refused_with_the_candidates_paths() {
        let e = resolve(inv(), "web", &Scope::default(), None).unwrap_err().to_string();
        assert!(e.contains("3 VMs are named 'web'"), "{e}");
        assert!(
            e.contains("/DC0/vm/a/web (vm-1)") && e.contains("/DC0/vm/b/web (vm-2)"),
            "{e}"
        );
        let e = select(inv(), &["web".into()], None).unwrap_err().to_string();
        assert!(e.contains("/DC1/vm/web"), "{e}");
    }

    #[test]
    fn the_plans_datacenter_and_folder_are_honoured() {
        let dc1 = Scope {
            datacenter: Some("DC1"),
            folder: None,
        };
        assert_eq!(resolve(inv(), "web", &dc1, None).unwrap().instance_uuid, "u3");
        let b = Scope {
            datacenter: Some("DC0"),
            folder: Some("b"),
        };
        assert_eq!(resolve(inv(), "web", &b, None).unwrap().instance_uuid, "u2");
        let abs = Scope {
            datacenter: None,
            folder: Some("/DC0/vm/a"),
        };
        assert_eq!(resolve(inv(), "web", &abs, None).unwrap().instance_uuid, "u1");
        assert!(resolve(inv(), "db", &dc1, None).is_err());
    }

    #[test]
    fn a_recorded_vm_is_found_by_its_uuid_not_its_name() {
        let known = vm("vm-2", "web", "/DC0/vm/b/web", "u2");
        let mut i = inv();
        i.vms[1].name = "renamed".into();
        assert_eq!(
            resolve(i, "web", &Scope::default(), Some(&known)).unwrap().name,
            "renamed"
        );
        let mut i = inv();
        i.vms.remove(1);
        let e = resolve(i, "web", &Scope::default(), Some(&known))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no longer in vCenter") && e.contains("u2"), "{e}");
    }
}
