//! Snapshot and CBT primitives for the migration engine: ONE snapshot for all disks with
//! the changeIds read from that snapshot, its removal, clean-up of osm snapshots left by
//! a crash, changed areas paged to the end of the disk, CBT on, guest shutdown.
use std::time::{Duration, Instant};

use osm_api::vsphere::SnapshotEntry;
use osm_api::Extent;

use super::client::Client;
use super::error::{Error, Result};
use super::inventory::{disks, snapshot_summary};
use super::soap::{self, Call};
use super::types::*;

/// Every osm snapshot's name starts with this…
pub const SNAPSHOT_PREFIX: &str = "osm-";
/// …and its description carries this marker.
pub const SNAPSHOT_MARKER: &str = "[osm-managed]";

pub fn is_osm_snapshot(name: &str, description: &str) -> bool {
    name.starts_with(SNAPSHOT_PREFIX) && description.contains(SNAPSHOT_MARKER)
}

/// The mark of the migration lineage that took a snapshot, in its description (an
/// osm snapshot without one was taken before osm marked them).
pub fn lineage_marker(lineage: &str) -> String {
    format!("[osm-lineage {lineage}]")
}

/// The osm snapshots of `list` that `lineage` took, and those no lineage marks.
pub fn of_lineage<'a>(list: &'a [SnapshotEntry], lineage: &str) -> (Vec<&'a SnapshotEntry>, Vec<&'a SnapshotEntry>) {
    let mark = lineage_marker(lineage);
    let osm = list.iter().filter(|s| s.osm);
    let own = osm.clone().filter(|s| s.description.contains(&mark)).collect();
    let unmarked = osm.filter(|s| !s.description.contains("[osm-lineage ")).collect();
    (own, unmarked)
}

/// How long a snapshot task may take.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(3600);

/// One disk as the snapshot froze it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDisk {
    pub key: i32,
    pub datastore_path: String,
    pub capacity_bytes: u64,
    /// None when CBT was off for this disk when the snapshot was taken.
    pub change_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSnapshot {
    pub snapshot: MoRef,
    pub name: String,
    pub disks: Vec<SnapshotDisk>,
}

/// What to copy for one disk in a delta round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangedAreas {
    /// Exactly these areas changed (sorted, merged).
    Extents(Vec<Extent>),
    /// The host refused the previous changeId (CBT was reset, the disk was replaced…):
    /// copy the whole disk. Not an error for the VM.
    FullCopy { reason: String },
}

pub fn vm_ref(moref: &str) -> MoRef {
    MoRef::new("VirtualMachine", moref)
}

impl Client {
    async fn task(&self, call: &Call<'_>, what: &str, timeout: Duration) -> Result<Option<MoRef>> {
        let xml = self.call(call).await?;
        let task: MoRef = soap::decode_one(call.name(), &xml)?;
        self.wait_task(&task, what, timeout).await
    }

    /// One snapshot of all disks (memory off), named `osm-<label>` with the marker in its
    /// description; the changeIds are read from the snapshot's own configuration.
    pub async fn create_sync_snapshot(&self, vm: &MoRef, label: &str, quiesce: bool) -> Result<SyncSnapshot> {
        self.create_lineage_snapshot(vm, label, quiesce, "").await
    }

    /// [`Self::create_sync_snapshot`], marked as `lineage`'s (see [`lineage_marker`]).
    pub async fn create_lineage_snapshot(
        &self,
        vm: &MoRef,
        label: &str,
        quiesce: bool,
        lineage: &str,
    ) -> Result<SyncSnapshot> {
        let name = format!("{SNAPSHOT_PREFIX}{label}");
        let mut description =
            format!("{SNAPSHOT_MARKER} taken by osm-agent for a migration sync; osm removes it when the sync ends");
        if !lineage.is_empty() {
            description = format!("{description} {}", lineage_marker(lineage));
        }
        let snapshot = self.create_snapshot(vm, &name, &description, quiesce).await?;
        let oc = self.properties(&snapshot, &["config.hardware.device"]).await?;
        let devices: ArrayOfDevice = oc.get("config.hardware.device")?.unwrap_or_default();
        let disks = disks(&devices.devices, true)
            .into_iter()
            .map(|d| SnapshotDisk {
                key: d.key,
                datastore_path: d.datastore_path,
                capacity_bytes: d.capacity_bytes,
                change_id: d.change_id,
            })
            .collect();
        Ok(SyncSnapshot { snapshot, name, disks })
    }

    /// A snapshot of all disks (memory off) with this name and description.
    pub async fn create_snapshot(&self, vm: &MoRef, name: &str, description: &str, quiesce: bool) -> Result<MoRef> {
        let snapshot = self
            .task(
                &Call::CreateSnapshotTask(CreateSnapshot {
                    this: vm,
                    name,
                    description,
                    memory: false,
                    quiesce,
                }),
                &format!("snapshot {name} of {}", vm.value),
                TASK_TIMEOUT,
            )
            .await?
            .ok_or_else(|| Error::protocol("CreateSnapshot_Task", "the task returned no snapshot"))?;
        Ok(MoRef::new("VirtualMachineSnapshot", &snapshot.value))
    }

    /// Remove one snapshot, consolidating its delta into the base.
    pub async fn remove_snapshot(&self, snapshot: &MoRef) -> Result<()> {
        self.task(
            &Call::RemoveSnapshotTask(RemoveSnapshot {
                this: snapshot,
                remove_children: false,
                consolidate: true,
            }),
            &format!("removing snapshot {}", snapshot.value),
            TASK_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Remove every osm snapshot of the VM (left by a crash); their names.
    pub async fn remove_osm_snapshots(&self, vm: &MoRef) -> Result<Vec<String>> {
        let oc = self.properties(vm, &["snapshot"]).await?;
        let info: SnapshotInfo = oc.get("snapshot")?.unwrap_or_default();
        let mut removed = Vec::new();
        for s in snapshot_summary(&info).list.into_iter().filter(|s| s.osm) {
            self.remove_snapshot(&MoRef::new("VirtualMachineSnapshot", &s.moref))
                .await?;
            tracing::info!(vm = %vm.value, "removed osm snapshot '{}' left by an interrupted run", s.name);
            removed.push(s.name);
        }
        Ok(removed)
    }

    /// Remove the VM's osm snapshots that `lineage` took (another agent's or job's are
    /// left alone); their names, and the names of unmarked osm snapshots (left as well:
    /// an older osm-agent took them, and it may still be syncing).
    pub async fn remove_lineage_snapshots(&self, vm: &MoRef, lineage: &str) -> Result<(Vec<String>, Vec<String>)> {
        let oc = self.properties(vm, &["snapshot"]).await?;
        let info: SnapshotInfo = oc.get("snapshot")?.unwrap_or_default();
        let list = snapshot_summary(&info).list;
        let (own, unmarked) = of_lineage(&list, lineage);
        let mut removed = Vec::new();
        for s in own {
            self.remove_snapshot(&MoRef::new("VirtualMachineSnapshot", &s.moref))
                .await?;
            tracing::info!(vm = %vm.value, "removed osm snapshot '{}' of this migration", s.name);
            removed.push(s.name.clone());
        }
        Ok((removed, unmarked.into_iter().map(|s| s.name.clone()).collect()))
    }

    /// Areas of disk `key` changed between `change_id` and `snapshot`: QueryChangedDiskAreas
    /// from offset 0 until the reply's window reaches `capacity` (empty windows included).
    pub async fn changed_areas(
        &self,
        vm: &MoRef,
        snapshot: &MoRef,
        key: i32,
        capacity: u64,
        change_id: &str,
    ) -> Result<ChangedAreas> {
        let mut start = 0u64;
        let mut areas = Vec::new();
        while start < capacity {
            let r = self
                .call(&Call::QueryChangedDiskAreas(QueryChangedDiskAreas {
                    this: vm,
                    snapshot: Some(snapshot),
                    device_key: key,
                    start_offset: start,
                    change_id,
                }))
                .await;
            let xml = match r {
                Ok(x) => x,
                Err(Error::Fault(f)) if rejects_change_id(&f.kind) => {
                    return Ok(ChangedAreas::FullCopy {
                        reason: format!("vCenter refused changeId {change_id} of disk {key}: {}", f.message),
                    })
                }
                // Any other fault of the query: the disk is copied whole (correct, slower).
                Err(Error::Fault(f)) => {
                    return Ok(ChangedAreas::FullCopy {
                        reason: format!("QueryChangedDiskAreas of disk {key} failed ({}: {})", f.kind, f.message),
                    })
                }
                Err(e) => return Err(e),
            };
            let info: DiskChangeInfo = soap::decode_one("QueryChangedDiskAreas", &xml)?;
            areas.extend(info.changed_area.iter().filter(|a| a.length > 0).map(|a| Extent {
                offset: a.start,
                length: a.length,
            }));
            let next = info.start_offset.saturating_add(info.length);
            if next <= start {
                return Err(Error::protocol(
                    "QueryChangedDiskAreas",
                    format!("the window at offset {start} did not advance (length {})", info.length),
                ));
            }
            start = next;
        }
        Ok(ChangedAreas::Extents(clamp(merge(areas), capacity, key)))
    }

    /// The names of the VM's snapshots that osm did not take (backup software, people).
    pub async fn foreign_snapshots(&self, vm: &MoRef) -> Result<Vec<String>> {
        let oc = self.properties(vm, &["snapshot"]).await?;
        let info: SnapshotInfo = oc.get("snapshot")?.unwrap_or_default();
        Ok(snapshot_summary(&info)
            .list
            .into_iter()
            .filter(|s| !s.osm)
            .map(|s| s.name)
            .collect())
    }

    /// Turn CBT on or off (ReconfigVM_Task).
    pub async fn set_change_tracking(&self, vm: &MoRef, enabled: bool) -> Result<()> {
        self.task(
            &Call::ReconfigVmTask(ReconfigVm {
                this: vm,
                spec: ConfigSpec {
                    change_tracking_enabled: enabled,
                },
            }),
            &format!("setting changeTrackingEnabled={enabled} on {}", vm.value),
            TASK_TIMEOUT,
        )
        .await
        .map(drop)
    }

    pub async fn power_state(&self, vm: &MoRef) -> Result<String> {
        Ok(self
            .properties(vm, &["runtime.powerState"])
            .await?
            .text("runtime.powerState"))
    }

    /// Poll until the VM's power state is `state`.
    pub async fn wait_power_state(&self, vm: &MoRef, state: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(200);
        loop {
            if self.power_state(vm).await? == state {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("VM {} to be {state}", vm.value),
                    after: timeout,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Shut the guest down (VMware Tools), and power it off if it is still on after
    /// `timeout`. Returns how it went down.
    pub async fn shutdown(&self, vm: &MoRef, timeout: Duration) -> Result<Shutdown> {
        if self.power_state(vm).await? == "poweredOff" {
            return Ok(Shutdown::AlreadyOff);
        }
        match self.call(&Call::ShutdownGuest(This { this: vm })).await {
            Ok(_) => match self.wait_power_state(vm, "poweredOff", timeout).await {
                Ok(()) => return Ok(Shutdown::Guest),
                Err(Error::Timeout { .. }) => {
                    tracing::warn!(vm = %vm.value, "guest did not shut down within {timeout:?}; powering off")
                }
                Err(e) => return Err(e),
            },
            Err(e @ (Error::InvalidState(_) | Error::Fault(_))) => {
                tracing::warn!(vm = %vm.value, "guest shutdown refused ({e}); powering off")
            }
            Err(e) => return Err(e),
        }
        self.task(
            &Call::PowerOffVmTask(This { this: vm }),
            &format!("powering off {}", vm.value),
            Duration::from_secs(600),
        )
        .await?;
        Ok(Shutdown::PoweredOff)
    }
}

impl Client {
    /// Power the VM on (to roll a source back into service by hand, and in tests).
    pub async fn power_on(&self, vm: &MoRef) -> Result<()> {
        if self.power_state(vm).await? == "poweredOn" {
            return Ok(());
        }
        self.task(
            &Call::PowerOnVmTask(This { this: vm }),
            &format!("powering on {}", vm.value),
            Duration::from_secs(600),
        )
        .await
        .map(drop)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    AlreadyOff,
    Guest,
    PoweredOff,
}

/// Faults with which a host rejects a changeId it cannot answer for.
fn rejects_change_id(kind: &str) -> bool {
    matches!(
        kind,
        "FileFault" | "InvalidArgument" | "FileNotFound" | "GenericVmConfigFault"
    )
}

/// Sort and merge overlapping or adjacent extents.
/// Changed areas end at the disk's capacity (hosts report areas rounded up past it).
pub fn clamp(v: Vec<Extent>, capacity: u64, key: i32) -> Vec<Extent> {
    let mut cut = false;
    let out = v
        .into_iter()
        .filter_map(|e| {
            if e.offset + e.length <= capacity {
                return Some(e);
            }
            cut = true;
            (e.offset < capacity).then(|| Extent {
                offset: e.offset,
                length: capacity - e.offset,
            })
        })
        .collect();
    if cut {
        tracing::warn!("disk {key}: changed areas past its capacity ({capacity} bytes) were cut at its end");
    }
    out
}

pub fn merge(mut v: Vec<Extent>) -> Vec<Extent> {
    v.sort_by_key(|e| e.offset);
    let mut out: Vec<Extent> = Vec::with_capacity(v.len());
    for e in v {
        match out.last_mut() {
            Some(l) if e.offset <= l.offset + l.length => {
                let end = (l.offset + l.length).max(e.offset + e.length);
                l.length = end - l.offset;
            }
            _ => out.push(e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_areas_past_the_capacity_are_cut_at_its_end() {
        let e = |offset, length| Extent { offset, length };
        assert_eq!(
            clamp(vec![e(0, 10), e(90, 20), e(120, 5)], 100, 2000),
            vec![e(0, 10), e(90, 10)]
        );
        assert_eq!(clamp(vec![e(0, 100)], 100, 2000), vec![e(0, 100)]);
    }

    #[test]
    fn extents_merge_when_adjacent_or_overlapping() {
        let e = |offset, length| Extent { offset, length };
        assert_eq!(
            merge(vec![e(100, 10), e(0, 10), e(10, 5), e(105, 20), e(200, 1)]),
            vec![e(0, 15), e(100, 25), e(200, 1)]
        );
        assert!(merge(vec![]).is_empty());
    }

    #[test]
    fn only_the_lineages_own_snapshots_are_its_own() {
        let e = |n: &str, d: &str| SnapshotEntry {
            moref: n.into(),
            name: n.into(),
            description: d.into(),
            osm: is_osm_snapshot(n, d),
        };
        let mine = lineage_marker("host-a/7");
        let list = vec![
            e("osm-sync-j7-1", &format!("[osm-managed] x {mine}")),
            e("osm-sync-j7-2", "[osm-managed] x [osm-lineage host-b/7]"),
            e("osm-sync-j7-3", "[osm-managed] x [osm-lineage host-a/70]"),
            e("osm-old", "[osm-managed] x"),
            e("backup", &mine),
        ];
        let (own, unmarked) = of_lineage(&list, "host-a/7");
        assert_eq!(
            own.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["osm-sync-j7-1"]
        );
        assert_eq!(
            unmarked.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["osm-old"]
        );
    }

    #[test]
    fn osm_snapshots_need_prefix_and_marker() {
        assert!(is_osm_snapshot("osm-sync-1", "[osm-managed] x"));
        assert!(!is_osm_snapshot("osm-sync-1", "by someone"));
        assert!(!is_osm_snapshot("backup", "[osm-managed]"));
    }
}
