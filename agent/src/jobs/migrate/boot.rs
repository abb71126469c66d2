//! The destination side after the copy: ports with the source MACs on the mapped
//! networks, a flavor, the boot volume's properties, and the Nova server.
use osm_api::vsphere::{NicInfo, VmInfo};

use super::body::{fail, Ctx};
use super::identity::Identity;
use super::state::Phase;
use crate::cloud::openstack::{BootVolume, FixedIp, Flavor, FlavorSpec, ImageProperties, PortSpec, ServerSpec};
use crate::jobs::copy_job::JobError;
use crate::plan::FlavorChoice;

/// The Neutron network (name or id) of a NIC: its port group by name, then by key, then
/// the default network.
pub(super) fn network_of<'a>(ctx: &'a Ctx, nic: &NicInfo) -> Option<&'a String> {
    let n = &ctx.job.plan.network;
    n.map
        .get(&nic.network_name)
        .or_else(|| n.map.get(&nic.network_key))
        .or(n.default_network.as_ref())
}

/// Every NIC needs a network: refuse before any copy, naming the unmapped port groups.
pub fn check_network_map(ctx: &Ctx, vm: &VmInfo) -> Result<(), String> {
    let missing: Vec<String> = vm
        .nics
        .iter()
        .filter(|n| network_of(ctx, n).is_none())
        .map(|n| format!("'{}' ({})", n.network_name, n.network_key))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "no destination network for port group(s) {}: add them to [network] map (network_map in vars.yaml) or set default_network (openstack_private_network)",
        missing.join(", ")
    ))
}

/// A source MAC on a port that another server uses (the VM migrated before, a manual
/// attempt) would fail the boot after the whole copy and conversion: refuse at the checks.
/// Ports without a server (this job's, or a failed one's) are reused later and pass.
pub async fn check_macs_free(ctx: &Ctx, vm: &VmInfo, own_server: &str) -> Result<(), String> {
    if !ctx.job.plan.network.create_ports {
        return Ok(()); // Neutron picks the MACs
    }
    for nic in &vm.nics {
        let Some(name) = network_of(ctx, nic) else {
            continue; // check_network_map names it
        };
        let net = ctx.os.find_network(name).await.map_err(|e| e.to_string())?;
        let mac = nic.mac.to_ascii_lowercase();
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("network_id", &net.id)
            .append_pair("mac_address", &mac)
            .finish();
        let ports = ctx.os.list_ports(&query).await.map_err(|e| e.to_string())?;
        if let Some(port) = ports
            .iter()
            .find(|p| !p.device_id.is_empty() && p.device_id != own_server)
        {
            return Err(format!(
                "the MAC {mac} of '{}' is already on port {} of network {name}, used by server {}: \
                 the VM was migrated before, or someone made that port. Delete the port \
                 (`openstack port delete {}`) once that server no longer needs it, or set \
                 create_ports = false to let Neutron pick new MACs",
                nic.label, port.id, port.device_id, port.id
            ));
        }
    }
    Ok(())
}

/// Ports (one per NIC, with its MAC) and the flavor.
pub async fn network_and_flavor(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Network;
    let st = ctx.snapshot_state();
    let vm = st.vm.clone().ok_or_else(|| fail(p, "no VM recorded"))?;
    let plan = &ctx.job.plan;
    let mut groups = Vec::new();
    for g in &plan.security_groups {
        groups.push(ctx.os.find_security_group(g).await.map_err(|e| fail(p, e))?);
    }
    // One port per NIC on its mapped network, with the source MAC; without `create_ports`
    // (vars.yaml `os_migrate_create_network_port: false`) Neutron picks the MAC. Either
    // way the server gets its NICs, on osm's tagged ports (found again after a crash,
    // removed by cleanup).
    let mut ports = Vec::new();
    for (i, nic) in vm.nics.iter().enumerate() {
        ctx.stopped()?;
        let name = network_of(ctx, nic).ok_or_else(|| fail(p, check_network_map(ctx, &vm).unwrap_err()))?;
        let net = ctx.os.find_network(name).await.map_err(|e| fail(p, e))?;
        let mut fixed_ips = Vec::new();
        if plan.network.fixed_ips {
            for ip in nic.ipv4.iter().chain(nic.ipv6.iter()) {
                match subnet_for(ctx, &net.subnets, ip).await {
                    Some(subnet_id) => fixed_ips.push(FixedIp {
                        subnet_id,
                        ip_address: Some(ip.clone()),
                    }),
                    None => tracing::warn!(
                        "NIC {} keeps no fixed IP {ip}: no subnet of network {name} contains it",
                        nic.label
                    ),
                }
            }
        }
        let spec = PortSpec {
            network_id: net.id.clone(),
            name: format!("osm-{}-nic{i}", vm.name).chars().take(255).collect(),
            mac_address: plan.network.create_ports.then(|| nic.mac.clone()),
            fixed_ips,
            security_group_ids: groups.clone(),
            tags: Identity::of(&st, ctx.id).port_tags(),
            description: Some(format!("{} of VMware VM {}, created by osm", nic.label, vm.name)),
        };
        let port = ctx.os.ensure_port(&spec).await.map_err(|e| fail(p, e))?;
        tracing::info!("port {} on {name} with MAC {}", port.id, port.mac_address);
        ports.push(port.id);
        ctx.update(|s| s.port_ids = ports.clone())?;
    }
    let (flavor, created) = choose_flavor(ctx, &vm).await.map_err(|e| fail(p, e))?;
    tracing::info!(
        "flavor {} ({}, {} vCPU, {} MiB){}",
        flavor.name,
        flavor.id,
        flavor.vcpus,
        flavor.ram,
        if created { ", created" } else { "" }
    );
    ctx.update(|s| {
        s.flavor_id = flavor.id.clone();
        s.flavor_created = created;
    })
}

pub(super) async fn subnet_for(ctx: &Ctx, subnets: &[String], ip: &str) -> Option<String> {
    let addr: std::net::IpAddr = ip.parse().ok()?;
    for id in subnets {
        if let Ok(s) = ctx.os.find_subnet(id, None).await {
            if cidr_contains(&s.cidr, addr) {
                return Some(s.id);
            }
        }
    }
    None
}

fn cidr_contains(cidr: &str, ip: std::net::IpAddr) -> bool {
    let Some((net, len)) = cidr.split_once('/') else {
        return false;
    };
    let (Ok(net), Ok(len)) = (net.parse::<std::net::IpAddr>(), len.parse::<u32>()) else {
        return false;
    };
    match (net, ip) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) if len <= 128 => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// A given flavor; else the smallest existing one with at least the VM's vCPUs and RAM
/// (disk ignored: boot from volume); else a new `osm-vmware-<vm>-<id>`.
async fn choose_flavor(ctx: &Ctx, vm: &VmInfo) -> Result<(Flavor, bool), String> {
    let st = ctx.snapshot_state();
    if !st.flavor_id.is_empty() {
        if let Ok(f) = ctx.os.get_flavor(&st.flavor_id).await {
            return Ok((f, st.flavor_created));
        }
    }
    let create = match &ctx.job.plan.flavor {
        FlavorChoice::Id(id) => {
            return ctx
                .os
                .get_flavor(id)
                .await
                .map(|f| (f, false))
                .map_err(|e| format!("flavor {id}: {e}"))
        }
        FlavorChoice::Create => true,
        FlavorChoice::Closest => false,
    };
    if !create {
        let mut fit: Vec<Flavor> = ctx
            .os
            .list_flavors()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter(|f| f.vcpus >= vm.cpus && f.ram >= vm.memory_mib)
            .collect();
        fit.sort_by_key(|f| (f.vcpus, f.ram, f.disk, f.name.clone()));
        if let Some(f) = fit.into_iter().next() {
            return Ok((f, false));
        }
    }
    let name: String = format!("osm-vmware-{}-{}", vm.name, vm.moref)
        .chars()
        .take(255)
        .collect();
    let f = ctx
        .os
        .create_flavor(&FlavorSpec {
            name,
            vcpus: vm.cpus.max(1),
            ram_mib: vm.memory_mib.max(128),
            disk_gb: 0,
            is_public: false,
            extra_specs: Default::default(),
        })
        .await
        .map_err(|e| format!("creating a flavor for {} vCPU / {} MiB: {e}", vm.cpus, vm.memory_mib))?;
    Ok((f, true))
}

/// Boot volume properties, then the server from all volumes, waited to ACTIVE.
pub async fn boot(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Boot;
    let st = ctx.snapshot_state();
    let vm = st.vm.clone().ok_or_else(|| fail(p, "no VM recorded"))?;
    let conv = st.conversion.clone().unwrap_or_default();
    // Boot index 0: the disk with the boot loader, which need not be the root disk.
    let root = conv
        .boot_disk
        .unwrap_or(conv.root_disk)
        .min(st.disks.len().saturating_sub(1));
    let boot_volume = &st
        .disks
        .get(root)
        .ok_or_else(|| fail(p, "the VM has no disk"))?
        .volume_id;
    let props = ImageProperties {
        hw_firmware_type: Some(if conv.firmware.is_empty() {
            "bios".into()
        } else {
            conv.firmware.clone()
        }),
        hw_machine_type: Some(if conv.firmware == "uefi" {
            "q35".into()
        } else {
            "pc".into()
        }),
        os_type: Some(if conv.os_type.is_empty() {
            "linux".into()
        } else {
            conv.os_type.clone()
        }),
        hw_disk_bus: Some("virtio".into()),
        hw_vif_model: Some("virtio".into()),
        os_secure_boot: vm.secure_boot.then(|| "required".to_string()),
    };
    ctx.os.set_bootable(boot_volume, true).await.map_err(|e| fail(p, e))?;
    ctx.os
        .set_volume_image_metadata(boot_volume, &props)
        .await
        .map_err(|e| fail(p, e))?;
    let mut volumes = vec![BootVolume {
        volume_id: boot_volume.clone(),
        boot_index: Some(0),
    }];
    let others = st.disks.iter().enumerate().filter(|(i, _)| *i != root).map(|(_, d)| d);
    for (next, d) in (1..).zip(others) {
        volumes.push(BootVolume {
            volume_id: d.volume_id.clone(),
            boot_index: Some(next),
        });
    }
    let identity = Identity::of(&st, ctx.id);
    let mut metadata = identity.tags();
    metadata.insert("osm_source_vm".into(), vm.name.chars().take(255).collect());
    let spec = ServerSpec {
        name: vm.name.clone(),
        flavor_id: st.flavor_id.clone(),
        volumes,
        port_ids: st.port_ids.clone(),
        // The ports carry the security groups.
        security_groups: vec![],
        availability_zone: ctx.job.plan.availability_zone.clone(),
        key_name: ctx.job.plan.ssh_key_name.clone(),
        user_data: None,
        metadata,
        idempotency_key: Some(identity.server_key()),
    };
    let timeout = ctx.engine.settings().openstack.server_timeout;
    let record = |id: &str| ctx.update(|s| s.server_id = id.to_string()).map_err(|e| e.to_string());
    let server = ctx
        .os
        .boot_server(&spec, timeout, &record)
        .await
        .map_err(|e| fail(p, e))?;
    tracing::info!("server {} ({}) is {}", server.name, server.id, server.status);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cidr_contains;

    #[test]
    fn cidrs_contain_their_addresses() {
        assert!(cidr_contains("10.77.0.0/24", "10.77.0.9".parse().unwrap()));
        assert!(!cidr_contains("10.77.0.0/24", "10.78.0.9".parse().unwrap()));
        assert!(cidr_contains("fd00:77::/64", "fd00:77::5".parse().unwrap()));
        assert!(!cidr_contains("fd00:77::/64", "10.77.0.9".parse().unwrap()));
    }
}
