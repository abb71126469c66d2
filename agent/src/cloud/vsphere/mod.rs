//! vSphere: a vim25 SOAP client (reqwest + quick-xml serde), discovery, pre-migration
//! checks, and the snapshot/CBT primitives the migration engine uses.
//!
//! - `client`: session (login, re-login on NotAuthenticated, logout), PropertyCollector
//!   reads over a ContainerView, tasks awaited with backoff.
//! - `tls`: CA bundle, system roots, or a SHA-1/SHA-256 pin; the presented certificate's
//!   SHA-1 thumbprint for nbdkit's vddk plugin.
//! - `soap` and `types`: envelopes and the vim25 types osm uses.
//! - `inventory`, `check`, `snapshot`: what the agent offers on top.
pub mod check;
pub mod client;
pub mod error;
pub mod inventory;
pub mod snapshot;
pub mod soap;
#[cfg(test)]
mod tests;
pub mod tls;
pub mod types;

use std::time::{Duration, Instant};

use osm_api::vsphere::{CheckReport, VmInfo};

pub use client::{Client, Endpoint};
pub use error::{Error, Fault};
pub use snapshot::{ChangedAreas, SyncSnapshot};
pub use tls::Trust;

/// Log in, run `f`, log out (also when `f` failed).
pub async fn with_client<T, F>(ep: &Endpoint, f: F) -> Result<T, Error>
where
    F: AsyncFnOnce(&Client) -> Result<T, Error>,
{
    let c = Client::connect(ep.clone()).await?;
    let r = f(&c).await;
    c.logout().await;
    r
}

/// `osmctl discover`: the VMs named (all when none) under `folder`.
pub async fn discover(ep: &Endpoint, vms: &[String], folder: Option<&str>) -> Result<Vec<VmInfo>, Error> {
    with_client(ep, async |c: &Client| {
        let t = Instant::now();
        let before = c.round_trips();
        let inv = inventory::discover(c).await?;
        let n = inv.vms.len();
        tracing::info!(
            "discovery: {n} VMs in {} round trips, {:.2} s",
            c.round_trips() - before,
            t.elapsed().as_secs_f64()
        );
        inventory::select(inv, vms, folder)
    })
    .await
}

/// `osmctl check`: the checks of each VM; with `enable_cbt`, CBT is first turned on where
/// it is off (ReconfigVM, then a snapshot create/remove cycle so that it takes effect).
pub async fn check(ep: &Endpoint, vms: &[String], enable_cbt: bool) -> Result<Vec<CheckReport>, Error> {
    if vms.is_empty() {
        return Err(Error::Config("name at least one VM to check".into()));
    }
    with_client(ep, async |c: &Client| {
        let mut found = inventory::select(inventory::discover(c).await?, vms, None)?;
        if enable_cbt {
            let mut changed = false;
            for vm in &found {
                let needs = !vm.cbt_enabled
                    || vm
                        .disks
                        .iter()
                        .any(|d| !d.independent && !d.rdm && d.change_id.is_none());
                if !needs {
                    continue;
                }
                let r = snapshot::vm_ref(&vm.moref);
                if !vm.cbt_enabled {
                    c.set_change_tracking(&r, true).await?;
                }
                let s = c.create_sync_snapshot(&r, "cbt-enable", false).await?;
                c.remove_snapshot(&s.snapshot).await?;
                tracing::info!(vm = %vm.name, "CBT enabled and activated by a snapshot cycle");
                changed = true;
            }
            if changed {
                found = inventory::select(inventory::discover(c).await?, vms, None)?;
            }
        }
        let mut out = Vec::new();
        for vm in &found {
            out.push(check::check_vm(c, vm, Duration::from_secs(3)).await?);
        }
        Ok(out)
    })
    .await
}
