//! Unattended migrations (cloud-init) on the test bed's REAL OpenStack and vCenter
//! simulator (`tests/testbed/up --only vsphere,openstack`): an agent whose plans_dir
//! holds a malformed plan, a valid one and a group/world-writable one stays up, starts
//! the valid plan once (also across a restart), and publishes the status in the
//! conversion host's own Nova server metadata.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use osm_agent::cloud::openstack::session::Body;
use osm_agent::cloud::openstack::{Client, CloudConfig, Metadata, RetryPolicy, Service};
use osm_agent::unattended::status::{is_ours, vm_key};
use osm_api::{JobInfo, Request};
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::wait_for;

/// Blocked by the pre-migration checks (consolidation needed) and powered off: its
/// migration fails at `checks` without touching the VM or the destination, so the shared
/// bed is left as it was even once the migration body is complete.
const VM: &str = "db-consolidate";

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run tests/testbed/up (vsphere and openstack) and source $OSM_TESTBED_STATE/env")
    })
}

fn client() -> Client {
    let cfg = CloudConfig::from_environment(None, None).expect("OS_CLOUD from clouds.yaml");
    Client::new(cfg, RetryPolicy::default()).unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The conversion host's metadata, osm's keys only.
fn host_metadata(rt: &tokio::runtime::Runtime, c: &Client) -> Metadata {
    let s = rt.block_on(c.get_server(&env("OSM_CONVERSION_HOST_ID"))).unwrap();
    s.metadata.into_iter().filter(|(k, _)| is_ours(k)).collect()
}

/// Removes osm's status keys from the shared conversion host (after the agent stopped).
struct MetadataCleanup;

impl MetadataCleanup {
    fn run() {
        let rt = rt();
        let c = client();
        let host = env("OSM_CONVERSION_HOST_ID");
        for k in host_metadata(&rt, &c).keys() {
            let path = format!("/servers/{host}/metadata/{k}");
            if let Err(e) = rt.block_on(
                c.session()
                    .call(Service::Compute, reqwest::Method::DELETE, &path, Body::None),
            ) {
                eprintln!("cleanup: metadata key {k}: {e}");
            }
        }
    }
}

impl Drop for MetadataCleanup {
    fn drop(&mut self) {
        Self::run();
    }
}

fn write_plan(dir: &Path, name: &str, text: &str, mode: u32) {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn valid_plan() -> String {
    format!(
        r#"vms = ["{VM}"]
mode = "cold"
skip_conversion = true

[source]
vcenter = "{host}"
user = "{user}"
password = {{ file = "{pw}" }}
datacenter = "DC0"
ca_file = "{ca}"

[destination]
cloud = "{cloud}"
clouds_yaml = "{clouds}"

[network]
default_network = "{net}"
"#,
        host = env("OSM_VC_HOST"),
        user = env("OSM_VC_USER"),
        pw = env("OSM_VC_PASSWORD_FILE"),
        ca = env("OSM_VC_CA_FILE"),
        cloud = env("OS_CLOUD"),
        clouds = env("OS_CLIENT_CONFIG_FILE"),
        net = env("OSM_OS_NETWORK"),
    )
}

fn migrations_of(agent: &Agent, vm: &str) -> Vec<JobInfo> {
    let r = agent.request(&Request::ListJobs);
    assert!(r.ok, "list jobs: {:?}", r.error);
    let jobs: Vec<JobInfo> = serde_json::from_value(r.result.unwrap()).unwrap();
    jobs.into_iter()
        .filter(|j| j.migration.as_ref().is_some_and(|m| m.vm == vm))
        .collect()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn plans_start_once_and_the_status_reaches_nova() {
    let rt = rt();
    let c = client();
    // Start from a host without osm keys (an earlier run's, or another agent's).
    MetadataCleanup::run();
    let _cleanup = MetadataCleanup; // dropped after the agent: its final status goes too

    let tmp = osm_integration_tests::scratch();
    let plans = tmp.path().join("plans.d");
    std::fs::create_dir(&plans).unwrap();
    std::fs::set_permissions(&plans, std::fs::Permissions::from_mode(0o700)).unwrap();
    write_plan(&plans, "10-broken.toml", "vms = [\"x\"\n[source\n", 0o600);
    write_plan(&plans, "20-wave1.toml", &valid_plan(), 0o600);
    write_plan(&plans, "30-writable.toml", &valid_plan(), 0o666);
    write_plan(&plans, "README.txt", "not a plan", 0o644);
    // cloud-init's copy of the user-data, with a plan in its `osm:` section (name without
    // a format: refused; the valid path runs in tests/twin).
    let user_data = tmp.path().join("user-data.txt");
    std::fs::write(
        &user_data,
        "#cloud-config\nosm:\n  plans:\n    wave2: |\n      vms = []\n",
    )
    .unwrap();
    std::fs::set_permissions(&user_data, std::fs::Permissions::from_mode(0o600)).unwrap();

    let mut agent = Agent::start(
        tmp.path(),
        Options {
            extra_config: format!(
                "plans_dir = \"{}\"\nuser_data = \"{}\"\n[openstack]\ncloud = \"{}\"\nclouds_file = \"{}\"\nmetadata_url = \"{}\"\n",
                plans.display(),
                user_data.display(),
                env("OS_CLOUD"),
                env("OS_CLIENT_CONFIG_FILE"),
                env("OSM_METADATA_URL"),
            ),
            ..Default::default()
        },
    );
    let summary = "unattended: 1 plan(s) started";
    wait_for(60, "the plan scan", || agent.stderr().contains(summary).then_some(()));
    let log = agent.stderr();
    eprintln!("--- agent log after the scan ---\n{log}");

    // Still up, one job for the valid plan's VM, a clear line per refused plan.
    assert!(agent.request(&Request::Version).ok);
    let jobs = migrations_of(&agent, VM);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let job = jobs[0].id;
    assert!(log.contains("10-broken.toml not started"), "{log}");
    assert!(log.contains("30-writable.toml: writable by every local user"), "{log}");
    assert!(log.contains("user-data:osm.plans.wave2: plan name \"wave2\""), "{log}");
    assert!(
        log.contains("3 not started: 10-broken.toml, 30-writable.toml, user-data:osm.plans.wave2"),
        "{log}"
    );
    let record = tmp.path().join("state/unattended.json");
    assert_eq!(std::fs::metadata(&record).unwrap().permissions().mode() & 0o777, 0o600);

    // The status in the conversion host's own metadata.
    let md = wait_for(90, "osm_status and both plan errors in Nova", || {
        let md = host_metadata(&rt, &c);
        let errors: Vec<&String> = md
            .iter()
            .filter(|(k, _)| k.starts_with("osm_plan_error_"))
            .map(|(_, v)| v)
            .collect();
        (md.contains_key("osm_status")
            && md.contains_key(&vm_key(VM))
            && errors.iter().any(|v| v.starts_with("10-broken.toml: "))
            && errors.iter().any(|v| v.starts_with("30-writable.toml: "))
            && errors.iter().any(|v| v.starts_with("user-data:osm.plans.wave2: ")))
        .then_some(md)
    });
    eprintln!("--- conversion host metadata ---\n{md:#?}");
    let status = &md["osm_status"];
    assert!(status.contains("3 plan errors; updated 20"), "{status}");
    for (k, v) in &md {
        assert!(v.chars().count() <= 255, "{k}");
    }
    let vm_value = &md[&vm_key(VM)];
    assert!(
        ["queued; ", "running; ", "failed; "]
            .iter()
            .any(|s| vm_value.starts_with(s)),
        "{vm_value}"
    );
    assert!(log.contains("unattended status: osm_status = "), "{log}");

    // A restart (kill -9) does not start the plan again; the errors are still shown.
    agent.restart();
    wait_for(60, "the second plan scan", || {
        (count(&agent.stderr(), summary) == 2).then_some(())
    });
    let published = "unattended: status published in the metadata of server";
    wait_for(90, "the second agent's first publish", || {
        (count(&agent.stderr(), published) == 2).then_some(())
    });
    let log = agent.stderr();
    assert!(log.contains("20-wave1.toml was started at"), "{log}");
    assert!(log.contains("10-broken.toml was refused at"), "{log}");
    assert_eq!(migrations_of(&agent, VM).len(), 1);

    // Leave nothing running on the shared bed.
    let j = agent.job(job);
    if !j.state.is_terminal() {
        let r = agent.request(&Request::Cancel { id: job });
        assert!(r.ok || agent.job(job).state.is_terminal(), "cancel: {:?}", r.error);
    }
    let j = agent.wait_job(job, 120);
    eprintln!("job {job}: {} at {} ({})", j.state, j.step, j.error);

    // A clean stop publishes a last status.
    assert!(agent.terminate().success());
    let md = host_metadata(&rt, &c);
    assert!(md["osm_status"].starts_with("agent stopped"), "{md:#?}");
    let log = agent.stderr();
    assert!(!log.contains("panicked"), "{log}");
}

/// The documented example: cloud-config that drops a valid plan, every secret 0600.
#[test]
fn the_example_user_data_drops_a_valid_plan_and_private_secrets() {
    let path = osm_integration_tests::repo_root().join("image-builder/user-data.example.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("#cloud-config\n"), "cloud-init needs the header");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let files = doc["write_files"].as_sequence().expect("write_files");
    let file = |p: &str| {
        files
            .iter()
            .find(|f| f["path"].as_str() == Some(p))
            .unwrap_or_else(|| panic!("{p} is not in write_files"))
    };
    for p in [
        "/etc/osm/vcenter.password",
        "/etc/openstack/clouds.yaml",
        "/etc/osm/plans.d/10-wave1.toml",
    ] {
        assert_eq!(file(p)["permissions"].as_str(), Some("0600"), "{p}");
        assert_eq!(file(p)["owner"].as_str(), Some("root:root"), "{p}");
        assert!(
            file(p).get("defer").is_none(),
            "{p}: a deferred file comes after the agent started"
        );
    }
    let plan_path = "/etc/osm/plans.d/10-wave1.toml";
    let plan_text = file(plan_path)["content"].as_str().unwrap();
    let loaded = osm_agent::plan::parse(plan_text, Path::new(plan_path)).unwrap();
    assert_eq!(
        loaded.plan.source.password,
        osm_agent::plan::Secret::File("/etc/osm/vcenter.password".into())
    );
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let cfg = file("/etc/osm/config.d/50-cloud.toml")["content"].as_str().unwrap();
    let cfg_path = std::env::temp_dir().join(format!("osm-example-{}.toml", std::process::id()));
    std::fs::write(&cfg_path, cfg).unwrap();
    let s = osm_agent::config::Settings::load(&[], Some(&cfg_path));
    std::fs::remove_file(&cfg_path).unwrap();
    assert_eq!(s.unwrap().openstack.cloud.as_deref(), Some("dst"));
    let clouds: serde_yaml::Value =
        serde_yaml::from_str(file("/etc/openstack/clouds.yaml")["content"].as_str().unwrap()).unwrap();
    assert!(clouds["clouds"]["dst"]["auth"].is_mapping());
}
