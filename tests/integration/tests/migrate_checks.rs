//! A destination that cannot take the VM is found at the checks, before any volume and
//! before the source is touched (issue 12, case 15): one test per prerequisite, each
//! asserting the job's error names it and what to do, that no volume was made for the VM
//! and that the source's power state is unchanged. Before, a missing flavor was found at
//! the network step, after a cold migration had shut the source down and copied it.
use std::time::Instant;

use osm_api::JobState;
use osm_integration_tests::migration::*;

/// Powered on, three disks and NICs; migrated by no other test.
const VM: &str = "web [prod] ünïcode 1";

/// A cold migration with `more` in its plan (lines starting `network.` go into its
/// [network] table) fails at the checks with all of `expect` in its error; nothing is
/// created and the source keeps its power state.
fn refused(more: &str, expect: &[&str]) {
    refused_for(VM, more, expect)
}

fn refused_for(name: &str, more: &str, expect: &[&str]) {
    let t0 = Instant::now();
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, name));
    let power = rt.block_on(power_state(&ep, &src.moref));
    let c = cloud();
    let before = rt.block_on(leftovers(&c, &src.moref)).0.len();
    let agent = bed_agent(tmp.path(), "");
    let (net, top): (Vec<&str>, Vec<&str>) = more.lines().partition(|l| l.starts_with("network."));
    let p = plan(
        tmp.path(),
        &[name],
        &format!("mode = \"cold\"\nskip_conversion = true\n{}", top.join("\n")),
    );
    let net: Vec<&str> = net.iter().map(|l| l.trim_start_matches("network.")).collect();
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("[network]\n", &format!("[network]\n{}\n", net.join("\n")));
    std::fs::write(&p, text).unwrap();
    let job = migrate(&agent, &p);
    let j = agent.wait_job(job.id, 120);
    assert_eq!(j.state, JobState::Failed, "the migration must be refused");
    assert!(j.error.starts_with("checks:"), "refused at the checks: {}", j.error);
    for e in expect {
        assert!(j.error.contains(e), "the error names '{e}': {}", j.error);
    }
    assert!(j.error.contains("nothing was created"), "{}", j.error);
    assert_eq!(
        rt.block_on(leftovers(&c, &src.moref)).0.len(),
        before,
        "no volume was made"
    );
    assert_eq!(
        rt.block_on(power_state(&ep, &src.moref)),
        power,
        "the source's power is unchanged"
    );
    eprintln!("  refused in {:.1} s: {}", t0.elapsed().as_secs_f64(), j.error);
}

#[test]
fn a_flavor_that_does_not_exist_is_refused_before_any_volume() {
    // A VM whose tools run: the rest of its checks pass, so without the destination
    // checks a cold migration would shut it down and copy it first.
    refused_for(
        "osm-linux-1",
        "flavor = { id = \"no-such-flavor\" }",
        &["no flavor 'no-such-flavor'", "openstack flavor list"],
    );
}

#[test]
fn a_flavor_smaller_than_the_vm_is_refused_before_any_volume() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let small = rt
        .block_on(cloud().list_flavors())
        .unwrap()
        .into_iter()
        .find(|f| f.name == "osm.small")
        .expect("the bed's flavor osm.small (1 vCPU, 1 GiB; the VM has 2 and 2 GiB)");
    refused(
        &format!("flavor = {{ id = \"{}\" }}", small.id),
        &["is smaller than the VM", "larger flavor"],
    );
}

#[test]
fn a_network_that_does_not_exist_is_refused_before_any_volume() {
    refused(
        "network.map = { \"Backup Network\" = \"no-such-network\" }",
        &["network 'no-such-network'", "[network] map"],
    );
}

#[test]
fn a_fixed_ip_outside_every_subnet_is_refused_before_any_volume() {
    // osm-linux-1's 192.0.2.11 (reported by its running tools) is in no subnet of the
    // bed's network (10.77.0.0/24).
    refused_for(
        "osm-linux-1",
        "network.fixed_ips = true",
        &["192.0.2.11", "inside no subnet", "fixed_ips = false"],
    );
}

#[test]
fn a_security_group_that_does_not_exist_is_refused_before_any_volume() {
    refused(
        "security_groups = [\"no-such-group\"]",
        &["security group 'no-such-group'"],
    );
}

#[test]
fn a_volume_type_that_does_not_exist_is_refused_before_any_volume() {
    refused(
        "volume_type = \"no-such-type\"",
        &["no volume type 'no-such-type'", "volume_type"],
    );
}

#[test]
fn an_availability_zone_without_volumes_is_refused_before_any_volume() {
    refused("availability_zone = \"nowhere\"", &["availability zone 'nowhere'"]);
}

/// Sets the osm project's compute quota `key` (admin) and puts the old value back on drop.
struct ComputeQuota {
    rt: tokio::runtime::Runtime,
    admin: osm_agent::cloud::openstack::Client,
    project: String,
    key: &'static str,
    old: serde_json::Value,
}

impl ComputeQuota {
    fn set(key: &'static str, value: i64) -> ComputeQuota {
        use osm_agent::cloud::openstack::{session::Body, Client, CloudConfig, RetryPolicy, Service};
        let rt = tokio::runtime::Runtime::new().unwrap();
        let project = rt.block_on(cloud().session().project_id()).unwrap();
        let cfg = CloudConfig::from_environment(Some("osm-admin"), None).unwrap();
        let admin = Client::new(cfg, RetryPolicy::default()).unwrap();
        let path = format!("/os-quota-sets/{project}");
        let r = rt
            .block_on(
                admin
                    .session()
                    .call(Service::Compute, reqwest::Method::GET, &path, Body::None),
            )
            .unwrap();
        let v: serde_json::Value = r.json(Service::Compute).unwrap();
        let old = v["quota_set"][key].clone();
        let body = Body::Json(serde_json::json!({ "quota_set": { key: value } }));
        rt.block_on(
            admin
                .session()
                .call(Service::Compute, reqwest::Method::PUT, &path, body),
        )
        .unwrap();
        ComputeQuota {
            rt,
            admin,
            project,
            key,
            old,
        }
    }
}

impl Drop for ComputeQuota {
    fn drop(&mut self) {
        use osm_agent::cloud::openstack::{session::Body, Service};
        let path = format!("/os-quota-sets/{}", self.project);
        let body = Body::Json(serde_json::json!({ "quota_set": { self.key: self.old } }));
        let _ = self.rt.block_on(
            self.admin
                .session()
                .call(Service::Compute, reqwest::Method::PUT, &path, body),
        );
    }
}

#[test]
fn a_compute_quota_without_room_for_the_vm_is_refused_before_any_volume() {
    // 1 core left at most: the VM has 2.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let used = rt.block_on(cloud().compute_limits()).unwrap().total_cores_used;
    let _quota = ComputeQuota::set("cores", used + 1);
    refused(
        "",
        &["compute quota has 1 cores left and the VM needs 2", "raise the quota"],
    );
}
