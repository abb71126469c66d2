//! `osmctl cleanup`: remove what osm created for a failed or cancelled migration, found
//! by its tags (not only by what the job recorded): osm snapshots on the source, the
//! server (if one was made), ports, a created flavor, and the volumes (detached first).
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use osm_api::CleanupReport;

use super::body::{prepare, Ctx};
use super::disks::{tags, TAG_MANAGED};
use super::state::State;
use super::MigrateJob;
use crate::blockdev;
use crate::cloud::vsphere::{self, snapshot::vm_ref};
use crate::error::Error;
use crate::jobs::engine::Engine;

pub async fn run(engine: &Engine, id: u64, job: &MigrateJob) -> Result<CleanupReport, Error> {
    let state: State = engine
        .store()
        .checkpoint(id)?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default();
    let Some(vm) = state.vm.clone() else {
        return Ok(CleanupReport {
            job: id,
            vm: job.vm.clone(),
            removed: vec![],
            failed: vec![],
        });
    };
    let work_dir = engine.settings().runtime_dir.join("jobs").join(format!("{id}-cleanup"));
    std::fs::create_dir_all(&work_dir).map_err(|e| Error::InvalidState(format!("{}: {e}", work_dir.display())))?;
    let ctx = prepare(
        engine,
        id,
        job.clone(),
        state.clone(),
        Arc::new(AtomicBool::new(false)),
        Default::default(),
        Default::default(),
        work_dir.clone(),
    )
    .await
    .map_err(|e| Error::InvalidArgument(e.to_string()));
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&work_dir);
            return Err(e);
        }
    };
    let mut r = CleanupReport {
        job: id,
        vm: vm.name.clone(),
        ..Default::default()
    };
    remove_all(&ctx, &state, &vm.moref, &mut r).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    for line in &r.removed {
        tracing::info!(job_id = id, "cleanup: removed {line}");
    }
    for line in &r.failed {
        tracing::error!(job_id = id, "cleanup: {line}");
    }
    Ok(r)
}

async fn remove_all(ctx: &Ctx, state: &State, moref: &str, r: &mut CleanupReport) {
    match vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
        c.remove_osm_snapshots(&vm_ref(moref)).await
    })
    .await
    {
        Ok(names) => r.removed.extend(names.into_iter().map(|n| format!("snapshot {n}"))),
        Err(e) => r.failed.push(format!("snapshots of {moref}: {e}")),
    }
    let os = ctx.os.as_ref();
    let timeout = ctx.engine.settings().openstack.server_timeout;
    if !state.server_id.is_empty() {
        match os.delete_server(&state.server_id, timeout).await {
            Ok(()) => r.removed.push(format!("server {}", state.server_id)),
            Err(e) if e.is_not_found() => {}
            Err(e) => r.failed.push(format!("server {}: {e}", state.server_id)),
        }
    }
    match os.list_ports(&format!("tags=osm-vm-{moref}")).await {
        Ok(ports) => {
            for p in ports {
                match os.delete_port(&p.id).await {
                    Ok(()) => r
                        .removed
                        .push(format!("port {} ({}, MAC {})", p.id, p.name, p.mac_address)),
                    Err(e) => r.failed.push(format!("port {}: {e}", p.id)),
                }
            }
        }
        Err(e) => r.failed.push(format!("listing ports tagged osm-vm-{moref}: {e}")),
    }
    if state.flavor_created && !state.flavor_id.is_empty() {
        match os.delete_flavor(&state.flavor_id).await {
            Ok(()) => r.removed.push(format!("flavor {}", state.flavor_id)),
            Err(e) => r.failed.push(format!("flavor {}: {e}", state.flavor_id)),
        }
    }
    let mut filter = tags(moref);
    filter.retain(|k, _| k == TAG_MANAGED || k == super::disks::TAG_VM);
    match os.find_volumes(&filter).await {
        Ok(volumes) => {
            for v in volumes {
                let here = v
                    .attachments
                    .iter()
                    .any(|a| a.server_id.as_deref() == Some(state.host_server_id.as_str()));
                if here {
                    if let Err(e) = blockdev::detach(os, &ctx.block, &state.host_server_id, &v.id).await {
                        r.failed.push(format!("volume {}: detaching from this host: {e}", v.id));
                        continue;
                    }
                } else if !v.attachments.is_empty() {
                    r.failed.push(format!(
                        "volume {} is attached to another server; detach it there and run cleanup again",
                        v.id
                    ));
                    continue;
                }
                match os.delete_volume_wait(&v.id, Duration::from_secs(600)).await {
                    Ok(()) => r
                        .removed
                        .push(format!("volume {} ({})", v.id, v.name.unwrap_or_default())),
                    Err(e) => r.failed.push(format!("volume {}: {e}", v.id)),
                }
            }
        }
        Err(e) => r.failed.push(format!("listing volumes of {moref}: {e}")),
    }
}
