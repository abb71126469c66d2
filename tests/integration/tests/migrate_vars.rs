//! The seed guide's sample vars.yaml (os-migrate-vmware-guide, section 2.4.1: "Nbdkit
//! (default)"), keys and comments as the guide has them, only the values filled in with
//! the test bed's vCenter simulator and OpenStack, drives a migration through
//! `osmctl migrate --plan vars.yaml`. What a vars.yaml cannot say (the https transport,
//! as Debian has no VDDK plugin; the vCenter CA) is in the agent's configuration: its
//! `[migration] transport` and its `[vsphere]` section for the same vCenter.
use std::path::Path;

use osm_api::{JobState, MigrateReply};
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::migration::*;

const VM: &str = "osm-linux-2disk";

/// A YAML scalar for any string (JSON strings are YAML double-quoted scalars).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The bed's user cloud (OS_CLOUD in OS_CLIENT_CONFIG_FILE), as a dst_cloud dictionary in
/// the guide's shape.
fn dst_cloud() -> String {
    let text = std::fs::read_to_string(env("OS_CLIENT_CONFIG_FILE")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let cloud = &doc["clouds"][env("OS_CLOUD").as_str()];
    let a = &cloud["auth"];
    let s = |v: &serde_yaml::Value| q(v.as_str().unwrap_or_else(|| panic!("clouds.yaml: {v:?}")));
    format!(
        "dst_cloud:\n  auth:\n    auth_url: {}\n    username: {}\n    project_id: {}\n    project_name: {}\n    user_domain_name: {}\n    password: {}\n  region_name: {}\n  interface: {}\n  identity_api_version: 3\n",
        s(&a["auth_url"]),
        s(&a["username"]),
        q(&env("OSM_OS_PROJECT_ID")),
        s(&a["project_name"]),
        s(&a["user_domain_name"]),
        s(&a["password"]),
        s(&cloud["region_name"]),
        s(&cloud["interface"]),
    )
}

/// Section 2.4.1's vars.yaml with the bed's values.
fn vars_yaml(dir: &Path, port_group: &str, private_network: &str, security_group: &str) -> std::path::PathBuf {
    let password = std::fs::read_to_string(env("OSM_VC_PASSWORD_FILE")).unwrap();
    let text = format!(
        r#"esxi_hostname: 127.0.0.1
vcenter_hostname: {vcenter}
vcenter_username: {user}
vcenter_password: {password}
vcenter_datacenter: {datacenter}
already_deploy_conversion_host: true
# OpenStack destination cloud auth parameters:
{dst_cloud}# OpenStack migration parameters:
# Use mapped networks or not:
used_mapped_networks: true
network_map:
  {port_group}: {mapped}
# If no mapped network then set the openstack network:
openstack_private_network: {private_network}
# Security groups for the instance:
security_groups: {security_group}
use_existing_flavor: true
os_migrate_create_network_port: false
# OS-migrate parameters:
# osm working directory:
os_migrate_vmw_data_dir: /opt/os-migrate
# Set this to true if the Openstack "dst_cloud" is a clouds.yaml file
# other, if the dest_cloud is a dict of authentication parameters, set
# this to false:
copy_openstack_credentials_to_conv_host: false
# Teardown
# Set to true if you want osm to delete everything on the destination cloud.
os_migrate_tear_down: true
# VMs list
vms_list:
- {VM}
skip_conversion: true
"#,
        vcenter = env("OSM_VC_HOST"),
        user = q(&env("OSM_VC_USER")),
        password = q(password.lines().next().unwrap()),
        datacenter = env("OSM_VC_DATACENTER"),
        dst_cloud = dst_cloud(),
        port_group = q(port_group),
        mapped = env("OSM_OS_NETWORK2"),
    );
    let p = dir.join("vars.yaml");
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

#[test]
fn the_seed_guides_sample_vars_yaml_migrates_a_vm_unchanged() {
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, VM));
    let c = cloud();
    let (private_net, mapped_net, sg) = rt.block_on(async {
        (
            c.find_network(&env("OSM_OS_NETWORK")).await.unwrap(),
            c.find_network(&env("OSM_OS_NETWORK2")).await.unwrap(),
            c.find_security_group("osm-sg").await.unwrap(),
        )
    });
    assert_eq!(src.nics.len(), 1, "{VM} has one NIC");
    let vars = vars_yaml(tmp.path(), &src.nics[0].network_name, &private_net.id, &sg);
    // The agent's own settings: the bed (as bed_agent), and the vCenter it trusts.
    let cfg = format!(
        "byid_dir = \"{}\"\n[openstack]\nmetadata_url = \"{}\"\n[migration]\ntransport = \"https\"\nshutdown_timeout_seconds = 20\n[vsphere]\nurl = \"{}\"\nuser = \"{}\"\npassword_file = \"{}\"\nca_file = \"{}\"\n",
        env("OSM_BYID_DIR"),
        env("OSM_METADATA_URL"),
        env("OSM_VC_URL"),
        env("OSM_VC_USER"),
        password_file(tmp.path()).display(),
        env("OSM_VC_CA_FILE"),
    );
    let agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: cfg,
            ..Default::default()
        },
    );
    let t = std::time::Instant::now();
    let out = agent.osmctl(&["--output", "json", "migrate", "--plan", vars.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "migrate --plan vars.yaml: {stderr}");
    let reply: MigrateReply = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply.jobs.len(), 1);
    let job = reply.jobs[0].clone();
    let mut server = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        eprintln!("warnings:\n  {}", reply.warnings.join("\n  "));
        for key in [
            "already_deploy_conversion_host",
            "os_migrate_vmw_data_dir",
            "copy_openstack_credentials_to_conv_host",
        ] {
            assert!(
                reply
                    .warnings
                    .iter()
                    .any(|w| w.starts_with(&format!("{key} is not used"))),
                "a warning names the unused key {key}: {:?}",
                reply.warnings
            );
            assert!(stderr.contains(key), "osmctl shows the warning about {key}: {stderr}");
        }
        assert!(
            reply
                .warnings
                .iter()
                .any(|w| w.contains("password is written in the plan")),
            "the inline password is warned about: {:?}",
            reply.warnings
        );
        assert!(
            !reply.warnings.iter().any(|w| w.contains("unknown key")),
            "every key of the guide's file is known: {:?}",
            reply.warnings
        );
        let done = agent.wait_job(job.id, 900);
        let m = done.migration.clone().expect("migration info");
        server = m.server_id.clone();
        assert_eq!(done.state, JobState::Succeeded, "{}\n{}", done.error, agent.stderr());
        eprintln!(
            "vars.yaml migration in {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            m.steps
                .iter()
                .map(|s| format!("{} {:.1}s", s.step, s.seconds))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert_eq!(m.mode, "cold", "no cbt_sync: a cold migration");
        assert!(
            agent.stderr().contains("trusted as the agent's [vsphere] section says"),
            "the vCenter CA came from the agent's [vsphere] section"
        );
        assert_eq!(m.volumes.len(), src.disks.len());
        for (d, v) in src.disks.iter().zip(&m.volumes) {
            same_bytes(&volume_file(v), &flat_file(&d.datastore_path), d.capacity_bytes).unwrap();
        }
        rt.block_on(async {
            assert_eq!(c.get_server(&m.server_id).await.unwrap().status, "ACTIVE");
            let (mut vols, ports) = leftovers(&c, &src.moref).await;
            vols.sort();
            let mut want = m.volumes.clone();
            want.sort();
            assert_eq!(vols, want, "one volume per disk, no other");
            assert_eq!(ports.len(), src.nics.len(), "one port per NIC");
            for p in c.list_ports(&format!("tags=osm-vm-{}", src.moref)).await.unwrap() {
                assert_eq!(p.device_id, m.server_id, "port {} is the server's", p.id);
                assert_eq!(
                    p.network_id, mapped_net.id,
                    "network_map puts the NIC on {}",
                    mapped_net.name
                );
                assert!(p.security_groups.contains(&sg), "the port has security group osm-sg");
                assert_ne!(
                    p.mac_address,
                    src.nics[0].mac.to_ascii_lowercase(),
                    "os_migrate_create_network_port: false keeps no source MAC"
                );
            }
            let host = c.server_attachments(&env("OSM_CONVERSION_HOST_ID")).await.unwrap();
            assert!(
                !host.iter().any(|a| vols.contains(&a.volume_id)),
                "no volume stays attached to the conversion host"
            );
            let now = vm(&ep, VM).await;
            assert!(!now.snapshots.list.iter().any(|s| s.osm), "no osm snapshot left");
            assert_eq!(now.power_state, "poweredOff");
        });
    }));
    let _ = agent.osmctl(&["cancel", &job.id.to_string()]);
    rt.block_on(async {
        remove_migrated(&c, &src.moref, &server).await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
