//! What tells one migration's objects from every other's. A moref (`vm-42`) repeats
//! across vCenters and a job id across agents, so the tags, idempotency keys and
//! snapshot marks carry the vCenter's instance UUID, the VM's instanceUuid, this
//! conversion host's Nova id and the lineage's origin job (the job that made the
//! volumes; the jobs that continue it keep it).
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::state::State;
use crate::cloud::openstack::Metadata;

/// Metadata keys of everything osm creates (cleanup finds objects by them).
pub const TAG_MANAGED: &str = "osm_managed";
pub const TAG_VM: &str = "osm_vm";
pub const TAG_VM_UUID: &str = "osm_vm_uuid";
pub const TAG_VCENTER: &str = "osm_vcenter";
pub const TAG_HOST: &str = "osm_host";
pub const TAG_JOB: &str = "osm_job";

/// Neutron allows 60 characters per tag.
const NEUTRON_TAG_MAX: usize = 60;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// vCenter's instance UUID (its address for a standalone ESXi host).
    pub vcenter: String,
    /// The VM's `config.instanceUuid`.
    pub vm_uuid: String,
    pub moref: String,
    /// This conversion host's Nova server id.
    pub host: String,
    /// The job that made the lineage's volumes.
    pub origin: u64,
}

impl Identity {
    /// The identity of job `id`'s migration as its state records it.
    pub fn of(s: &State, id: u64) -> Identity {
        let vm = s.vm.as_ref();
        Identity {
            vcenter: s.vcenter_id.clone(),
            vm_uuid: vm.map(|v| v.instance_uuid.clone()).unwrap_or_default(),
            moref: vm.map(|v| v.moref.clone()).unwrap_or_default(),
            host: s.host_server_id.clone(),
            origin: if s.origin_job == 0 { id } else { s.origin_job },
        }
    }

    /// Recorded by this version of osm (a job recorded before has only its moref).
    pub fn complete(&self) -> bool {
        !self.vcenter.is_empty() && !self.vm_uuid.is_empty() && !self.host.is_empty()
    }

    /// What marks this lineage's snapshots (the VM's own vCenter holds them).
    pub fn lineage(&self) -> String {
        format!("{}/{}", self.host, self.origin)
    }

    /// Metadata of the lineage's volumes and server.
    pub fn tags(&self) -> Metadata {
        let mut m = self.lineage_filter();
        m.insert(TAG_VM.into(), self.moref.clone());
        m
    }

    /// What every object of this lineage carries (and no other lineage's does).
    pub fn lineage_filter(&self) -> Metadata {
        [
            (TAG_MANAGED, "true".to_string()),
            (TAG_VCENTER, clip(&self.vcenter, 255)),
            (TAG_VM_UUID, clip(&self.vm_uuid, 255)),
            (TAG_HOST, clip(&self.host, 255)),
            (TAG_JOB, self.origin.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn key(&self, what: &str) -> String {
        let k = format!(
            "osm-{}-{}-{}-{}-{what}",
            clip(&self.vcenter, 64),
            clip(&self.vm_uuid, 64),
            clip(&self.host, 64),
            self.origin
        );
        clip(&k, 255)
    }

    /// The idempotency key of the volume of disk `disk_key`.
    pub fn volume_key(&self, disk_key: i32) -> String {
        self.key(&disk_key.to_string())
    }

    pub fn server_key(&self) -> String {
        self.key("server")
    }

    /// Neutron tags of the lineage's ports (`osm-vm-<moref>` kept for people and tools).
    pub fn port_tags(&self) -> Vec<String> {
        let mut t = vec![
            "osm".to_string(),
            clip(&format!("osm-vm-{}", self.moref), NEUTRON_TAG_MAX),
        ];
        t.extend(self.lineage_port_tags());
        t
    }

    /// The tags that find this lineage's ports and no other's.
    pub fn lineage_port_tags(&self) -> Vec<String> {
        [
            format!("osm-vc-{}", self.vcenter),
            format!("osm-vmuuid-{}", self.vm_uuid),
            format!("osm-host-{}", self.host),
            format!("osm-job-{}", self.origin),
        ]
        .iter()
        .map(|t| clip(t, NEUTRON_TAG_MAX))
        .collect()
    }
}

fn clip(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The VMs the running jobs of this agent migrate (`vcenter/uuid` → job).
fn claims() -> &'static Mutex<HashMap<String, u64>> {
    static C: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    C.get_or_init(Default::default)
}

/// Job `job` migrates this VM from now on; Err(the job that already does).
pub fn claim(vcenter: &str, vm_uuid: &str, moref: &str, job: u64) -> Result<(), u64> {
    let id = if vm_uuid.is_empty() { moref } else { vm_uuid };
    let mut c = claims().lock().expect("claims");
    let key = format!("{vcenter}/{id}");
    match c.get(&key) {
        Some(&other) if other != job => Err(other),
        _ => {
            c.insert(key, job);
            Ok(())
        }
    }
}

/// Job `job` ended: its VM is free.
pub fn release(job: u64) {
    claims().lock().expect("claims").retain(|_, j| *j != job);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(vcenter: &str, host: &str) -> Identity {
        Identity {
            vcenter: vcenter.into(),
            vm_uuid: "5029a1b2-0000-4000-8000-000000000042".into(),
            moref: "vm-42".into(),
            host: host.into(),
            origin: 1,
        }
    }

    #[test]
    fn the_same_moref_and_job_id_elsewhere_is_another_identity() {
        let a = id("vc-a-uuid", "host-a");
        for other in [id("vc-b-uuid", "host-a"), id("vc-a-uuid", "host-b")] {
            assert_ne!(a.volume_key(2000), other.volume_key(2000));
            assert_ne!(a.server_key(), other.server_key());
            assert_ne!(a.lineage_filter(), other.lineage_filter());
            assert_ne!(a.lineage_port_tags(), other.lineage_port_tags());
        }
        // Snapshots live in their VM's vCenter: the host and origin job tell lineages apart.
        assert_ne!(a.lineage(), id("vc-a-uuid", "host-b").lineage());
        let mut later = a.clone();
        later.origin = 2;
        assert_ne!(a.volume_key(2000), later.volume_key(2000));
        assert_eq!(a.volume_key(2000), id("vc-a-uuid", "host-a").volume_key(2000));
    }

    #[test]
    fn tags_carry_every_part_within_the_services_limits() {
        let a = id(&"v".repeat(80), &"h".repeat(300));
        let t = a.tags();
        assert_eq!(t[TAG_VM], "vm-42");
        assert_eq!(t[TAG_VM_UUID], a.vm_uuid);
        assert_eq!(t[TAG_JOB], "1");
        assert!(t.values().all(|v| v.len() <= 255));
        assert!(a.port_tags().iter().all(|t| t.len() <= NEUTRON_TAG_MAX));
        assert!(a.volume_key(2000).len() <= 255);
        let k = id("vc", "host").volume_key(2001);
        assert!(
            k.contains("vc") && k.contains("5029a1b2") && k.contains("host") && k.ends_with("-1-2001"),
            "{k}"
        );
    }

    #[test]
    fn one_job_holds_a_vm() {
        assert_eq!(claim("vc-t", "uuid-t", "vm-1", 11), Ok(()));
        assert_eq!(claim("vc-t", "uuid-t", "vm-1", 11), Ok(()));
        assert_eq!(claim("vc-t", "uuid-t", "vm-9", 12), Err(11));
        assert_eq!(claim("vc-other", "uuid-t", "vm-1", 12), Ok(()));
        release(11);
        assert_eq!(claim("vc-t", "uuid-t", "vm-1", 13), Ok(()));
        release(12);
        release(13);
    }
}
