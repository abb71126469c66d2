//! Conversion: virt-v2v-in-place over ALL the VM's disks in one run (the root may be on
//! any disk); the root disk and firmware come from its inspection, not from "disk 0".
//! Then, converted or not, the boot disk: the one holding the boot loader ([`bootdisk`]).
use std::path::PathBuf;

use super::body::{fail, Ctx};
use super::state::{Conversion, Phase, State};
use crate::bootdisk;
use crate::exec::virt_v2v::{self, Firmware};
use crate::jobs::copy_job::JobError;

pub async fn run(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Convert;
    let st = ctx.snapshot_state();
    if st.conversion.is_some() {
        return Ok(());
    }
    if st.converting {
        // An earlier conversion started on these volumes and did not finish (failed, or
        // the agent died): never convert on top of it. Copy the disks whole again.
        tracing::warn!(
            "an earlier conversion of these volumes did not finish: copying every disk whole again before converting"
        );
        ctx.update(super::source_power::rewind_to_cutover)?;
        return Err(JobError::Rewound);
    }
    let vm = st.vm.clone().ok_or_else(|| fail(p, "no VM recorded"))?;
    let firmware = if vm.firmware == "efi" { "uefi" } else { "bios" };
    super::disks::ensure_attached(ctx, p).await?;
    let conversion = if ctx.job.plan.skip_conversion {
        tracing::info!(
            "skip_conversion: the guest is not converted; its root is taken to be on disk 0, {firmware} firmware"
        );
        Conversion {
            root_disk: 0,
            boot_disk: None,
            firmware: firmware.into(),
            os_type: if vm.guest_id.starts_with("win") {
                "windows".into()
            } else {
                "linux".into()
            },
            os_distro: String::new(),
            skipped: true,
        }
    } else {
        ctx.update(|s| s.converting = true)?;
        convert(ctx).await?
    };
    let conversion = with_boot_disk(ctx, conversion).await?;
    ctx.update(|s| {
        s.conversion = Some(conversion);
        s.converting = false;
    })
}

/// The conversion with its boot disk: the volume holding the boot loader for its
/// firmware (read-only), preferring the root disk; the root disk when none has one.
async fn with_boot_disk(ctx: &Ctx, mut c: Conversion) -> Result<Conversion, JobError> {
    let p = Phase::Convert;
    let disks = attached_devices(&ctx.snapshot_state())?;
    let firmware = if c.firmware == "uefi" {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let root = c.root_disk;
    let span = tracing::Span::current();
    let choice = tokio::task::spawn_blocking(move || {
        let _e = span.enter();
        bootdisk::choose(&disks, firmware, root)
    })
    .await
    .map_err(|e| fail(p, format!("boot disk thread: {e}")))?;
    let fw = firmware.as_str();
    match &choice.loader {
        Some(what) if choice.disk == root => tracing::info!("boot disk: disk {root}, the root disk ({what})"),
        Some(what) => tracing::info!("boot disk: disk {} ({what}); the root is on disk {root}", choice.disk),
        None => tracing::warn!(
            "no disk holds a {fw} boot loader osm recognizes: disk {root}, the root disk, gets boot index 0"
        ),
    }
    if choice.candidates.len() > 1 {
        tracing::info!("{fw} boot loaders on disks {:?}", choice.candidates);
    }
    c.boot_disk = Some(choice.disk);
    Ok(c)
}

/// The attached devices, in the VM's disk order.
fn attached_devices(st: &State) -> Result<Vec<PathBuf>, JobError> {
    st.disks
        .iter()
        .map(|d| d.device.as_ref().map(PathBuf::from))
        .collect::<Option<_>>()
        .ok_or_else(|| fail(Phase::Convert, "a volume is not attached"))
}

/// virt-v2v-in-place on the attached volumes, in the VM's disk order.
async fn convert(ctx: &Ctx) -> Result<Conversion, JobError> {
    let p = Phase::Convert;
    let st = ctx.snapshot_state();
    let vm = st.vm.clone().ok_or_else(|| fail(p, "no VM recorded"))?;
    let disks = attached_devices(&st)?;
    let settings = &ctx.engine.settings().conversion;
    let firmware = if vm.firmware == "efi" {
        Firmware::Uefi
    } else {
        Firmware::Bios
    };
    let log = ctx
        .engine
        .settings()
        .log_dir
        .join(format!("job-{}-virt-v2v.log", ctx.id));
    let spec = settings.spec(&vm.name, vm.memory_mib, vm.cpus, firmware, disks, log.clone());
    let program = PathBuf::from(&settings.program);
    let (engine, id, stop) = (ctx.engine.clone(), ctx.id, ctx.stop.clone());
    let span = tracing::Span::current();
    tracing::info!(
        "converting '{}' in place ({} disk(s)); its output goes to {}",
        vm.name,
        spec.disks.len(),
        log.display()
    );
    let result = tokio::task::spawn_blocking(move || {
        let _e = span.enter();
        let mut progress = |line: &str| {
            tracing::info!("virt-v2v: {line}");
            engine.set_step(id, &format!("conversion: {line}"));
        };
        virt_v2v::run(&program, &spec, &stop, &mut progress)
    })
    .await
    .map_err(|e| fail(p, format!("conversion thread: {e}")))?;
    let c = match result {
        Ok(c) => c,
        Err(virt_v2v::ConvertError::Stopped { .. }) => return Err(JobError::Stopped),
        Err(e) => return Err(fail(p, e)),
    };
    tracing::info!(
        "converted: {} {} ({}), root on disk {} ({}), {} firmware",
        c.os_distro,
        c.product_name,
        c.osinfo,
        c.root_disk,
        c.root_device,
        c.firmware
    );
    Ok(Conversion {
        root_disk: c.root_disk,
        boot_disk: None,
        firmware: c.firmware,
        os_type: c.os_type,
        os_distro: c.os_distro,
        skipped: false,
    })
}
