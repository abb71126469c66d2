//! Helpers for end-to-end migrations on the test bed: an agent configured for the bed's
//! vCenter simulator and OpenStack, plans, and checks of what a migration left behind.
use std::path::{Path, PathBuf};
use std::time::Duration;

use osm_agent::cloud::openstack::session::Body;
use osm_agent::cloud::openstack::{Client, CloudConfig, Metadata, RetryPolicy, Server, Service};
use osm_agent::cloud::vsphere::{self, Endpoint, Trust};
use osm_api::vsphere::VmInfo;
use osm_api::MigrationInfo;
use sha2::{Digest, Sha256};

use crate::agent::{Agent, Options};

pub fn env(key: &str) -> String {
    std::env::var(key)
        .unwrap_or_else(|_| panic!("{key} is not set: run tests/testbed/up and source $OSM_TESTBED_STATE/env"))
}

/// A private 0600 copy of the simulator's password.
pub fn password_file(dir: &Path) -> PathBuf {
    let secret = std::fs::read_to_string(env("OSM_VC_PASSWORD_FILE")).unwrap();
    let p = dir.join("vc.password");
    std::fs::write(&p, format!("{}\n", secret.lines().next().unwrap())).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    p
}

/// An agent for the bed: by-id folder and metadata of the bed's hypervisor double, the
/// https transport (Debian has no VDDK plugin), short sync interval unless given.
pub fn bed_agent(dir: &Path, extra: &str) -> Agent {
    let cfg = format!(
        "byid_dir = \"{}\"\n[openstack]\nmetadata_url = \"{}\"\n[migration]\ntransport = \"https\"\nshutdown_timeout_seconds = 20\n{extra}",
        env("OSM_BYID_DIR"),
        env("OSM_METADATA_URL"),
    );
    Agent::start(
        dir,
        Options {
            extra_config: cfg,
            ..Default::default()
        },
    )
}

/// A TOML plan for the bed's simulator and cloud; `more` is appended at top level.
pub fn plan(dir: &Path, vms: &[&str], more: &str) -> PathBuf {
    let pw = password_file(dir);
    let vms: Vec<String> = vms.iter().map(|v| format!("{v:?}")).collect();
    let vc = env("OSM_VC_URL");
    let host = vc.trim_start_matches("https://").trim_end_matches("/sdk");
    let text = format!(
        "vms = [{}]\n{more}\n[source]\nvcenter = \"{host}\"\nuser = \"{}\"\npassword = {{ file = \"{}\" }}\nca_file = \"{}\"\ndatacenter = \"{}\"\n[destination]\ncloud = \"{}\"\n[network]\ndefault_network = \"{}\"\n",
        vms.join(", "),
        env("OSM_VC_USER"),
        pw.display(),
        env("OSM_VC_CA_FILE"),
        env("OSM_VC_DATACENTER"),
        env("OS_CLOUD"),
        env("OSM_OS_NETWORK"),
    );
    let p = dir.join("plan.toml");
    std::fs::write(&p, text).unwrap();
    p
}

pub fn vc_endpoint(dir: &Path) -> Endpoint {
    Endpoint {
        url: env("OSM_VC_URL").parse().unwrap(),
        user: env("OSM_VC_USER"),
        password_file: password_file(dir),
        trust: Trust::CaFile(env("OSM_VC_CA_FILE").into()),
        timeout: Duration::from_secs(60),
    }
}

pub async fn vm(ep: &Endpoint, name: &str) -> VmInfo {
    vsphere::with_client(ep, async |c: &vsphere::Client| {
        Ok(vsphere::inventory::select(vsphere::inventory::discover(c).await?, &[name.to_string()], None)?.remove(0))
    })
    .await
    .unwrap()
}

/// Power the source back on and remove osm snapshots (other tests expect it running).
pub async fn restore_source(ep: &Endpoint, moref: &str) {
    let r = vsphere::snapshot::vm_ref(moref);
    vsphere::with_client(ep, async |c: &vsphere::Client| {
        c.remove_osm_snapshots(&r).await?;
        c.power_on(&r).await
    })
    .await
    .unwrap();
}

pub fn cloud() -> Client {
    let cfg = CloudConfig::from_environment(None, None).unwrap();
    Client::new(
        cfg,
        RetryPolicy {
            deadline: Duration::from_secs(120),
            ..RetryPolicy::default()
        },
    )
    .unwrap()
}

/// SHA-256 of the first `len` bytes of a file.
pub fn sha256_prefix(path: &Path, len: u64) -> String {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut h = Sha256::new();
    let mut left = len;
    let mut buf = vec![0u8; 4 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    format!("{:x}", h.finalize())
}

/// The flat file holding a simulated disk's bytes.
pub fn flat_file(datastore_path: &str) -> PathBuf {
    let (_, rest) = datastore_path.split_once("] ").unwrap();
    PathBuf::from(env("OSM_VC_DATASTORE_DIR")).join(format!("{}-flat.vmdk", rest.strip_suffix(".vmdk").unwrap()))
}

/// The bed's backing file of a volume.
pub fn volume_file(id: &str) -> PathBuf {
    PathBuf::from(env("OSM_VOLUME_DIR")).join(format!("{id}.img"))
}

/// What osm left in the cloud for a VM (by its tags): volumes, ports, servers.
pub async fn leftovers(c: &Client, moref: &str) -> (Vec<String>, Vec<String>) {
    let filter: Metadata = [("osm_vm".to_string(), moref.to_string())].into();
    let vols = c
        .find_volumes(&filter)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    let ports = c
        .list_ports(&format!("tags=osm-vm-{moref}"))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.id)
        .collect();
    (vols, ports)
}

/// The servers osm made for a VM (metadata `osm_vm`).
pub async fn servers_of(c: &Client, moref: &str) -> Vec<Server> {
    let r = c
        .session()
        .call(Service::Compute, reqwest::Method::GET, "/servers/detail", Body::None)
        .await
        .unwrap();
    let v: serde_json::Value = r.json(Service::Compute).unwrap();
    let all: Vec<Server> = serde_json::from_value(v["servers"].clone()).unwrap();
    all.into_iter()
        .filter(|s| s.metadata.get("osm_vm").map(String::as_str) == Some(moref))
        .collect()
}

/// Remove a finished migration's server (and any other server osm made for the VM, so a
/// failed test leaves none), ports and volumes (tests share the bed).
pub async fn remove_migrated(c: &Client, moref: &str, server: &str) {
    if !server.is_empty() {
        let _ = c.delete_server(server, Duration::from_secs(300)).await;
    }
    for s in servers_of(c, moref).await {
        let _ = c.delete_server(&s.id, Duration::from_secs(300)).await;
    }
    let (vols, ports) = leftovers(c, moref).await;
    for p in ports {
        let _ = c.delete_port(&p).await;
    }
    let host = env("OSM_CONVERSION_HOST_ID");
    for v in vols {
        // A failed test's job may have left it attached to the conversion host.
        if c.get_volume(&v).await.is_ok_and(|x| {
            x.attachments
                .iter()
                .any(|a| a.server_id.as_deref() == Some(host.as_str()))
        }) {
            let _ = c.detach_volume(&host, &v).await;
        }
        let _ = c.wait_volume(&v, &["available"], Duration::from_secs(120)).await;
        let _ = c.delete_volume_wait(&v, Duration::from_secs(120)).await;
        let _ = std::fs::remove_file(volume_file(&v));
    }
}

/// SHA-256 of a file inside the ext4 filesystem of partition 1 (at 1 MiB) of a disk
/// image, read with debugfs through a read-only loop device: the filesystem is neither
/// mounted nor changed.
pub fn ext4_file_sha256(image: &Path, path: &str) -> String {
    use std::process::Command;
    let out = Command::new("losetup")
        .args(["-r", "-o", "1048576", "--show", "-f"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let cat = Command::new("debugfs")
        .args(["-c", "-R", &format!("cat {path}"), &dev])
        .output()
        .unwrap();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(
        cat.status.success(),
        "debugfs cat {path}: {}",
        String::from_utf8_lossy(&cat.stderr)
    );
    format!("{:x}", Sha256::digest(&cat.stdout))
}

/// Write into a simulated VM disk as its running guest would (the simulator records the
/// area for CBT).
pub fn guest_write(vm: &str, disk: i32, offset: u64, length: u64, seed: u64) {
    let out = std::process::Command::new(env("OSM_VC_GUEST_WRITE"))
        .args([
            vm,
            &disk.to_string(),
            &offset.to_string(),
            &length.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "guest-write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Byte-for-byte equality of the first `len` bytes; the first differing MiB on failure.
pub fn same_bytes(a: &Path, b: &Path, len: u64) -> Result<(), String> {
    use std::io::Read;
    let open = |p: &Path| std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; 4 << 20], vec![0u8; 4 << 20]);
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(ba.len());
        fa.read_exact(&mut ba[..n]).unwrap();
        fb.read_exact(&mut bb[..n]).unwrap();
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap() as u64 + off;
            return Err(format!(
                "{} and {} differ at byte {i} (MiB {})",
                a.display(),
                b.display(),
                i >> 20
            ));
        }
        off += n as u64;
    }
    Ok(())
}

/// Wait (5 min at most) until a warm job waits for its cutover; it must not end first.
pub fn wait_cutover(agent: &Agent, id: u64) -> osm_api::JobInfo {
    crate::wait_for(300, "the job to wait for its cutover", || {
        let j = agent.job(id);
        assert!(
            !j.state.is_terminal(),
            "job ended: {} {}\n{}",
            j.state,
            j.error,
            agent.stderr()
        );
        Some(j).filter(|j| j.step.contains("waiting for the cutover"))
    })
}

/// "checks 1.0s, volumes 8.6s, …": each finished step and its time, for test logs.
pub fn step_timings(m: &MigrationInfo) -> String {
    m.steps
        .iter()
        .map(|s| format!("{} {:.1}s", s.step, s.seconds))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `osmctl --output json migrate --plan PLAN [extra…]`, as it ran.
pub fn migrate_with(agent: &Agent, plan: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--output", "json", "migrate", "--plan", plan.to_str().unwrap()];
    args.extend_from_slice(extra);
    agent.osmctl(&args)
}

/// Start the plan's one migration; its job.
pub fn migrate(agent: &Agent, plan: &Path) -> osm_api::JobInfo {
    let out = migrate_with(agent, plan, &[]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: osm_api::MigrateReply = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.jobs.len(), 1);
    r.jobs.into_iter().next().unwrap()
}

/// The source VM's power state as vCenter reports it.
pub async fn power_state(ep: &Endpoint, moref: &str) -> String {
    let r = vsphere::snapshot::vm_ref(moref);
    vsphere::with_client(ep, async |c: &vsphere::Client| c.power_state(&r).await)
        .await
        .unwrap()
}

/// After a test body run under `catch_unwind` that returns the server it made (or
/// panicked): remove what the migration made, power the source on again, then re-raise.
pub fn undo_then_raise(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    ep: &Endpoint,
    moref: &str,
    result: std::thread::Result<String>,
) {
    rt.block_on(async {
        let server = result.as_ref().map(String::as_str).unwrap_or("");
        remove_migrated(c, moref, server).await;
        restore_source(ep, moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
