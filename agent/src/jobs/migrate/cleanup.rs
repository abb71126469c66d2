//! `osmctl cleanup`: remove what osm created for a failed or cancelled migration, and
//! only what its lineage made (the job and the earlier jobs it continues: same host,
//! same origin job, same VM): the snapshots marked as the lineage's, its server (if one
//! was made), ports, a created flavor, and its volumes (detached first), found by what
//! the job recorded and by the lineage's tags. Refused while a later job continues the
//! lineage; a resource a running job or a succeeded migration's server holds is left.
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use osm_api::{CleanupReport, JobState};

use super::body::{prepare, Ctx};
use super::identity::Identity;
use super::state::State;
use super::MigrateJob;
use crate::blockdev;
use crate::cloud::vsphere::{self, snapshot::vm_ref};
use crate::error::Error;
use crate::jobs::engine::Engine;

fn state_of(engine: &Engine, id: u64) -> Result<State, Error> {
    Ok(engine
        .store()
        .checkpoint(id)?
        .and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default())
}

pub async fn run(engine: &Engine, id: u64, job: &MigrateJob) -> Result<CleanupReport, Error> {
    let state = state_of(engine, id)?;
    let Some(vm) = state.vm.clone() else {
        return Ok(CleanupReport {
            job: id,
            vm: job.vm.clone(),
            removed: vec![],
            failed: vec![],
        });
    };
    let me = Identity::of(&state, id);
    let mut others = Vec::new();
    for j in engine
        .list()
        .into_iter()
        .filter(|j| j.id != id && j.migration.is_some())
    {
        let s = state_of(engine, j.id)?;
        others.push((j.id, j.state, s));
    }
    if let Some(why) = continued_by(&me, id, &others) {
        return Err(Error::InvalidState(why));
    }
    let held = held(&others);
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
    remove_all(&ctx, &state, &me, &held, &mut r).await;
    let _ = std::fs::remove_dir_all(&work_dir);
    if r.failed.is_empty() {
        // A later migration of the VM starts afresh (nothing of this lineage is left).
        let _ = ctx.update(|s| s.cleaned_up = true);
    }
    for line in &r.removed {
        tracing::info!(job_id = id, "cleanup: removed {line}");
    }
    for line in &r.failed {
        tracing::error!(job_id = id, "cleanup: {line}");
    }
    Ok(r)
}

/// Same lineage: same host and origin job, same VM (by uuid, or moref for old records).
fn same_lineage(a: &Identity, b: &Identity) -> bool {
    let same = |x: &str, y: &str| x.is_empty() || y.is_empty() || x == y;
    a.host == b.host
        && a.origin == b.origin
        && same(&a.vcenter, &b.vcenter)
        && if a.vm_uuid.is_empty() || b.vm_uuid.is_empty() {
            a.moref == b.moref
        } else {
            a.vm_uuid == b.vm_uuid
        }
}

/// Why cleanup of job `id` is refused: a later job continues its lineage (its volumes,
/// ports and server are that job's now).
fn continued_by(me: &Identity, id: u64, others: &[(u64, JobState, State)]) -> Option<String> {
    let (j, st, s) = others
        .iter()
        .filter(|(j, _, s)| *j > id && same_lineage(me, &Identity::of(s, *j)))
        .max_by_key(|(j, _, _)| *j)?;
    Some(match st {
        JobState::Succeeded => format!(
            "job {j} continued job {id}'s migration and succeeded: what it made belongs to server {} now; nothing was removed",
            s.server_id
        ),
        s if !s.is_terminal() => format!(
            "job {j} continues job {id}'s migration and is {s}: it holds the volumes; nothing was removed. `osmctl cancel {j}`, then `osmctl cleanup {j}`"
        ),
        _ => format!(
            "job {j} continues job {id}'s migration: `osmctl cleanup {j}` removes what they made; nothing was removed"
        ),
    })
}

/// What running jobs and succeeded migrations hold: object id → the holder, said.
fn held(others: &[(u64, JobState, State)]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for (j, st, s) in others {
        let who = match st {
            JobState::Succeeded => format!("server {} of job {j}, which succeeded", s.server_id),
            st if !st.is_terminal() => format!("job {j} ({st})"),
            _ => continue,
        };
        let flavor = s.flavor_created.then(|| s.flavor_id.clone());
        let ids = s
            .disks
            .iter()
            .map(|d| d.volume_id.clone())
            .chain(s.port_ids.iter().cloned());
        for x in ids.chain([s.server_id.clone()]).chain(flavor).filter(|x| !x.is_empty()) {
            m.insert(x, who.clone());
        }
    }
    m
}

async fn remove_all(ctx: &Ctx, state: &State, me: &Identity, held: &HashMap<String, String>, r: &mut CleanupReport) {
    let moref = me.moref.as_str();
    if !me.host.is_empty() {
        let lineage = me.lineage();
        match vsphere::with_client(&ctx.vc, async |c: &vsphere::Client| {
            c.remove_lineage_snapshots(&vm_ref(moref), &lineage).await
        })
        .await
        {
            Ok((names, unmarked)) => {
                r.removed.extend(names.into_iter().map(|n| format!("snapshot {n}")));
                r.failed.extend(unmarked.into_iter().map(|n| {
                    format!("snapshot {n} of {moref} was taken by an older osm-agent (it names no migration): left; remove it in vCenter once no older agent migrates this VM")
                }));
            }
            Err(e) => r.failed.push(format!("snapshots of {moref}: {e}")),
        }
    }
    let os = ctx.os.as_ref();
    let held_by = |x: &str, what: &str, r: &mut CleanupReport| match held.get(x) {
        Some(who) => {
            r.failed.push(format!("{what} {x} is held by {who}: left"));
            true
        }
        None => false,
    };
    let timeout = ctx.engine.settings().openstack.server_timeout;
    if !state.server_id.is_empty() && !held_by(&state.server_id, "server", r) {
        match os.delete_server(&state.server_id, timeout).await {
            Ok(()) => r.removed.push(format!("server {}", state.server_id)),
            Err(e) if e.is_not_found() => {}
            Err(e) => r.failed.push(format!("server {}: {e}", state.server_id)),
        }
    }
    let mut ports = Vec::new();
    if me.complete() {
        let tags = me.lineage_port_tags().join(",");
        match os.list_ports(&format!("tags={tags}")).await {
            Ok(p) => ports.extend(p),
            Err(e) => r.failed.push(format!("listing the ports tagged {tags}: {e}")),
        }
    }
    let unlisted: Vec<&String> = state
        .port_ids
        .iter()
        .filter(|id| !ports.iter().any(|p| &p.id == *id))
        .collect();
    for id in unlisted {
        match os.list_ports(&format!("id={id}")).await {
            Ok(p) => ports.extend(p),
            Err(e) => r.failed.push(format!("port {id}: {e}")),
        }
    }
    for p in ports {
        if held_by(&p.id, "port", r) {
            continue;
        }
        if !p.device_id.is_empty() && p.device_id != state.server_id {
            r.failed.push(format!(
                "port {} is used by server {}: left; delete it once that server no longer needs it",
                p.id, p.device_id
            ));
            continue;
        }
        match os.delete_port(&p.id).await {
            Ok(()) => r
                .removed
                .push(format!("port {} ({}, MAC {})", p.id, p.name, p.mac_address)),
            Err(e) => r.failed.push(format!("port {}: {e}", p.id)),
        }
    }
    if state.flavor_created && !state.flavor_id.is_empty() && !held_by(&state.flavor_id, "flavor", r) {
        match os.delete_flavor(&state.flavor_id).await {
            Ok(()) => r.removed.push(format!("flavor {}", state.flavor_id)),
            Err(e) => r.failed.push(format!("flavor {}: {e}", state.flavor_id)),
        }
    }
    let mut volumes: BTreeSet<String> = state.disks.iter().map(|d| d.volume_id.clone()).collect();
    if me.complete() {
        match os.find_volumes(&me.lineage_filter()).await {
            Ok(v) => volumes.extend(v.into_iter().map(|v| v.id)),
            Err(e) => r
                .failed
                .push(format!("listing the volumes of job {}'s migration: {e}", me.origin)),
        }
    }
    for id in volumes.iter().filter(|v| !v.is_empty()) {
        if held_by(id, "volume", r) {
            continue;
        }
        let v = match os.get_volume(id).await {
            Ok(v) => v,
            Err(e) if e.is_not_found() => continue,
            Err(e) => {
                r.failed.push(format!("volume {id}: {e}"));
                continue;
            }
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::migrate::state::DiskState;
    use osm_api::vsphere::VmInfo;

    fn st(origin: u64, uuid: &str, volume: &str) -> State {
        State {
            origin_job: origin,
            vcenter_id: "vc".into(),
            host_server_id: "host".into(),
            vm: Some(VmInfo {
                moref: "vm-42".into(),
                instance_uuid: uuid.into(),
                ..Default::default()
            }),
            disks: vec![DiskState {
                volume_id: volume.into(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_later_job_of_the_lineage_refuses_the_cleanup_naming_it() {
        let old = st(3, "u", "v3");
        let me = Identity::of(&old, 3);
        let others = vec![(5, JobState::Running, st(3, "u", "v3"))];
        let why = continued_by(&me, 3, &others).unwrap();
        assert!(why.contains("job 5") && why.contains("osmctl cancel 5"), "{why}");
        // A fresh job of the same VM (its own origin), or another VM: not the lineage.
        let others = vec![
            (5, JobState::Running, st(5, "u", "v5")),
            (6, JobState::Running, st(3, "other", "v6")),
        ];
        assert_eq!(continued_by(&me, 3, &others), None);
        // What they hold is left.
        let h = held(&others);
        assert!(h["v5"].contains("job 5") && h.contains_key("v6"));
        let done = vec![(7, JobState::Failed, st(7, "u", "v7"))];
        assert!(held(&done).is_empty());
    }
}
