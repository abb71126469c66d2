//! The checks of a migration, at every (re)start: the VM resolved (once, then by its
//! instanceUuid) and held by this job alone, the destination's prerequisites (before the
//! source is touched), vCenter's checks, CBT for a warm migration, the network map and
//! the source MACs; the osm snapshots this lineage's interrupted run left are removed.
use std::time::{Duration, Instant};

use osm_api::vsphere::CheckStatus;

use super::body::{fail, Ctx};
use super::state::Phase;
use crate::cloud::openstack;
use crate::cloud::vsphere::{self, snapshot::vm_ref};
use crate::jobs::copy_job::JobError;
use crate::plan::Mode;

/// Discovery and checks (again on every start: the VM may have changed), quotas, and the
/// removal of the osm snapshots this lineage's interrupted run left. The VM is resolved
/// once (by name, within the plan's datacenter and folder; an ambiguous name is refused)
/// and found again by its instanceUuid at every later start; one job at a time holds it.
pub(super) async fn checks(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Checks;
    ctx.stopped()?;
    ctx.engine.set_step(ctx.id, p.as_str());
    let t = Instant::now();
    let warm = ctx.job.plan.mode == Mode::Warm;
    let phase_before = ctx.phase();
    let known = ctx.snapshot_state().vm.clone();
    if phase_before <= Phase::Volumes && ctx.snapshot_state().disks.is_empty() {
        destination_ready(ctx, known.as_ref()).await?;
    }
    // The host is part of the lineage that marks this job's snapshots.
    let host = host_server_id(ctx).await.map_err(|e| fail(p, e))?;
    let lineage = {
        let mut s = ctx.snapshot_state();
        s.host_server_id = host.clone();
        super::identity::Identity::of(&s, ctx.id).lineage()
    };
    let found = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
        let find = async || find_vm(ctx, c, known.as_ref()).await;
        let mut vm = find().await?;
        let vcenter = c.vcenter_id();
        if let Err(holder) = super::identity::claim(&vcenter, &vm.instance_uuid, &vm.moref, ctx.id) {
            return Ok(Err(format!(
                "VM '{}' ({}, instanceUuid {}) is already being migrated by job {holder}; nothing was touched. `osmctl watch {holder}` follows it",
                vm.inventory_path, vm.moref, vm.instance_uuid
            )));
        }
        let r = vm_ref(&vm.moref);
        let (removed, unmarked) = c.remove_lineage_snapshots(&r, &lineage).await?;
        if !removed.is_empty() {
            tracing::info!("removed {} osm snapshot(s) left by an interrupted run", removed.len());
        }
        if !unmarked.is_empty() {
            tracing::warn!(
                "VM '{}' has osm snapshot(s) an older osm-agent took ({}); left alone: remove them once no older agent migrates this VM",
                vm.name,
                unmarked.join(", ")
            );
        }
        // A warm migration needs CBT: turn it on (a snapshot cycle makes it effective).
        let untracked = |vm: &osm_api::vsphere::VmInfo| {
            !vm.cbt_enabled
                || vm
                    .disks
                    .iter()
                    .any(|d| !d.independent && !d.rdm && d.change_id.is_none())
        };
        if warm && phase_before < Phase::Cutover && untracked(&vm) {
            if !vm.cbt_enabled {
                c.set_change_tracking(&r, true).await?;
            }
            let s = c.create_lineage_snapshot(&r, "cbt-enable", false, &lineage).await?;
            c.remove_snapshot(&s.snapshot).await?;
            tracing::info!("changed block tracking turned on for '{}' (warm migration)", vm.name);
            vm = find_vm(ctx, c, Some(&vm)).await?;
        }
        let report = vsphere::check::check_vm(c, &vm, Duration::from_secs(5)).await?;
        Ok(Ok((vm, report, c.thumbprint_sha1().unwrap_or_default(), vcenter)))
    })
    .await
    .map_err(|e| fail(p, e))?;
    let (vm, report, thumbprint, vcenter) = found.map_err(|e| fail(p, e))?;
    let before = ctx.phase();
    let blocking: Vec<String> = report
        .items
        .iter()
        .filter(|i| i.status == CheckStatus::Blocking && blocks(&i.check, before, ctx))
        .map(|i| format!("{} ({}): {}", i.check, i.detail, i.fix))
        .collect();
    if !blocking.is_empty() {
        return Err(fail(
            p,
            format!("VM '{}' cannot be migrated: {}", vm.name, blocking.join("; ")),
        ));
    }
    for i in report.items.iter().filter(|i| i.status == CheckStatus::Warn) {
        tracing::warn!("check {}: {} {}", i.check, i.detail, i.fix);
    }
    if ctx.source.transport == crate::plan::Transport::Https && vm.snapshots.list.iter().any(|s| !s.osm) {
        return Err(fail(
            p,
            format!(
                "VM '{}' has snapshots of its own; the https transport reads the base disk and would miss their data. Remove them (or consolidate), or use transport = \"vddk\"",
                vm.name
            ),
        ));
    }
    super::boot::check_network_map(ctx, &vm).map_err(|e| fail(p, e))?;
    if before < Phase::Boot {
        // From the boot on, the ports belong to this job's server (recorded or not yet).
        let own_server = ctx.snapshot_state().server_id;
        super::boot::check_macs_free(ctx, &vm, &own_server)
            .await
            .map_err(|e| fail(p, e))?;
    }

    tracing::info!(
        "VM '{}' ({}, {}, instanceUuid {}): {} disk(s), {} NIC(s), {} vCPU, {} MiB; conversion host {host}",
        vm.name,
        vm.inventory_path,
        vm.moref,
        vm.instance_uuid,
        vm.disks.len(),
        vm.nics.len(),
        vm.cpus,
        vm.memory_mib
    );
    let secs = t.elapsed().as_secs_f64();
    ctx.update(|s| {
        s.vm = Some(vm);
        s.vcenter_id = vcenter;
        s.host_server_id = host;
        s.thumbprint = thumbprint;
        s.add_timing("checks", secs);
        if s.phase == Phase::Checks {
            s.phase = Phase::Volumes;
        }
    })?;
    Ok(())
}

/// The job's VM: the one recorded (by its instanceUuid), else the plan's name within
/// its datacenter and folder.
async fn find_vm(
    ctx: &Ctx,
    c: &vsphere::Client,
    known: Option<&osm_api::vsphere::VmInfo>,
) -> Result<osm_api::vsphere::VmInfo, vsphere::Error> {
    let src = &ctx.job.plan.source;
    let scope = vsphere::inventory::Scope {
        datacenter: src.datacenter.as_deref(),
        folder: src.folder.as_deref(),
    };
    vsphere::inventory::resolve(vsphere::inventory::discover(c).await?, &ctx.job.vm, &scope, known)
}

/// Before the first volume and before the source is touched (CBT, snapshots): everything
/// the destination must offer.
async fn destination_ready(ctx: &Ctx, known: Option<&osm_api::vsphere::VmInfo>) -> Result<(), JobError> {
    let p = Phase::Checks;
    let vm = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| find_vm(ctx, c, known).await)
        .await
        .map_err(|e| fail(p, e))?;
    super::boot::check_network_map(ctx, &vm).map_err(|e| fail(p, e))?;
    let problems = super::preflight::destination_problems(ctx, &vm)
        .await
        .map_err(|e| fail(p, format!("checking the destination: {e}")))?;
    if problems.is_empty() {
        return Ok(());
    }
    Err(fail(
        p,
        format!(
            "the destination cannot take VM '{}' (nothing was created, the source is untouched): {}",
            vm.name,
            problems.join("; ")
        ),
    ))
}

/// Whether a blocking check matters for this migration at this point of the journey
/// (after the cutover the source is off on purpose; a cold migration needs no CBT; only
/// VDDK reads through the ESXi hosts' port 902).
fn blocks(check: &str, phase: Phase, ctx: &Ctx) -> bool {
    let vddk = ctx.source.transport == crate::plan::Transport::Vddk && ctx.source.local_disk_path.is_none();
    match check {
        "power" | "tools" => phase < Phase::Cutover,
        "cbt" => ctx.job.plan.mode == Mode::Warm && phase < Phase::Cutover,
        c if c.starts_with("esxi-") => vddk,
        _ => true,
    }
}

async fn host_server_id(ctx: &Ctx) -> Result<String, String> {
    if let Some(id) = &ctx.job.plan.instance_uuid {
        return Ok(id.clone());
    }
    let inputs = ctx.engine.settings().openstack.discovery();
    openstack::discovery::identify(&inputs)
        .await
        .map(|h| h.instance_id)
        .map_err(|e| format!("cannot tell which Nova server this conversion host is: {e}; set instance_uuid in the plan or [openstack] instance_id"))
}
