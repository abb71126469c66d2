//! The source's power state, read from vCenter before every step that depends on it
//! (never taken from the job's record): a source that is running again after the cutover
//! sends a cold job back to the cutover (shut down again, final round again) and a warm
//! one back to its delta rounds (the cutover is due again as its plan says; an earlier
//! `osmctl cutover` request is forgotten); volumes that a conversion touched are copied
//! whole again. A failure before any server exists powers on a source osm powered off.
use super::body::{fail, Ctx};
use super::state::{Phase, State};
use crate::cloud::vsphere::{self, snapshot::vm_ref};
use crate::jobs::copy_job::JobError;

/// After this many returns to the cutover, the job fails instead of shutting down again.
const MAX_REWINDS: u32 = 3;

/// Whether vCenter says the source runs (anything but `poweredOff`: on or suspended).
pub async fn is_running(ctx: &Ctx, p: Phase) -> Result<bool, JobError> {
    let moref = ctx.moref();
    let state = vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
        c.power_state(&vm_ref(&moref)).await
    })
    .await
    .map_err(|e| fail(p, format!("reading the source VM's power state: {e}")))?;
    Ok(state != "poweredOff")
}

/// Before `phase` (conversion, detach, network, boot): the source must still be off.
/// When it runs again, the state goes back to the cutover and `JobError::Rewound` tells
/// the journey to walk on from there.
pub async fn ensure_still_off(ctx: &Ctx, phase: Phase) -> Result<(), JobError> {
    if ctx.phase() > phase || (phase == Phase::Boot && !ctx.snapshot_state().server_id.is_empty()) {
        return Ok(()); // done, or the server exists already: nothing of the source is read
    }
    if !is_running(ctx, phase).await? {
        return Ok(());
    }
    let rewinds = ctx.snapshot_state().rewinds;
    if rewinds >= MAX_REWINDS {
        return Err(fail(
            phase,
            format!(
                "the source VM was powered on again after the cutover {} times; nothing was booted. \
                 Leave it off during the cutover and run `osmctl migrate` again",
                rewinds + 1
            ),
        ));
    }
    let warm = ctx.job.plan.mode == crate::plan::Mode::Warm;
    tracing::warn!(
        "the source VM runs again (before the {}): {}{}",
        phase.as_str(),
        if warm {
            "back to the warm sync: delta rounds go on until the cutover is due again (a manual cutover waits for a new `osmctl cutover`)"
        } else {
            "shutting it down again and redoing the final round"
        },
        if touched_by_conversion(&ctx.snapshot_state()) {
            "; the conversion changed the volumes, so every disk is copied whole again"
        } else {
            ""
        }
    );
    ctx.update(|s| {
        rewind_to_cutover(s);
        if warm {
            s.phase = Phase::Warm;
            s.cutover = None;
        }
    })?;
    Err(JobError::Rewound)
}

/// Whether the volumes may hold a conversion's changes (finished or interrupted).
pub fn touched_by_conversion(s: &State) -> bool {
    s.converting || s.conversion.as_ref().is_some_and(|c| !c.skipped)
}

/// Back to the cutover: the source is shut down again and its final round redone. Volumes
/// a conversion touched no longer hold the source's blocks outside what CBT reports, so
/// their next round is a whole copy (zeros written too).
pub fn rewind_to_cutover(s: &mut State) {
    if touched_by_conversion(s) {
        mark_dirty(s);
    }
    s.conversion = None;
    s.phase = Phase::Cutover;
    s.rewinds += 1;
}

/// Every disk is copied whole again (its volume's data is not trusted).
pub fn mark_dirty(s: &mut State) {
    for d in &mut s.disks {
        d.synced = false;
        d.synced_change_id = None;
        d.round = None;
        d.fresh = false;
    }
    s.converting = false;
}

/// After a failure or cancel: power the source on again when osm powered it off and no
/// server of this migration can be running (none was asked for), unless the plan keeps
/// it off. Returns what to add to the job's error.
pub async fn restore_after_failure(ctx: &Ctx) -> Option<String> {
    let s = ctx.snapshot_state();
    if !s.powered_off || s.phase >= Phase::Boot || !s.server_id.is_empty() {
        return None;
    }
    if ctx.job.plan.keep_source_off_on_failure {
        return Some("the source VM stays powered off (keep_source_off_on_failure)".into());
    }
    let moref = ctx.moref();
    match vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| c.power_on(&vm_ref(&moref)).await).await {
        Ok(()) => {
            tracing::warn!("the source VM was powered on again: the migration failed before any server existed");
            let _ = ctx.update(|s| {
                s.powered_off = false;
                s.powered_on_again = true;
            });
            Some("the source VM was powered on again (osm had shut it down)".into())
        }
        Err(e) => {
            tracing::error!("powering the source VM on again: {e}");
            Some(format!(
                "the source VM is still off (osm shut it down) and powering it on failed: {e}; power it on in vCenter"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::migrate::state::{Conversion, DiskState};

    fn synced() -> DiskState {
        DiskState {
            synced: true,
            synced_change_id: Some("52 1/7".into()),
            fresh: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_rewind_before_any_conversion_keeps_the_copied_data() {
        let mut s = State {
            phase: Phase::Network,
            disks: vec![synced()],
            conversion: Some(Conversion {
                skipped: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        rewind_to_cutover(&mut s);
        assert_eq!(s.phase, Phase::Cutover);
        assert!(s.disks[0].synced && s.disks[0].synced_change_id.is_some());
        assert_eq!(s.rewinds, 1);
    }

    #[test]
    fn a_rewind_after_a_conversion_copies_every_disk_whole() {
        for (converting, conversion) in [
            (true, None),
            (false, Some(Conversion::default())), // finished, not skipped
        ] {
            let mut s = State {
                phase: Phase::Boot,
                disks: vec![synced(), synced()],
                converting,
                conversion,
                ..Default::default()
            };
            rewind_to_cutover(&mut s);
            assert_eq!(s.phase, Phase::Cutover);
            assert!(s.conversion.is_none() && !s.converting);
            for d in &s.disks {
                assert!(!d.synced && d.synced_change_id.is_none() && !d.fresh, "{d:?}");
            }
        }
    }
}
