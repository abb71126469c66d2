//! Pre-migration checks of one VM: each ok / warn / blocking with the fix to apply.
use std::time::Duration;

use osm_api::vsphere::{CheckItem, CheckReport, CheckStatus, VmInfo};

use super::client::Client;
use super::error::Result;
use super::soap::{self, Call};
use super::types::*;

/// Snapshot chains longer than this block: vSphere allows 32 levels and osm adds one.
pub const MAX_SNAPSHOT_DEPTH: u32 = 29;
pub const WARN_SNAPSHOT_DEPTH: u32 = 16;

/// Privileges osm's user needs on the VM (and Datastore.Browse on its datastores).
pub const VM_PRIVILEGES: &[&str] = &[
    "VirtualMachine.Provisioning.DiskRandomAccess",
    "VirtualMachine.Provisioning.DiskRandomRead",
    "VirtualMachine.Provisioning.GetVmFiles",
    "VirtualMachine.State.CreateSnapshot",
    "VirtualMachine.State.RemoveSnapshot",
    "VirtualMachine.Config.ChangeTracking",
    "VirtualMachine.Interact.PowerOff",
    "VirtualMachine.GuestOperations.Query",
];

fn item(check: &str, status: CheckStatus, detail: String, fix: &str) -> CheckItem {
    CheckItem {
        check: check.into(),
        status,
        detail,
        fix: fix.into(),
    }
}

/// TCP connect with a timeout; the error text when it fails.
pub async fn tcp_reachable(host: &str, port: u16, timeout: Duration) -> std::result::Result<(), String> {
    let addrs: Vec<_> = match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
        Ok(Ok(a)) => a.collect(),
        Ok(Err(e)) => return Err(format!("cannot resolve {host}: {e}")),
        Err(_) => return Err(format!("resolving {host} timed out")),
    };
    let Some(addr) = addrs.first() else {
        return Err(format!("{host} resolves to no address"));
    };
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{addr}: {e}")),
        Err(_) => Err(format!("{addr}: no answer within {timeout:?}")),
    }
}

/// Run the checks of one VM (`vm` as discovery read it).
pub async fn check_vm(c: &Client, vm: &VmInfo, timeout: Duration) -> Result<CheckReport> {
    use CheckStatus::{Blocking, Warn};
    let mut items = Vec::new();

    let url = &c.endpoint().url;
    let vc_host = url.host_str().unwrap_or_default().to_string();
    let vc_port = url.port_or_known_default().unwrap_or(443);
    items.push(match tcp_reachable(&vc_host, vc_port, timeout).await {
        Ok(()) => item(
            "vcenter-443",
            CheckStatus::Ok,
            format!("vCenter {vc_host}:{vc_port} is reachable"),
            "",
        ),
        Err(e) => item(
            "vcenter-443",
            Blocking,
            format!("vCenter {vc_host}:{vc_port} is not reachable: {e}"),
            "open TCP port 443 from this host to vCenter",
        ),
    });

    let h = &vm.host;
    if h.address.is_empty() {
        items.push(item(
            "esxi-902",
            Blocking,
            "vCenter reports no ESXi host for this VM".into(),
            "check the VM's host connection in vCenter",
        ));
    } else {
        items.push(match tcp_reachable(&h.address, 902, timeout).await {
            Ok(()) => item(
                "esxi-902",
                CheckStatus::Ok,
                format!("ESXi {} ({}) port 902 is reachable", h.name, h.address),
                "",
            ),
            Err(e) => item(
                "esxi-902",
                Blocking,
                format!(
                    "ESXi {} ({}) port 902 (NFC, disk reads) is not reachable: {e}",
                    h.name, h.address
                ),
                "open TCP port 902 from this host to every ESXi host that runs VMs to migrate",
            ),
        });
        if h.name != h.address {
            let resolvable = tokio::time::timeout(timeout, tokio::net::lookup_host((h.name.as_str(), 902)))
                .await
                .is_ok_and(|r| r.is_ok_and(|mut a| a.next().is_some()));
            items.push(if resolvable {
                item(
                    "esxi-dns",
                    CheckStatus::Ok,
                    format!("ESXi host name {} resolves", h.name),
                    "",
                )
            } else {
                item(
                    "esxi-dns",
                    Warn,
                    format!("ESXi host name {} does not resolve on this host", h.name),
                    "add the ESXi host names to DNS or /etc/hosts; disk access may be redirected to the host by name",
                )
            });
        }
    }

    items.push(if vm.consolidation_needed {
        item(
            "consolidation",
            Blocking,
            "the VM's disks need consolidation (a snapshot removal left delta files)".into(),
            "vSphere Client: VM > Snapshots > Consolidate, then check again",
        )
    } else {
        item("consolidation", CheckStatus::Ok, "no consolidation needed".into(), "")
    });

    let depth = vm.snapshots.depth;
    items.push(if depth > MAX_SNAPSHOT_DEPTH {
        item(
            "snapshot-depth",
            Blocking,
            format!("snapshot chain is {depth} levels deep; vSphere allows 32 and osm adds one"),
            "delete or consolidate old snapshots (Snapshot Manager > Delete) to shorten the chain",
        )
    } else if depth >= WARN_SNAPSHOT_DEPTH {
        item(
            "snapshot-depth",
            Warn,
            format!("snapshot chain is {depth} levels deep; reads are slow and near the 32-level limit"),
            "delete old snapshots before migrating",
        )
    } else {
        item("snapshot-depth", CheckStatus::Ok, format!("snapshot depth {depth}"), "")
    });

    let foreign: Vec<&str> = vm
        .snapshots
        .list
        .iter()
        .filter(|s| !s.osm)
        .map(|s| s.name.as_str())
        .collect();
    let leftovers = vm.snapshots.list.iter().filter(|s| s.osm).count();
    items.push(if !foreign.is_empty() {
        let shown: Vec<&str> = foreign.iter().take(3).copied().collect();
        item(
            "foreign-snapshots",
            Warn,
            format!(
                "{} snapshot(s) not made by osm ({}{}); CBT after another tool's snapshot tree is risky",
                foreign.len(),
                shown.join(", "),
                if foreign.len() > 3 { ", …" } else { "" }
            ),
            "remove the snapshots if nothing needs them (backup tools re-create theirs)",
        )
    } else if leftovers > 0 {
        item(
            "foreign-snapshots",
            Warn,
            format!("{leftovers} osm snapshot(s) left by an interrupted run"),
            "osm removes them at the next sync",
        )
    } else {
        item("foreign-snapshots", CheckStatus::Ok, "no snapshots".into(), "")
    });

    let eligible: Vec<_> = vm.disks.iter().filter(|d| !d.independent && !d.rdm).collect();
    let untracked: Vec<String> = eligible
        .iter()
        .filter(|d| d.change_id.is_none())
        .map(|d| d.label.clone())
        .collect();
    items.push(if !vm.cbt_enabled {
        item(
            "cbt",
            Blocking,
            "Changed Block Tracking is off: a warm migration needs it (a cold one does not)".into(),
            "run `osmctl check --enable-cbt VM` (ReconfigVM plus a snapshot create/remove cycle)",
        )
    } else if !untracked.is_empty() {
        item(
            "cbt",
            Warn,
            format!(
                "CBT is on but disk(s) {} have no changeId yet (it takes effect at the next snapshot or power cycle)",
                untracked.join(", ")
            ),
            "run `osmctl check --enable-cbt VM` to cycle a snapshot",
        )
    } else {
        item(
            "cbt",
            CheckStatus::Ok,
            format!("CBT on for the VM and its {} disk(s)", eligible.len()),
            "",
        )
    });

    items.push(match (vm.power_state.as_str(), vm.tools_running_status.as_str()) {
        ("poweredOff", _) => item(
            "tools",
            CheckStatus::Ok,
            "VM is powered off; VMware Tools are not needed".into(),
            "",
        ),
        (_, "guestToolsRunning") => item(
            "tools",
            CheckStatus::Ok,
            format!("VMware Tools running (version {})", vm.tools_version),
            "",
        ),
        (_, status) => item(
            "tools",
            Blocking,
            format!(
                "VMware Tools are not running ({}, {}): warm migration and guest shutdown need them",
                if status.is_empty() { "status unknown" } else { status },
                if vm.tools_version_status.is_empty() {
                    "version unknown"
                } else {
                    &vm.tools_version_status
                }
            ),
            "install or start VMware Tools (open-vm-tools) in the guest",
        ),
    });

    for d in &vm.disks {
        if d.independent {
            items.push(item(
                "independent-disk",
                Blocking,
                format!(
                    "disk {} ({}) is {}: snapshots and CBT skip it",
                    d.label, d.datastore_path, d.disk_mode
                ),
                "power the VM off and change the disk mode to dependent (persistent)",
            ));
        }
        if d.rdm {
            items.push(item(
                "rdm-disk",
                Blocking,
                format!(
                    "disk {} is a raw device mapping ({}): its data is on a LUN, not in a VMDK",
                    d.label, d.rdm_mode
                ),
                "migrate the LUN separately, or convert the RDM to a VMDK (Storage vMotion in virtual mode)",
            ));
        }
    }

    items.push(privileges(c, vm).await);

    let status = items.iter().map(|i| i.status).max().unwrap_or(CheckStatus::Ok);
    Ok(CheckReport {
        vm: vm.name.clone(),
        moref: vm.moref.clone(),
        status,
        items,
    })
}

async fn privileges(c: &Client, vm: &VmInfo) -> CheckItem {
    let key = c.session_key().await;
    let am = c.sc.authorization_manager.clone();
    let mut missing = Vec::new();
    let mut targets: Vec<(MoRef, Vec<&str>)> = vec![(MoRef::new("VirtualMachine", &vm.moref), VM_PRIVILEGES.to_vec())];
    for d in &vm.disks {
        if !d.datastore_moref.is_empty() && !targets.iter().any(|(m, _)| m.value == d.datastore_moref) {
            targets.push((MoRef::new("Datastore", &d.datastore_moref), vec!["Datastore.Browse"]));
        }
    }
    for (entity, privs) in &targets {
        let r = c
            .call(&Call::HasPrivilegeOnEntity(HasPrivilegeOnEntity {
                this: &am,
                entity,
                session_id: &key,
                priv_id: privs.clone(),
            }))
            .await
            .and_then(|xml| soap::decode_all::<Text>("HasPrivilegeOnEntity", &xml));
        match r {
            Ok(v) => {
                for (p, granted) in privs.iter().zip(v.iter().map(|t| t.text.trim() == "true")) {
                    if !granted {
                        missing.push(format!("{p} on {}", entity.value));
                    }
                }
            }
            Err(e) => {
                return item(
                    "privileges",
                    CheckStatus::Warn,
                    format!("could not check privileges: {e}"),
                    "check the role of osm's user by hand (see the privileges in docs)",
                )
            }
        }
    }
    if missing.is_empty() {
        item(
            "privileges",
            CheckStatus::Ok,
            format!("user {} holds the privileges osm needs", c.endpoint().user),
            "",
        )
    } else {
        item(
            "privileges",
            CheckStatus::Blocking,
            format!("user {} lacks {}", c.endpoint().user, missing.join(", ")),
            "add these privileges to the user's role in vCenter (Administration > Roles)",
        )
    }
}
