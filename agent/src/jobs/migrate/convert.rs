//! Conversion: virt-v2v-in-place over ALL the VM's disks in one run (the root may be on
//! any disk); the boot disk and firmware come from its inspection, not from "disk 0".
use super::body::{fail, Ctx};
use super::state::{Conversion, Phase};
use crate::jobs::copy_job::JobError;

pub async fn run(ctx: &Ctx) -> Result<(), JobError> {
    let p = Phase::Convert;
    let st = ctx.snapshot_state();
    if st.conversion.is_some() {
        return Ok(());
    }
    let vm = st.vm.clone().ok_or_else(|| fail(p, "no VM recorded"))?;
    let firmware = if vm.firmware == "efi" { "uefi" } else { "bios" };
    let conversion = if ctx.job.plan.skip_conversion {
        tracing::info!("skip_conversion: the guest is not converted; it boots from disk 0 with {firmware} firmware");
        Conversion {
            root_disk: 0,
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
        super::disks::ensure_attached(ctx, p).await?;
        convert(ctx).await?
    };
    ctx.update(|s| s.conversion = Some(conversion))
}

async fn convert(_ctx: &Ctx) -> Result<Conversion, JobError> {
    Err(fail(Phase::Convert, "virt-v2v-in-place is not wired yet"))
}
