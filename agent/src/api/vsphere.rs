//! vSphere operations for both API adapters: settings from the engine, caller checks,
//! then the vsphere module. No logic beyond that.
use osm_api::vsphere::{CheckReport, VmInfo};

use crate::cloud::vsphere;
use crate::error::Error;
use crate::jobs::{Caller, Engine};

fn endpoint(engine: &Engine) -> Result<vsphere::Endpoint, Error> {
    engine
        .settings()
        .vsphere
        .clone()
        .ok_or(Error::Vsphere(vsphere::Error::NotConfigured))
}

pub async fn discover(engine: &Engine, vms: Vec<String>, folder: Option<String>) -> Result<Vec<VmInfo>, Error> {
    let ep = endpoint(engine)?;
    Ok(vsphere::discover(&ep, &vms, folder.as_deref()).await?)
}

pub async fn check(
    engine: &Engine,
    caller: &Caller,
    vms: Vec<String>,
    enable_cbt: bool,
) -> Result<Vec<CheckReport>, Error> {
    if enable_cbt {
        engine.authorize(caller)?;
    }
    let ep = endpoint(engine)?;
    Ok(vsphere::check(&ep, &vms, enable_cbt).await?)
}
