//! `osmctl cleanup`: remove what osm created for a VM, found by tags.
use osm_api::CleanupReport;

use super::MigrateJob;
use crate::error::Error;
use crate::jobs::engine::Engine;

pub async fn run(_engine: &Engine, id: u64, job: &MigrateJob) -> Result<CleanupReport, Error> {
    Ok(CleanupReport {
        job: id,
        vm: job.vm.clone(),
        ..Default::default()
    })
}
