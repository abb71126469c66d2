//! Everything the destination must offer, checked before the first volume (and so before
//! the source is shut down): flavor, networks, fixed IPs, security groups, volume types,
//! availability zone and quotas. Each failure names what is missing and what to do.
use osm_api::vsphere::VmInfo;

use super::body::Ctx;
use super::boot::{network_of, subnet_for};
use crate::cloud::openstack::prereqs::free;
use crate::plan::FlavorChoice;

/// All problems found (empty: the destination can take the VM).
pub async fn destination_problems(ctx: &Ctx, vm: &VmInfo) -> Result<Vec<String>, String> {
    let mut bad = Vec::new();
    flavor(ctx, vm, &mut bad).await?;
    networks(ctx, vm, &mut bad).await?;
    for g in &ctx.job.plan.security_groups {
        if let Err(e) = ctx.os.find_security_group(g).await {
            bad.push(format!(
                "security group '{g}': {e}; create it or fix security_groups in the plan"
            ));
        }
    }
    volumes(ctx, vm, &mut bad).await?;
    compute_quota(ctx, vm, &mut bad).await?;
    Ok(bad)
}

async fn flavor(ctx: &Ctx, vm: &VmInfo, bad: &mut Vec<String>) -> Result<(), String> {
    let FlavorChoice::Id(id) = &ctx.job.plan.flavor else {
        return Ok(()); // chosen or created at the network step
    };
    match ctx.os.get_flavor(id).await {
        Err(e) if e.is_not_found() => bad.push(format!(
            "there is no flavor '{id}' in the destination; pick one from `openstack flavor list` or leave flavor unset to let osm choose"
        )),
        Err(e) => return Err(format!("flavor {id}: {e}")),
        Ok(f) if f.vcpus < vm.cpus || f.ram < vm.memory_mib => bad.push(format!(
            "flavor '{}' ({} vCPU, {} MiB) is smaller than the VM ({} vCPU, {} MiB); pick a larger flavor",
            f.name, f.vcpus, f.ram, vm.cpus, vm.memory_mib
        )),
        Ok(_) => {}
    }
    Ok(())
}

async fn networks(ctx: &Ctx, vm: &VmInfo, bad: &mut Vec<String>) -> Result<(), String> {
    let fixed = ctx.job.plan.network.fixed_ips;
    for nic in &vm.nics {
        let Some(name) = network_of(ctx, nic) else {
            continue; // check_network_map names it
        };
        let net = match ctx.os.find_network(name).await {
            Ok(n) => n,
            Err(e) => {
                bad.push(format!(
                    "network '{name}' of NIC {}: {e}; fix [network] map / default_network",
                    nic.label
                ));
                continue;
            }
        };
        if !fixed {
            continue;
        }
        for ip in nic.ipv4.iter().chain(nic.ipv6.iter()) {
            if subnet_for(ctx, &net.subnets, ip).await.is_none() {
                bad.push(format!(
                    "the address {ip} of NIC {} is inside no subnet of network '{name}'; add such a subnet, map the NIC to another network, or set fixed_ips = false",
                    nic.label
                ));
                continue;
            }
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("network_id", &net.id)
                .append_pair("fixed_ips", &format!("ip_address={ip}"))
                .finish();
            let taken = ctx.os.list_ports(&query).await.map_err(|e| e.to_string())?;
            let own = format!("osm-vm-{}", vm.moref);
            if let Some(p) = taken.iter().find(|p| !p.tags.contains(&own)) {
                bad.push(format!(
                    "the address {ip} of NIC {} is already on port {} of network '{name}'; free it (`openstack port delete {}` once unused) or set fixed_ips = false",
                    nic.label, p.id, p.id
                ));
            }
        }
    }
    if ctx.job.plan.network.create_ports {
        if let Some(n) = ctx.os.ports_free().await.map_err(|e| e.to_string())? {
            if n < vm.nics.len() as i64 {
                bad.push(format!(
                    "the project may create {n} more port(s) but the VM needs {}; raise the port quota",
                    vm.nics.len()
                ));
            }
        }
    }
    Ok(())
}

async fn volumes(ctx: &Ctx, vm: &VmInfo, bad: &mut Vec<String>) -> Result<(), String> {
    let plan = &ctx.job.plan;
    let mut wanted: Vec<&String> = vm
        .disks
        .iter()
        .filter_map(|d| plan.volume_type_mapping.get(&d.datastore).or(plan.volume_type.as_ref()))
        .collect();
    wanted.sort();
    wanted.dedup();
    if !wanted.is_empty() {
        let types = ctx.os.volume_types().await.map_err(|e| e.to_string())?;
        for t in wanted {
            if !types.iter().any(|(name, id)| name == t || id == t) {
                bad.push(format!(
                    "there is no volume type '{t}' (have: {}); fix volume_type / volume_type_mapping",
                    types.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    if let Some(az) = &plan.availability_zone {
        let zones = ctx.os.volume_zones().await.map_err(|e| e.to_string())?;
        if !zones.contains(az) {
            bad.push(format!(
                "availability zone '{az}' has no volume service that is up (have: {}); fix availability_zone",
                zones.join(", ")
            ));
        }
    }
    let sizes: Vec<u64> = vm.disks.iter().map(|d| d.capacity_bytes).collect();
    if let Err(e) = ctx.os.check_volume_quota(&sizes).await {
        bad.push(e.to_string());
    }
    Ok(())
}

async fn compute_quota(ctx: &Ctx, vm: &VmInfo, bad: &mut Vec<String>) -> Result<(), String> {
    let l = ctx.os.compute_limits().await.map_err(|e| e.to_string())?;
    let asks = [
        ("instances", free(l.max_total_instances, l.total_instances_used), 1),
        ("cores", free(l.max_total_cores, l.total_cores_used), i64::from(vm.cpus)),
        (
            "RAM (MiB)",
            free(l.max_total_ram_size, l.total_ram_used),
            vm.memory_mib as i64,
        ),
    ];
    for (what, left, need) in asks {
        if left.is_some_and(|left| left < need) {
            bad.push(format!(
                "the project's compute quota has {} {what} left and the VM needs {need}; raise the quota or free some",
                left.unwrap_or_default()
            ));
        }
    }
    Ok(())
}
