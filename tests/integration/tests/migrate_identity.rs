//! Nothing lost, nothing crossed (issue "identity", cases 3, 6 and 7), on the test bed
//! (real agent, simulator, OpenStack; no conversion):
//! - cleanup of an old job is refused while a later job continues it, and leaves a newer
//!   fresh job's volumes and snapshot alone;
//! - a volume another agent made for the same moref and job id is not adopted (nor
//!   removed by cleanup);
//! - a VM and its moref cannot be migrated at once;
//! - an ambiguous VM name is refused, listing the candidates' inventory paths.
//!
//! The tests on osm-linux-2disk run one at a time (a lock of this binary only).
use std::sync::Mutex;
use std::time::Duration;

use osm_agent::cloud::openstack::{Metadata, VolumeSpec};
use osm_agent::cloud::vsphere::{self, snapshot::vm_ref};
use osm_api::JobState;
use osm_integration_tests::migration::*;
use osm_integration_tests::wait_for;

const VM: &str = "osm-linux-2disk";
static BED_VM: Mutex<()> = Mutex::new(());

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn warm_plan(dir: &std::path::Path, vm: &str) -> std::path::PathBuf {
    plan(
        dir,
        &[vm],
        "mode = \"warm\"\ncutover = \"manual\"\nskip_conversion = true",
    )
}

/// A second plan file (plan() always writes plan.toml).
fn plan_for(dir: &std::path::Path, vm: &str, file: &str) -> std::path::PathBuf {
    let p = warm_plan(dir, vm);
    let q = dir.join(file);
    std::fs::rename(&p, &q).unwrap();
    q
}

fn volumes(agent: &osm_integration_tests::agent::Agent, id: u64) -> Vec<String> {
    agent.job(id).migration.map(|m| m.volumes).unwrap_or_default()
}

fn cancel(agent: &osm_integration_tests::agent::Agent, id: u64) {
    let out = agent.osmctl(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "cancel {id}: {}", stderr(&out));
    let j = agent.wait_job(id, 120);
    assert_eq!(j.state, JobState::Cancelled, "{}", j.error);
}

fn cleanup(agent: &osm_integration_tests::agent::Agent, id: u64) -> std::process::Output {
    agent.osmctl(&["--output", "json", "cleanup", &id.to_string()])
}

async fn exists(c: &osm_agent::cloud::openstack::Client, volume: &str) -> bool {
    match c.get_volume(volume).await {
        Ok(v) => v.status != "deleting",
        Err(e) if e.is_not_found() => false,
        Err(e) => panic!("volume {volume}: {e}"),
    }
}

async fn snapshot_names(ep: &vsphere::Endpoint, name: &str) -> Vec<String> {
    vm(ep, name).await.snapshots.list.into_iter().map(|s| s.name).collect()
}

#[test]
fn cleanup_of_an_old_job_leaves_what_later_jobs_hold() {
    let _one = BED_VM.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, VM));
    let agent = bed_agent(tmp.path(), "sync_interval_seconds = 3600\nmax_concurrent = 4\n");
    let p = warm_plan(tmp.path(), VM);
    let c = cloud();
    let host = env("OSM_CONVERSION_HOST_ID");
    let mut snap = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Job O copies, is cancelled; job C continues it (same volumes) and waits.
        let o = migrate(&agent, &p);
        wait_cutover(&agent, o.id);
        let lineage_volumes = volumes(&agent, o.id);
        assert_eq!(lineage_volumes.len(), src.disks.len());
        cancel(&agent, o.id);
        let cont = migrate(&agent, &p);
        wait_cutover(&agent, cont.id);
        assert_eq!(
            volumes(&agent, cont.id),
            lineage_volumes,
            "job {} continues job {}",
            cont.id,
            o.id
        );

        // Cleanup of O while C holds its volumes: refused, naming C; nothing removed.
        let out = cleanup(&agent, o.id);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "cleanup of job {} passed while job {} runs",
            o.id,
            cont.id
        );
        assert!(err.contains(&format!("job {}", cont.id)), "{err}");
        for v in &lineage_volumes {
            assert!(
                rt.block_on(exists(&c, v)),
                "volume {v} of running job {} was removed",
                cont.id
            );
        }
        assert!(!agent.job(cont.id).state.is_terminal(), "{}", agent.job(cont.id).error);

        // C is cancelled; N starts afresh (new volumes) and waits; it holds a snapshot
        // (as mid-round: marked as N's lineage, this host and origin job N).
        cancel(&agent, cont.id);
        let out = migrate_with(&agent, &p, &["--fresh"]);
        assert!(out.status.success(), "migrate --fresh: {}", stderr(&out));
        let n: osm_api::MigrateReply = serde_json::from_slice(&out.stdout).unwrap();
        let n = n.jobs[0].id;
        wait_cutover(&agent, n);
        let newer = volumes(&agent, n);
        assert!(
            newer.iter().all(|v| !lineage_volumes.contains(v)),
            "--fresh made new volumes"
        );
        let name = format!("osm-sync-j{n}-1");
        let desc = format!(
            "[osm-managed] taken by osm-agent for a migration sync; osm removes it when the sync ends [osm-lineage {host}/{n}]"
        );
        snap = Some(
            rt.block_on(vsphere::with_client(&ep, async |vc: &vsphere::Client| {
                vc.create_snapshot(&vm_ref(&src.moref), &name, &desc, false).await
            }))
            .unwrap(),
        );

        // Cleanup of C (the old lineage's newest job): its volumes go, N's stay attached
        // here, N's snapshot stays, N still runs.
        let out = cleanup(&agent, cont.id);
        assert!(out.status.success(), "cleanup {}: {}", cont.id, stderr(&out));
        eprintln!("  cleanup {}: {}", cont.id, String::from_utf8_lossy(&out.stdout));
        for v in &lineage_volumes {
            assert!(
                !rt.block_on(exists(&c, v)),
                "volume {v} of the cleaned lineage is still there"
            );
        }
        for v in &newer {
            let vol = rt
                .block_on(c.get_volume(v))
                .unwrap_or_else(|e| panic!("job {n}'s volume {v}: {e}"));
            assert!(
                vol.attachments
                    .iter()
                    .any(|a| a.server_id.as_deref() == Some(host.as_str())),
                "job {n}'s volume {v} is no longer attached to the conversion host"
            );
        }
        assert!(
            rt.block_on(snapshot_names(&ep, VM)).contains(&name),
            "job {n}'s snapshot {name} was removed by the cleanup of job {}",
            cont.id
        );
        let j = agent.job(n);
        assert!(!j.state.is_terminal(), "job {n} ended: {} {}", j.state, j.error);

        // N's own release removes its lineage's snapshot, and its cleanup its volumes.
        cancel(&agent, n);
        assert!(
            !rt.block_on(snapshot_names(&ep, VM)).contains(&name),
            "job {n}'s release left {name}"
        );
        snap = None;
        let out = cleanup(&agent, n);
        assert!(out.status.success(), "cleanup {n}: {}", stderr(&out));
        for v in &newer {
            assert!(!rt.block_on(exists(&c, v)), "job {n}'s volume {v} survived its cleanup");
        }
    }));
    rt.block_on(async {
        if let Some(s) = &snap {
            let _ = vsphere::with_client(&ep, async |vc: &vsphere::Client| vc.remove_snapshot(s).await).await;
        }
        remove_migrated(&c, &src.moref, "").await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_volume_another_agent_made_for_the_same_moref_and_job_id_is_not_adopted() {
    let _one = BED_VM.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, VM));
    let agent = bed_agent(tmp.path(), "sync_interval_seconds = 3600\n");
    let p = warm_plan(tmp.path(), VM);
    let c = cloud();
    // What an agent on another conversion host made for its job 1 of this moref (its
    // first job, as this fresh agent's will be): the key and tags carry both.
    let disk = &src.disks[0];
    let metadata: Metadata = [
        ("osm_managed", "true".to_string()),
        ("osm_vm", src.moref.clone()),
        ("osm_host", "another-conversion-host".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let foreign = rt
        .block_on(c.create_volume(&VolumeSpec {
            name: "another-agents-volume".into(),
            size_bytes: disk.capacity_bytes,
            volume_type: None,
            availability_zone: None,
            description: Some("made by another osm-agent (test)".into()),
            metadata,
            idempotency_key: Some(format!("osm-{}-1-{}", src.moref, disk.key)),
        }))
        .unwrap();
    rt.block_on(c.wait_volume(&foreign.id, &["available"], Duration::from_secs(120)))
        .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let job = migrate(&agent, &p);
        assert_eq!(job.id, 1, "a fresh agent's first job");
        wait_cutover(&agent, job.id);
        let mine = volumes(&agent, job.id);
        assert!(
            !mine.contains(&foreign.id),
            "job {} adopted volume {} that another agent made (and copied into it)",
            job.id,
            foreign.id
        );
        let f = rt.block_on(c.get_volume(&foreign.id)).unwrap();
        assert!(f.attachments.is_empty(), "the other agent's volume was attached here");
        cancel(&agent, job.id);
        let out = cleanup(&agent, job.id);
        assert!(out.status.success(), "cleanup: {}", stderr(&out));
        assert!(
            rt.block_on(exists(&c, &foreign.id)),
            "cleanup of job {} removed the other agent's volume",
            job.id
        );
        for v in &mine {
            assert!(!rt.block_on(exists(&c, v)), "volume {v} survived the cleanup");
        }
    }));
    rt.block_on(async {
        let _ = c.delete_volume_wait(&foreign.id, Duration::from_secs(120)).await;
        let _ = std::fs::remove_file(volume_file(&foreign.id));
        remove_migrated(&c, &src.moref, "").await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_vm_and_its_moref_cannot_be_migrated_at_once() {
    let _one = BED_VM.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let src = rt.block_on(vm(&ep, VM));
    let agent = bed_agent(tmp.path(), "sync_interval_seconds = 3600\nmax_concurrent = 4\n");
    let by_name = plan_for(tmp.path(), VM, "name.toml");
    let by_moref = plan_for(tmp.path(), &src.moref, "moref.toml");
    let c = cloud();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // Started together (neither resolved yet): one holds the VM, the other fails at
        // its checks naming it.
        let a = migrate(&agent, &by_name);
        let out = migrate_with(&agent, &by_moref, &[]);
        if !out.status.success() {
            // Job a resolved its VM already: refused at once.
            assert!(stderr(&out).contains(&format!("job {}", a.id)), "{}", stderr(&out));
            eprintln!("  the second job was refused at the start (the first had resolved its VM)");
            cancel(&agent, a.id);
            let _ = cleanup(&agent, a.id);
            return;
        }
        let b: osm_api::MigrateReply = serde_json::from_slice(&out.stdout).unwrap();
        let b = &b.jobs[0];
        let (loser, winner) = wait_for(180, "one of the two jobs to fail", || {
            let (ja, jb) = (agent.job(a.id), agent.job(b.id));
            match (ja.state.is_terminal(), jb.state.is_terminal()) {
                (true, true) => panic!("both ended: {} / {}", ja.error, jb.error),
                (true, false) => Some((ja, jb)),
                (false, true) => Some((jb, ja)),
                _ => None,
            }
        });
        assert_eq!(loser.state, JobState::Failed);
        assert!(
            loser
                .error
                .contains(&format!("already being migrated by job {}", winner.id)),
            "{}",
            loser.error
        );
        assert!(loser.migration.map(|m| m.volumes).unwrap_or_default().is_empty());
        wait_cutover(&agent, winner.id);
        // Once resolved, the other spelling is refused at once.
        let other = if winner.id == a.id { &by_moref } else { &by_name };
        let out = migrate_with(&agent, other, &[]);
        assert!(!out.status.success(), "a second job of {VM} started");
        assert!(stderr(&out).contains(&format!("job {}", winner.id)), "{}", stderr(&out));
        cancel(&agent, winner.id);
        let out = cleanup(&agent, winner.id);
        assert!(out.status.success(), "cleanup: {}", stderr(&out));
    }));
    rt.block_on(async {
        remove_migrated(&c, &src.moref, "").await;
        restore_source(&ep, &src.moref).await;
    });
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn an_ambiguous_vm_name_is_refused_listing_the_candidates() {
    let tmp = osm_integration_tests::scratch();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ep = vc_endpoint(tmp.path());
    let agent = bed_agent(tmp.path(), "");
    let dup = format!("osm-ident-dup-{}", std::process::id());
    let made = rt.block_on(twins(&ep, tmp.path(), &dup));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let p = plan(tmp.path(), &[&dup], "mode = \"cold\"\nskip_conversion = true");
        let job = migrate(&agent, &p);
        let j = agent.wait_job(job.id, 300);
        if !j.state.is_terminal() {
            cancel(&agent, job.id);
        }
        assert_eq!(j.state, JobState::Failed, "{}", j.error);
        for (folder, _, _) in &made.folders {
            assert!(
                j.error
                    .contains(&format!("/{}/vm/{folder}/{dup}", env("OSM_VC_DATACENTER"))),
                "the error names each candidate: {}",
                j.error
            );
        }
        assert!(j.migration.map(|m| m.volumes).unwrap_or_default().is_empty());
        // A folder in the plan picks one of them.
        let (folder, _, _) = &made.folders[0];
        let text = std::fs::read_to_string(&p)
            .unwrap()
            .replace("[source]\n", &format!("[source]\nfolder = \"{folder}\"\n"));
        std::fs::write(&p, text).unwrap();
        let out = agent.osmctl(&["--output", "json", "migrate", "--plan", p.to_str().unwrap(), "--fresh"]);
        if out.status.success() {
            let r: osm_api::MigrateReply = serde_json::from_slice(&out.stdout).unwrap();
            let j = agent.wait_job(r.jobs[0].id, 300);
            assert!(
                !j.error.contains("VMs are named"),
                "the folder did not pick one: {}",
                j.error
            );
            let _ = cleanup(&agent, j.id);
        } else {
            panic!("migrate with source.folder: {}", stderr(&out));
        }
    }));
    rt.block_on(made.remove(&ep, tmp.path()));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// Two diskless, powered-off VMs named `name`, each in a new folder of the datacenter's
/// VM folder (made with raw vim25 calls: the agent's client has no CreateVM).
struct Twins {
    /// (folder name, folder moref, VM moref)
    folders: Vec<(String, String, String)>,
}

async fn twins(ep: &vsphere::Endpoint, dir: &std::path::Path, name: &str) -> Twins {
    let (vm_folder, pool) = vsphere::with_client(ep, async |c: &vsphere::Client| {
        let root = c.sc.root_folder.clone();
        let dcs = c.view(&root, &[("Datacenter", &["name", "vmFolder"])]).await?;
        let dc = dcs
            .iter()
            .find(|o| o.text("name") == env("OSM_VC_DATACENTER"))
            .expect("the bed's datacenter");
        let src = vm(ep, VM).await;
        let pool = c.properties(&vm_ref(&src.moref), &["resourcePool"]).await?;
        Ok((
            dc.moref("vmFolder").unwrap().value,
            pool.moref("resourcePool").unwrap().value,
        ))
    })
    .await
    .unwrap();
    let s = Soap::login(dir).await;
    let mut folders = Vec::new();
    for i in 0..2 {
        let fname = format!("{name}-f{i}");
        let f = s
            .call(&format!(
                "<CreateFolder xmlns=\"urn:vim25\"><_this type=\"Folder\">{vm_folder}</_this><name>{fname}</name></CreateFolder>"
            ))
            .await;
        let fmoref = between(&f, "<returnval type=\"Folder\">", "<");
        s.call(&format!(
            "<CreateVM_Task xmlns=\"urn:vim25\"><_this type=\"Folder\">{fmoref}</_this><config><name>{name}</name><guestId>otherGuest64</guestId><files><vmPathName>[{}]</vmPathName></files><numCPUs>1</numCPUs><memoryMB>128</memoryMB></config><pool type=\"ResourcePool\">{pool}</pool></CreateVM_Task>",
            env("OSM_VC_DATASTORE")
        ))
        .await;
        folders.push((fname, fmoref, String::new()));
    }
    let mut found = Vec::new();
    for _ in 0..120 {
        let inv = vsphere::with_client(ep, async |c: &vsphere::Client| vsphere::inventory::discover(c).await)
            .await
            .unwrap();
        found = inv.vms.into_iter().filter(|v| v.name == name).collect();
        if found.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(found.len(), 2, "the two VMs named {name}");
    for (f, _, m) in &mut folders {
        *m = found
            .iter()
            .find(|v| v.inventory_path.contains(&format!("/{f}/")))
            .unwrap()
            .moref
            .clone();
    }
    Twins { folders }
}

impl Twins {
    async fn remove(&self, ep: &vsphere::Endpoint, dir: &std::path::Path) {
        let s = Soap::login(dir).await;
        for (_, f, m) in &self.folders {
            s.call(&format!(
                "<Destroy_Task xmlns=\"urn:vim25\"><_this type=\"VirtualMachine\">{m}</_this></Destroy_Task>"
            ))
            .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            s.call(&format!(
                "<Destroy_Task xmlns=\"urn:vim25\"><_this type=\"Folder\">{f}</_this></Destroy_Task>"
            ))
            .await;
        }
        let _ = ep;
    }
}

fn between(s: &str, start: &str, end: &str) -> String {
    let i = s.find(start).unwrap_or_else(|| panic!("no {start} in {s}")) + start.len();
    s[i..][..s[i..].find(end).unwrap()].to_string()
}

/// A raw vim25 session (cookie) for the calls the agent's client does not make.
struct Soap {
    http: reqwest::Client,
    cookie: String,
}

impl Soap {
    async fn login(dir: &std::path::Path) -> Soap {
        let ca = std::fs::read(env("OSM_VC_CA_FILE")).unwrap();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let mut s = Soap {
            http,
            cookie: String::new(),
        };
        let pw = std::fs::read_to_string(password_file(dir)).unwrap();
        let esc = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let body = format!(
            "<Login xmlns=\"urn:vim25\"><_this type=\"SessionManager\">SessionManager</_this><userName>{}</userName><password>{}</password></Login>",
            esc(&env("OSM_VC_USER")),
            esc(pw.trim_end())
        );
        let r = s.post(&body).await;
        s.cookie = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with("vmware_soap_session"))
            .and_then(|v| v.split(';').next())
            .expect("a session cookie")
            .to_string();
        s
    }

    async fn post(&self, body: &str) -> reqwest::Response {
        let env_xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
        );
        let mut req = self
            .http
            .post(env("OSM_VC_URL"))
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(env_xml);
        if !self.cookie.is_empty() {
            req = req.header("Cookie", &self.cookie);
        }
        req.send().await.unwrap()
    }

    async fn call(&self, body: &str) -> String {
        let r = self.post(body).await;
        let status = r.status();
        let text = r.text().await.unwrap();
        assert!(status.is_success(), "{body}: {status} {text}");
        text
    }
}
