//! The OpenStack client and attach-to-self against the test bed's REAL OpenStack
//! (Keystone, Cinder, Nova, Neutron on 127.0.0.1; `tests/testbed/up --only openstack`).
//! The only double is the bed's hypervisor emulation (attach → loop device + by-id link),
//! plus our own FaultProxy (a hand-written fake network) for the fault test.
use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use osm_agent::blockdev::{self, AttachedVolume};
use osm_agent::cloud::openstack::discovery::{self, DiscoveryInputs, Source};
use osm_agent::cloud::openstack::{
    Client, CloudConfig, Error, FixedIp, ImageProperties, Metadata, OpenStack, PortSpec, RetryPolicy, VolumeSpec,
};
use osm_integration_tests::faultproxy::{Fault, FaultProxy};

fn env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: run tests/testbed/up (or tests/testbed/up --only openstack) and source $OSM_TESTBED_STATE/env")
    })
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        request_timeout: Duration::from_secs(60),
        deadline: Duration::from_secs(120),
        ..RetryPolicy::default()
    }
}

fn user_client() -> Client {
    let cfg = CloudConfig::resolve(None, None, &process_env).expect("OS_CLOUD from clouds.yaml");
    Client::new(cfg, policy()).unwrap()
}

/// The `auth` of a clouds.yaml entry, as plain strings (to build the other forms).
fn cloud_auth(cloud: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(env("OS_CLIENT_CONFIG_FILE")).unwrap();
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let auth = &v["clouds"][cloud]["auth"];
    auth.as_mapping()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_string(),
                v.as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn settings(tmp: &std::path::Path) -> blockdev::Settings {
    let mut s = blockdev::Settings::new(env("OSM_BYID_DIR"), tmp);
    // The bed's lock must be host-wide across test processes too.
    s.lock_file = PathBuf::from("/var/tmp/osm-testbed/osm-test-attach.lock");
    s.device_timeout = Duration::from_secs(60);
    s.volume_timeout = Duration::from_secs(120);
    s
}

fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("osm-test-{prefix}-{}-{}", std::process::id(), n % 1_000_000_000)
}

/// The bed's project holds 10 volumes (Cinder's default quota): the tests of this file
/// that make volumes take one permit per volume, so running in parallel they stay below.
static VOLUME_QUOTA: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(10);

async fn volumes_quota(n: u32) -> tokio::sync::SemaphorePermit<'static> {
    VOLUME_QUOTA.acquire_many(n).await.unwrap()
}

/// Servers, volumes and ports a test made, removed at the end whatever happened (servers
/// first: they hold the volumes).
#[derive(Default, Clone)]
struct Cleanup {
    servers: Arc<Mutex<Vec<String>>>,
    volumes: Arc<Mutex<Vec<String>>>,
    ports: Arc<Mutex<Vec<String>>>,
}

impl Cleanup {
    async fn run(&self, c: &Client) {
        let servers: Vec<String> = self.servers.lock().unwrap().drain(..).collect();
        for s in servers {
            if let Err(e) = c.delete_server(&s, Duration::from_secs(120)).await {
                eprintln!("cleanup: server {s}: {e}");
            }
        }
        let host = env("OSM_CONVERSION_HOST_ID");
        let vols: Vec<String> = self.volumes.lock().unwrap().drain(..).collect();
        for v in vols {
            if let Ok(vol) = c.get_volume(&v).await {
                if vol.status != "available" {
                    let _ = c.detach_volume(&host, &v).await;
                    let _ = c
                        .wait_volume(&v, &["available", "error"], Duration::from_secs(60))
                        .await;
                }
            }
            if let Err(e) = c.delete_volume_wait(&v, Duration::from_secs(120)).await {
                eprintln!("cleanup: volume {v}: {e}");
            }
            let _ = std::fs::remove_file(PathBuf::from(env("OSM_VOLUME_DIR")).join(format!("{v}.img")));
        }
        let ports: Vec<String> = self.ports.lock().unwrap().drain(..).collect();
        for p in ports {
            if let Err(e) = c.delete_port(&p).await {
                eprintln!("cleanup: port {p}: {e}");
            }
        }
    }
}

/// Run `body`, then the cleanup, then re-raise a panic of the body.
async fn guarded<F: std::future::Future<Output = ()>>(c: &Client, cl: &Cleanup, body: F) {
    use futures_util::FutureExt;
    let r = std::panic::AssertUnwindSafe(body).catch_unwind().await;
    cl.run(c).await;
    if let Err(p) = r {
        std::panic::resume_unwind(p);
    }
}

fn write_at(dev: &std::path::Path, offset: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().write(true).open(dev).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_at(dev: &std::path::Path, offset: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(dev).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn pattern(seed: &str, len: usize) -> Vec<u8> {
    // Distinct, non-repeating bytes per seed (xorshift from the seed's hash).
    let mut x: u64 = seed.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auth_by_clouds_yaml_env_dst_cloud_and_application_credential() {
    let t = Instant::now();
    let project = env("OSM_OS_PROJECT_ID");
    let user = cloud_auth(&env("OS_CLOUD"));

    // 1. clouds.yaml through OS_CLOUD + OS_CLIENT_CONFIG_FILE.
    let c = user_client();
    assert_eq!(
        c.session().authenticate().await.unwrap().as_deref(),
        Some(project.as_str())
    );
    assert_eq!(
        c.find_network(&env("OSM_OS_NETWORK")).await.unwrap().name,
        env("OSM_OS_NETWORK")
    );

    // 2. The OS_* environment (no OS_CLOUD).
    let vars: BTreeMap<String, String> = [
        ("OS_AUTH_URL", user["auth_url"].clone()),
        ("OS_USERNAME", user["username"].clone()),
        ("OS_PASSWORD", user["password"].clone()),
        ("OS_PROJECT_NAME", user["project_name"].clone()),
        ("OS_USER_DOMAIN_NAME", user["user_domain_name"].clone()),
        ("OS_PROJECT_DOMAIN_NAME", user["project_domain_name"].clone()),
        ("OS_REGION_NAME", "RegionOne".into()),
        ("OS_INTERFACE", "internal".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = CloudConfig::resolve(None, None, &|k| vars.get(k).cloned()).unwrap();
    assert_eq!(cfg.interface, "internal");
    let c = Client::new(cfg, policy()).unwrap();
    assert_eq!(c.project_id().await.unwrap(), project);
    assert!(c.compute_limits().await.unwrap().max_total_instances != 0);

    // 3. The seed's dst_cloud dictionary (JSON, as the seed's examples give it).
    let dst = serde_json::json!({
        "auth": {
            "auth_url": user["auth_url"],
            "username": user["username"],
            "password": user["password"],
            "project_name": user["project_name"],
            "user_domain_name": user["user_domain_name"],
            "project_domain_name": user["project_domain_name"],
        },
        "region_name": "RegionOne",
        "interface": "public",
        "identity_api_version": 3,
    });
    let c = Client::new(CloudConfig::from_dst_cloud(&dst.to_string()).unwrap(), policy()).unwrap();
    assert_eq!(c.project_id().await.unwrap(), project);
    c.volume_limits().await.unwrap();

    // 4. Application credential (clouds.yaml entry with auth_type v3applicationcredential).
    let cfg = CloudConfig::resolve(Some(&env("OSM_OS_APPCRED_CLOUD")), None, &process_env).unwrap();
    let c = Client::new(cfg, policy()).unwrap();
    assert_eq!(c.project_id().await.unwrap(), project);
    c.find_security_group("osm-sg").await.unwrap();

    // A region the catalog does not have is a clear error.
    let mut cfg = CloudConfig::resolve(None, None, &process_env).unwrap();
    cfg.region_name = Some("Nowhere".into());
    let err = Client::new(cfg, policy())
        .unwrap()
        .get_volume("x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no Cinder endpoint") && err.contains("Nowhere"), "{err}");
    eprintln!("auth forms: {:.1}s", t.elapsed().as_secs_f32());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unreachable_keystone_give_one_clear_line() {
    let user = cloud_auth(&env("OS_CLOUD"));
    let dict = |url: &str, pw: &str| {
        serde_json::json!({"auth": {"auth_url": url, "username": user["username"], "password": pw,
            "project_name": user["project_name"], "user_domain_name": "Default", "project_domain_name": "Default"}})
        .to_string()
    };
    let secret = "definitely-wrong-pw-7731";
    let c = Client::new(
        CloudConfig::from_dst_cloud(&dict(&user["auth_url"], secret)).unwrap(),
        policy(),
    )
    .unwrap();
    let t = Instant::now();
    let err = c.project_id().await.unwrap_err();
    let msg = err.to_string();
    eprintln!("wrong password ({:.1}s): {msg}", t.elapsed().as_secs_f32());
    assert!(matches!(err, Error::AuthRejected { status: 401, .. }), "{msg}");
    assert!(
        msg.contains("refused the credentials") && msg.contains("check the password"),
        "{msg}"
    );
    assert!(!msg.contains('\n') && !msg.contains(secret), "{msg}");

    let quick = RetryPolicy {
        request_timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(3),
        ..RetryPolicy::default()
    };
    let c = Client::new(
        CloudConfig::from_dst_cloud(&dict("http://127.0.0.1:9/v3", "x")).unwrap(),
        quick,
    )
    .unwrap();
    let t = Instant::now();
    let msg = c.project_id().await.unwrap_err().to_string();
    eprintln!("unreachable ({:.1}s): {msg}", t.elapsed().as_secs_f32());
    assert!(
        msg.starts_with("cannot reach Keystone at http://127.0.0.1:9/v3/auth/tokens"),
        "{msg}"
    );
    assert!(msg.to_lowercase().contains("refused") && !msg.contains('\n'), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_attach_write_detach_reattach_reads_the_same_bytes() {
    let _quota = volumes_quota(1).await;
    let c = user_client();
    let cl = Cleanup::default();
    let tmp = osm_integration_tests::scratch();
    let s = settings(tmp.path());
    let host = env("OSM_CONVERSION_HOST_ID");
    guarded(&c, &cl, async {
        let t = Instant::now();
        c.check_volume_quota(&[1 << 30]).await.unwrap();
        let name = unique("rw");
        let spec = VolumeSpec {
            name: name.clone(),
            size_bytes: (1 << 30) - 4096, // rounds up to 1 GiB
            metadata: [("osm:vm".to_string(), name.clone()), ("osm:disk".into(), "0".into())].into(),
            idempotency_key: Some(name.clone()),
            ..Default::default()
        };
        let v = c.create_volume(&spec).await.unwrap();
        cl.volumes.lock().unwrap().push(v.id.clone());
        assert_eq!(v.size, 1);
        // The same create again (a retried step) returns the same volume.
        assert_eq!(c.create_volume(&spec).await.unwrap().id, v.id);
        let v = c
            .wait_volume(&v.id, &["available"], Duration::from_secs(120))
            .await
            .unwrap();

        // Bootable, image metadata, metadata merged (never replaced), found by metadata.
        c.set_bootable(&v.id, true).await.unwrap();
        let props = ImageProperties {
            hw_firmware_type: Some("uefi".into()),
            hw_machine_type: Some("q35".into()),
            os_type: Some("linux".into()),
            hw_disk_bus: Some("virtio".into()),
            hw_vif_model: Some("virtio".into()),
            os_secure_boot: Some("disabled".into()),
        };
        c.set_volume_image_metadata(&v.id, &props).await.unwrap();
        let md = c
            .merge_volume_metadata(&v.id, &[("osm:change_id".to_string(), "52 a3/7".to_string())].into())
            .await
            .unwrap();
        assert_eq!(md.get("osm:vm"), Some(&name), "merge lost a key: {md:?}");
        assert_eq!(md.get("osm:change_id").map(String::as_str), Some("52 a3/7"));
        let got = c.get_volume(&v.id).await.unwrap();
        assert!(got.is_bootable());
        assert_eq!(
            got.volume_image_metadata.get("hw_firmware_type").map(String::as_str),
            Some("uefi")
        );
        assert_eq!(
            got.volume_image_metadata.get("os_secure_boot").map(String::as_str),
            Some("disabled")
        );
        let found = c
            .find_volumes(&[("osm:vm".to_string(), name.clone())].into())
            .await
            .unwrap();
        assert_eq!(
            found.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(),
            vec![v.id.as_str()]
        );

        // Attach → device → write 1 MiB → detach → attach → same bytes.
        let a: AttachedVolume = blockdev::attach(&c, &s, &host, &v.id).await.unwrap();
        assert_eq!(a.size, 1 << 30);
        assert!(a.path.to_string_lossy().contains(&v.id[..20]), "{:?}", a.path);
        let data = pattern(&v.id, 1 << 20);
        write_at(&a.device, 7 << 20, &data);
        blockdev::detach(&c, &s, &host, &v.id).await.unwrap();
        assert_eq!(c.get_volume(&v.id).await.unwrap().status, "available");
        let b = blockdev::attach(&c, &s, &host, &v.id).await.unwrap();
        assert_eq!(read_at(&b.device, 7 << 20, 1 << 20), data);
        blockdev::detach(&c, &s, &host, &v.id).await.unwrap();
        eprintln!(
            "create/attach/write/detach/attach/read: {:.1}s",
            t.elapsed().as_secs_f32()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn eight_volumes_attached_concurrently_map_to_their_own_devices() {
    let _quota = volumes_quota(8).await;
    let c = Arc::new(user_client());
    let cl = Cleanup::default();
    let tmp = osm_integration_tests::scratch();
    let s = Arc::new(settings(tmp.path()));
    let host = env("OSM_CONVERSION_HOST_ID");
    guarded(&c.clone(), &cl, async {
        let t = Instant::now();
        let base = unique("eight");
        let mut ids = Vec::new();
        for i in 0..8 {
            let v = c
                .create_volume(&VolumeSpec {
                    name: format!("{base}-{i}"),
                    size_bytes: 1 << 30,
                    metadata: [("osm:vm".to_string(), base.clone())].into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            cl.volumes.lock().unwrap().push(v.id.clone());
            ids.push(v.id);
        }
        for id in &ids {
            c.wait_volume(id, &["available"], Duration::from_secs(120))
                .await
                .unwrap();
        }
        let attach_all = |ids: Vec<String>| {
            let (c, s, host) = (c.clone(), s.clone(), host.clone());
            async move {
                let tasks: Vec<_> = ids
                    .into_iter()
                    .map(|id| {
                        let (c, s, host) = (c.clone(), s.clone(), host.clone());
                        tokio::spawn(async move { blockdev::attach(c.as_ref(), &s, &host, &id).await.unwrap() })
                    })
                    .collect();
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            }
        };
        let detach_all = |ids: Vec<String>| {
            let (c, s, host) = (c.clone(), s.clone(), host.clone());
            async move {
                let tasks: Vec<_> = ids
                    .into_iter()
                    .map(|id| {
                        let (c, s, host) = (c.clone(), s.clone(), host.clone());
                        tokio::spawn(async move { blockdev::detach(c.as_ref(), &s, &host, &id).await.unwrap() })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        };
        let attached = attach_all(ids.clone()).await;
        let mut devs: Vec<_> = attached.iter().map(|a| a.device.clone()).collect();
        devs.sort();
        devs.dedup();
        assert_eq!(devs.len(), 8, "two volumes share a device: {attached:?}");
        for a in &attached {
            write_at(&a.device, 0, &pattern(&a.volume_id, 64 << 10));
        }
        let t1 = t.elapsed();
        detach_all(ids.clone()).await;
        // Attach again in another order: each device holds its own volume's bytes.
        let mut rev = ids.clone();
        rev.reverse();
        let attached = attach_all(rev).await;
        for a in &attached {
            assert_eq!(
                read_at(&a.device, 0, 64 << 10),
                pattern(&a.volume_id, 64 << 10),
                "{} on {} holds another volume's bytes",
                a.volume_id,
                a.device.display()
            );
        }
        detach_all(ids.clone()).await;
        eprintln!(
            "8 volumes: first attach+write {:.1}s, total {:.1}s",
            t1.as_secs_f32(),
            t.elapsed().as_secs_f32()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_with_a_fixed_mac_created_twice_is_one_port() {
    let c = user_client();
    let cl = Cleanup::default();
    guarded(&c, &cl, async {
        let net = c.find_network(&env("OSM_OS_NETWORK")).await.unwrap();
        let subnet = c.find_subnet("osm-net-v4", Some(&net.id)).await.unwrap();
        let sg = c.find_security_group("osm-sg").await.unwrap();
        let n = std::process::id() as u64 ^ Instant::now().elapsed().as_nanos() as u64;
        let mac = format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x}",
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8
        );
        let spec = PortSpec {
            network_id: net.id.clone(),
            name: unique("port"),
            mac_address: Some(mac.to_ascii_uppercase()),
            fixed_ips: vec![FixedIp {
                subnet_id: subnet.id.clone(),
                ip_address: Some(format!("10.77.0.{}", 100 + (n % 100))),
            }],
            security_group_ids: vec![sg.clone()],
            tags: vec!["osm".into(), "osm-vm:test".into()],
            description: None,
        };
        let p1 = c.ensure_port(&spec).await.unwrap();
        cl.ports.lock().unwrap().push(p1.id.clone());
        let p2 = c.ensure_port(&spec).await.unwrap();
        assert_eq!(p1.id, p2.id);
        assert_eq!(p1.mac_address, mac);
        assert_eq!(p1.security_groups, vec![sg]);
        assert!(p2.tags.contains(&"osm-vm:test".to_string()), "{:?}", p2.tags);
        let all = c
            .list_ports(&format!("network_id={}&mac_address={mac}", net.id))
            .await
            .unwrap();
        assert_eq!(all.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_discovery_finds_the_conversion_host() {
    let c = user_client();
    let inp = DiscoveryInputs {
        instance_id: None,
        metadata_url: env("OSM_METADATA_URL"),
        metadata_timeout: Duration::from_secs(5),
        by_label_dir: "/nonexistent".into(),
        dmi_uuid_file: "/nonexistent".into(),
    };
    let h = discovery::discover(&c, &inp).await.unwrap();
    assert_eq!(h.identity.instance_id, env("OSM_CONVERSION_HOST_ID"));
    assert_eq!(h.identity.source, Source::MetadataService);
    assert_eq!(
        h.identity.project_id.as_deref(),
        Some(env("OSM_OS_PROJECT_ID").as_str())
    );
    assert!(h.identity.availability_zone.is_some());
    // The configured uuid wins; Nova fills the AZ and project then.
    let h2 = discovery::discover(
        &c,
        &DiscoveryInputs {
            instance_id: Some(env("OSM_CONVERSION_HOST_ID")),
            metadata_url: "http://127.0.0.1:9".into(),
            ..inp
        },
    )
    .await
    .unwrap();
    assert_eq!(h2.identity.source, Source::Configuration);
    assert_eq!(h2.identity.availability_zone, h.identity.availability_zone);
    let md: Metadata = [("osm:status".to_string(), "idle".to_string())].into();
    let all = c.set_server_metadata(&h.identity.instance_id, &md).await.unwrap();
    assert_eq!(all.get("osm_testbed_role").map(String::as_str), Some("conversion-host"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sequence_completes_through_a_proxy_injecting_faults_on_20_percent_of_calls() {
    let _quota = volumes_quota(2).await;
    let proxy = FaultProxy::start(&[5000, 8774, 8776, 9696, 9292], 20, 0x5eed_0005).await;
    let mut cfg = CloudConfig::resolve(None, None, &process_env).unwrap();
    cfg.auth_url = proxy.url_for(&cfg.auth_url);
    let c = Client::new(
        cfg,
        RetryPolicy {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            ..policy()
        },
    )
    .unwrap();
    assert!(c
        .session()
        .endpoint_of(osm_agent::cloud::openstack::Service::Compute)
        .await
        .unwrap()
        .starts_with(&proxy.url_for("http://127.0.0.1:8774")));
    let direct = user_client();
    let cl = Cleanup::default();
    let tmp = osm_integration_tests::scratch();
    let s = settings(tmp.path());
    let host = env("OSM_CONVERSION_HOST_ID");
    guarded(&direct, &cl, async {
        let t = Instant::now();
        let name = unique("faults");
        c.check_volume_quota(&[2 << 30, 1 << 30]).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..2 {
            let spec = VolumeSpec {
                name: format!("{name}-{i}"),
                size_bytes: 1 << 30,
                metadata: [("osm:vm".to_string(), name.clone())].into(),
                idempotency_key: Some(format!("{name}-{i}")),
                ..Default::default()
            };
            let v = c.create_volume(&spec).await.unwrap();
            cl.volumes.lock().unwrap().push(v.id.clone());
            ids.push(v.id);
        }
        // Whatever the faults did, there is exactly one volume per key.
        let found = direct
            .find_volumes(&[("osm:vm".to_string(), name.clone())].into())
            .await
            .unwrap();
        for v in &found {
            if !ids.contains(&v.id) {
                cl.volumes.lock().unwrap().push(v.id.clone());
            }
        }
        assert_eq!(
            found.len(),
            2,
            "duplicate volumes: {:?}",
            found.iter().map(|v| &v.id).collect::<Vec<_>>()
        );
        for round in 0..2 {
            for id in &ids {
                c.wait_volume(id, &["available"], Duration::from_secs(120))
                    .await
                    .unwrap();
                c.merge_volume_metadata(id, &[(format!("osm:round{round}"), "ok".to_string())].into())
                    .await
                    .unwrap();
                let a = blockdev::attach(&c, &s, &host, id).await.unwrap();
                if round == 0 {
                    write_at(&a.device, 0, &pattern(id, 1 << 20));
                } else {
                    assert_eq!(read_at(&a.device, 0, 1 << 20), pattern(id, 1 << 20));
                }
                blockdev::detach(&c, &s, &host, id).await.unwrap();
            }
        }
        let md = direct.get_volume(&ids[0]).await.unwrap().metadata;
        assert!(
            md.contains_key("osm:round0") && md.contains_key("osm:round1") && md.contains_key("osm:vm"),
            "{md:?}"
        );

        // Ports: a retried find-or-create with lost replies still yields one port.
        let net = c.find_network(&env("OSM_OS_NETWORK")).await.unwrap();
        let n = std::process::id() as u64 ^ 0xa5;
        let mac = format!("fa:16:3e:7e:{:02x}:{:02x}", (n >> 8) as u8, n as u8);
        let spec = PortSpec {
            network_id: net.id.clone(),
            name: unique("fport"),
            mac_address: Some(mac.clone()),
            tags: vec!["osm".into()],
            ..Default::default()
        };
        for _ in 0..3 {
            let p = c.ensure_port(&spec).await.unwrap();
            if !cl.ports.lock().unwrap().contains(&p.id) {
                cl.ports.lock().unwrap().push(p.id);
            }
        }
        let ports = direct.list_ports(&format!("mac_address={mac}")).await.unwrap();
        assert_eq!(ports.len(), 1, "{ports:?}");

        let st = proxy.stats.lock().unwrap();
        eprintln!(
            "through the fault proxy: {:.1}s, {} calls, faults {:?}",
            t.elapsed().as_secs_f32(),
            st.calls,
            st.faults
        );
        for f in [Fault::Http500, Fault::Http429, Fault::ResetBefore, Fault::ResetAfter] {
            assert!(
                st.faults.get(&f).copied().unwrap_or(0) > 0,
                "no {f:?} was injected: {:?}",
                st.faults
            );
        }
    })
    .await;
}

/// What the migration's last step does: a flavor (admin), a boot volume with image
/// metadata, a port with the source MAC, a server booted from the volume → ACTIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_boots_from_volumes_with_a_created_flavor_and_port() {
    let _quota = volumes_quota(1).await;
    use osm_agent::cloud::openstack::{BootVolume, FlavorSpec, ServerSpec};
    let admin = Client::new(
        CloudConfig::resolve(Some(&env("OSM_OS_ADMIN_CLOUD")), None, &process_env).unwrap(),
        policy(),
    )
    .unwrap();
    let c = user_client();
    let cl = Cleanup::default();
    let flavor_name = unique("flavor");
    let mut server_id = None;
    let mut flavor_id = None;
    guarded(&c, &cl, async {
        let spec = FlavorSpec {
            name: flavor_name.clone(),
            vcpus: 2,
            ram_mib: 2048,
            disk_gb: 0,
            is_public: true,
            extra_specs: [("hw:cpu_policy".to_string(), "shared".to_string())].into(),
        };
        let f = admin.create_flavor(&spec).await.unwrap();
        flavor_id = Some(f.id.clone());
        let again = admin.create_flavor(&spec).await.unwrap();
        assert_eq!(f.id, again.id, "a retried flavor create must not make a second flavor");
        let got = admin.get_flavor(&f.id).await.unwrap();
        assert_eq!((got.vcpus, got.ram), (2, 2048));
        assert_eq!(got.extra_specs.get("hw:cpu_policy").map(String::as_str), Some("shared"));

        let vol = c
            .create_volume(&VolumeSpec {
                name: unique("boot"),
                size_bytes: 1 << 30,
                volume_type: None,
                availability_zone: None,
                description: None,
                metadata: Metadata::new(),
                idempotency_key: Some(unique("boot-key")),
            })
            .await
            .unwrap();
        cl.volumes.lock().unwrap().push(vol.id.clone());
        c.wait_volume(&vol.id, &["available"], Duration::from_secs(120))
            .await
            .unwrap();
        c.set_bootable(&vol.id, true).await.unwrap();
        let net = c.find_network(&env("OSM_OS_NETWORK")).await.unwrap();
        let port = c
            .ensure_port(&PortSpec {
                network_id: net.id.clone(),
                name: unique("srv-port"),
                mac_address: Some("fa:16:3e:aa:bb:cc".into()),
                fixed_ips: vec![],
                security_group_ids: vec![],
                tags: vec!["osm".into()],
                description: None,
            })
            .await
            .unwrap();
        cl.ports.lock().unwrap().push(port.id.clone());
        let sspec = ServerSpec {
            name: unique("server"),
            flavor_id: f.id.clone(),
            volumes: vec![BootVolume {
                volume_id: vol.id.clone(),
                boot_index: Some(0),
            }],
            port_ids: vec![port.id.clone()],
            security_groups: vec![],
            availability_zone: None,
            key_name: None,
            user_data: None,
            metadata: [("osm_source_vm".to_string(), "web [prod] ünïcode 1".to_string())].into(),
            idempotency_key: Some(unique("srv-key")),
        };
        let s = c.create_server(&sspec).await.unwrap();
        server_id = Some(s.id.clone());
        let s2 = c.create_server(&sspec).await.unwrap();
        assert_eq!(s.id, s2.id, "a retried server create must not boot a second server");
        let active = c.wait_server_active(&s.id, Duration::from_secs(180)).await.unwrap();
        assert_eq!(active.status, "ACTIVE");
        assert_eq!(
            active.metadata.get("osm_source_vm").map(String::as_str),
            Some("web [prod] ünïcode 1")
        );
        c.delete_server(&s.id, Duration::from_secs(120)).await.unwrap();
        server_id = None;
    })
    .await;
    if let Some(id) = server_id {
        let _ = c.delete_server(&id, Duration::from_secs(120)).await;
    }
    if let Some(id) = flavor_id {
        admin.delete_flavor(&id).await.unwrap();
    }
}

/// Volumes and ports of one tag, read with 2 items per page: every one is found, none twice
/// (a single request would stop at the first page, as it did at 1000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_read_every_page_of_volumes_ports_and_flavors() {
    let _quota = volumes_quota(3).await;
    let t = Instant::now();
    let c = user_client().with_page_size(2);
    let cl = Cleanup::default();
    guarded(&c, &cl, async {
        let tag = unique("paging");
        let filter: Metadata = [("osm_test_paging".to_string(), tag.clone())].into();
        let mut volumes = Vec::new();
        for i in 0..3 {
            let v = c
                .create_volume(&VolumeSpec {
                    name: format!("{tag}-{i}"),
                    size_bytes: 1 << 30,
                    volume_type: None,
                    availability_zone: None,
                    description: None,
                    metadata: filter.clone(),
                    idempotency_key: None,
                })
                .await
                .unwrap();
            cl.volumes.lock().unwrap().push(v.id.clone());
            volumes.push(v.id);
        }
        let net = c.find_network(&env("OSM_OS_NETWORK")).await.unwrap();
        let mut ports = Vec::new();
        for i in 0..5 {
            let p = c
                .ensure_port(&PortSpec {
                    network_id: net.id.clone(),
                    name: format!("{tag}-{i}"),
                    mac_address: None,
                    fixed_ips: vec![],
                    security_group_ids: vec![],
                    tags: vec![tag.clone()],
                    description: None,
                })
                .await
                .unwrap();
            cl.ports.lock().unwrap().push(p.id.clone());
            ports.push(p.id);
        }
        let mut found: Vec<String> = c
            .find_volumes(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.id)
            .collect();
        found.sort();
        volumes.sort();
        assert_eq!(found, volumes, "Cinder volumes of the tag, 2 a page");
        let mut found: Vec<String> = c
            .list_ports(&format!("tags={tag}"))
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        found.sort();
        ports.sort();
        assert_eq!(found, ports, "Neutron ports of the tag, 2 a page");
        let flavors = c.list_flavors().await.unwrap();
        let mut ids: Vec<&str> = flavors.iter().map(|f| f.id.as_str()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), flavors.len(), "a flavor listed twice");
        for name in ["osm.small", "osm.medium", "osm.large"] {
            assert!(
                flavors.iter().any(|f| f.name == name),
                "{name} missing from Nova's flavors, 2 a page"
            );
        }
        assert!(
            matches!(c.find_network(&env("OSM_OS_NETWORK")).await, Ok(n) if n.id == net.id),
            "a network by name, 2 a page"
        );
    })
    .await;
    eprintln!("paging: {:.1}s", t.elapsed().as_secs_f32());
}

/// Nova pages a server's volume attachments by offset: with 2 a page, the boot volume and
/// three attached volumes of a test server are each listed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_attachments_read_every_page() {
    let _quota = volumes_quota(4).await;
    let t = Instant::now();
    let c = user_client().with_page_size(2);
    let cl = Cleanup::default();
    guarded(&c, &cl, async {
        let name = unique("att-page");
        let spec = server_spec(&c, &cl, &name).await;
        let ids = Mutex::new(Vec::new());
        let server = boot(&c, &cl, &spec, &ids).await.unwrap();
        let mut mine = vec![spec.volumes[0].volume_id.clone()];
        for i in 0..3 {
            let v = c
                .create_volume(&VolumeSpec {
                    name: format!("{name}-{i}"),
                    size_bytes: 1 << 30,
                    volume_type: None,
                    availability_zone: None,
                    description: None,
                    metadata: Metadata::new(),
                    idempotency_key: None,
                })
                .await
                .unwrap();
            cl.volumes.lock().unwrap().push(v.id.clone());
            c.wait_volume(&v.id, &["available"], Duration::from_secs(120))
                .await
                .unwrap();
            c.attach_volume(&server.id, &v.id).await.unwrap();
            c.wait_volume(&v.id, &["in-use"], Duration::from_secs(120))
                .await
                .unwrap();
            mine.push(v.id);
        }
        let mut listed: Vec<String> = c
            .server_attachments(&server.id)
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.volume_id)
            .collect();
        listed.sort();
        mine.sort();
        assert_eq!(listed, mine, "the attachments of server {}, 2 a page", server.id);
    })
    .await;
    eprintln!("attachment paging: {:.1}s", t.elapsed().as_secs_f32());
}

/// Make the bed's Nova fail the next `n` spawns of servers named `name` (see the bed's
/// README, "Spawn failures on demand").
fn fail_spawns(name: &str, n: u32) {
    let state = process_env("OSM_TESTBED_STATE").unwrap_or_else(|| "/var/tmp/osm-testbed".into());
    let dir = PathBuf::from(state).join("openstack/fail-spawn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), format!("{n}\n")).unwrap();
}

/// A bootable volume and a port for a test server named `name`.
async fn server_spec(c: &Client, cl: &Cleanup, name: &str) -> osm_agent::cloud::openstack::ServerSpec {
    use osm_agent::cloud::openstack::{BootVolume, ServerSpec};
    let vol = c
        .create_volume(&VolumeSpec {
            name: format!("{name}-boot"),
            size_bytes: 1 << 30,
            volume_type: None,
            availability_zone: None,
            description: None,
            metadata: Metadata::new(),
            idempotency_key: None,
        })
        .await
        .unwrap();
    cl.volumes.lock().unwrap().push(vol.id.clone());
    c.wait_volume(&vol.id, &["available"], Duration::from_secs(120))
        .await
        .unwrap();
    c.set_bootable(&vol.id, true).await.unwrap();
    let net = c.find_network(&env("OSM_OS_NETWORK")).await.unwrap();
    let port = c
        .ensure_port(&PortSpec {
            network_id: net.id.clone(),
            name: format!("{name}-port"),
            mac_address: None,
            fixed_ips: vec![],
            security_group_ids: vec![],
            tags: vec!["osm".into()],
            description: None,
        })
        .await
        .unwrap();
    cl.ports.lock().unwrap().push(port.id.clone());
    let flavor = c
        .list_flavors()
        .await
        .unwrap()
        .into_iter()
        .find(|f| f.name == "osm.small")
        .expect("the bed's flavor osm.small");
    ServerSpec {
        name: name.to_string(),
        flavor_id: flavor.id,
        volumes: vec![BootVolume {
            volume_id: vol.id.clone(),
            boot_index: Some(0),
        }],
        port_ids: vec![port.id.clone()],
        security_groups: vec![],
        availability_zone: None,
        key_name: None,
        user_data: None,
        metadata: Metadata::new(),
        idempotency_key: Some(format!("{name}-key")),
    }
}

/// Boot as the migration's boot step does, keeping every server id it reports.
async fn boot(
    c: &Client,
    cl: &Cleanup,
    spec: &osm_agent::cloud::openstack::ServerSpec,
    ids: &Mutex<Vec<String>>,
) -> Result<osm_agent::cloud::openstack::Server, Error> {
    let record = |id: &str| {
        ids.lock().unwrap().push(id.to_string());
        cl.servers.lock().unwrap().push(id.to_string());
        Ok::<(), String>(())
    };
    c.boot_server(spec, Duration::from_secs(180), &record).await
}

/// A first spawn in ERROR: that server is deleted and the server created once more; one
/// server is left, ACTIVE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_error_is_deleted_and_created_once_more() {
    let _quota = volumes_quota(1).await;
    let t = Instant::now();
    let c = user_client();
    let cl = Cleanup::default();
    guarded(&c, &cl, async {
        let name = unique("error-once");
        let spec = server_spec(&c, &cl, &name).await;
        fail_spawns(&name, 1);
        let ids = Mutex::new(Vec::new());
        let s = boot(&c, &cl, &spec, &ids).await.expect("the second server boots");
        assert_eq!(s.status, "ACTIVE");
        let ids = ids.into_inner().unwrap();
        assert_eq!(ids.len(), 2, "one server in ERROR, then one more: {ids:?}");
        assert_eq!(s.id, ids[1]);
        assert!(
            matches!(c.get_server(&ids[0]).await, Err(e) if e.is_not_found()),
            "the ERROR server {} must be gone",
            ids[0]
        );
    })
    .await;
    eprintln!("error once: {:.1}s", t.elapsed().as_secs_f32());
}

/// Two spawns in ERROR: the job's error carries Nova's fault message. A retry of the step
/// then finds that ERROR server, deletes it and boots a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_in_error_twice_fails_with_novas_fault_and_a_retry_boots_it() {
    let _quota = volumes_quota(1).await;
    let t = Instant::now();
    let c = user_client();
    let cl = Cleanup::default();
    guarded(&c, &cl, async {
        let name = unique("error-twice");
        let spec = server_spec(&c, &cl, &name).await;
        fail_spawns(&name, 2);
        let ids = Mutex::new(Vec::new());
        let err = boot(&c, &cl, &spec, &ids)
            .await
            .expect_err("two failed spawns")
            .to_string();
        eprintln!("two failures: {err}");
        assert!(
            err.contains("osm test bed: spawn failure injected"),
            "Nova's fault missing: {err}"
        );
        assert_eq!(ids.lock().unwrap().len(), 2, "created once more, not again");
        let again = Mutex::new(Vec::new());
        let s = boot(&c, &cl, &spec, &again).await.expect("a retry boots the server");
        assert_eq!(s.status, "ACTIVE");
        let again = again.into_inner().unwrap();
        let first = ids.into_inner().unwrap();
        assert_eq!(again.first(), first.last(), "the retry finds the ERROR server first");
        assert_eq!(again.len(), 2, "and makes one new server: {again:?}");
        for old in &first {
            assert!(
                matches!(c.get_server(old).await, Err(e) if e.is_not_found()),
                "server {old} in ERROR must be gone"
            );
        }
    })
    .await;
    eprintln!("error twice: {:.1}s", t.elapsed().as_secs_f32());
}
