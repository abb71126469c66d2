//! The D-Bus API on a private system-type bus carrying the project's policy file.

use futures_util::StreamExt;
use osm_api::{JobProxy, ManagerProxy, JOB_IFACE, MANAGER_IFACE, ROOT_PATH};
use osm_integration_tests::agent::{Agent, Options};
use osm_integration_tests::bus::Bus;
use osm_integration_tests::disk;

const MIB: u64 = 1 << 20;

fn start(tmp: &std::path::Path) -> (Bus, Agent) {
    let bus = Bus::start(&tmp.join("bus"));
    let agent = Agent::start(
        tmp,
        Options {
            dbus: Some(bus.address.clone()),
            ..Default::default()
        },
    );
    (bus, agent)
}

async fn connect(address: &str) -> zbus::Connection {
    zbus::connection::Builder::address(address)
        .unwrap()
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn copy_over_dbus_signals_completion_and_exposes_properties() {
    let tmp = osm_integration_tests::scratch();
    let (bus, agent) = start(tmp.path());
    let src = tmp.path().join("src");
    disk::image(&src, 32 * MIB, &[(MIB, 5 * MIB)], 8);
    let out = tmp.path().join("out");

    let conn = connect(&bus.address).await;
    let manager = ManagerProxy::new(&conn).await.unwrap();
    assert_eq!(manager.version().await.unwrap(), env!("CARGO_PKG_VERSION"));
    // Subscribe before starting so the signal cannot be missed.
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface(JOB_IFACE)
        .unwrap()
        .member("Completed")
        .unwrap()
        .build();
    let mut completed = zbus::MessageStream::for_match_rule(rule, &conn, None).await.unwrap();
    let path = manager
        .start_copy(
            &format!("file:{}", src.display()),
            out.to_str().unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!(path.as_str(), osm_api::job_path(1));
    let Ok(msg) = tokio::time::timeout(std::time::Duration::from_secs(60), completed.next()).await else {
        panic!("no Completed signal; agent log:\n{}", agent.stderr());
    };
    let msg = msg.unwrap().unwrap();
    assert_eq!(msg.header().path().unwrap().as_str(), path.as_str());
    let (state, error): (String, String) = msg.body().deserialize().unwrap();
    assert_eq!((state.as_str(), error.as_str()), ("succeeded", ""));
    let job = JobProxy::builder(&conn)
        .path(path)
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(job.state().await.unwrap(), "succeeded");
    assert_eq!(job.bytes_total().await.unwrap(), 32 * MIB);
    assert_eq!(job.progress().await.unwrap(), 1.0);
    assert_eq!(disk::sha256(&out, 32 * MIB), disk::sha256(&src, 32 * MIB));

    // osmctl over D-Bus sees the same job and maps errors to codes.
    let st = agent.osmctl(&["--dbus", "--output", "json", "status", "1"]);
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    assert!(String::from_utf8_lossy(&st.stdout).contains("\"succeeded\""));
    let st = agent.osmctl(&["--dbus", "status", "42"]);
    assert!(String::from_utf8_lossy(&st.stderr).contains("there is no job 42"));
    let bad = manager
        .start_copy("ftp://nowhere", "/tmp/x", Default::default())
        .await
        .unwrap_err();
    assert!(
        bad.to_string().contains("InvalidArgument") || format!("{bad:?}").contains("InvalidArgument"),
        "{bad:?}"
    );
}

#[test]
fn the_bus_policy_lets_others_read_but_not_start() {
    let tmp = osm_integration_tests::scratch();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_bus, agent) = start(tmp.path());
    let src = tmp.path().join("src");
    disk::image(&src, 4 * MIB, &[(0, MIB)], 2);
    let out = agent.osmctl_as_nobody(&[
        "--dbus",
        "copy",
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        "/var/tmp/osm-nobody-x",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("D-Bus policy refused"), "{err}");
    let out = agent.osmctl(&[
        "--dbus",
        "copy",
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        tmp.path().join("o").to_str().unwrap(),
        "--wait",
    ]);
    assert!(
        out.status.success(),
        "root may copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent.osmctl_as_nobody(&["--dbus", "status"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("succeeded"));
}

/// Our interfaces, as introspected from the running service, must equal the committed
/// docs/dbus/io.github.os_migrate.Agent1.xml (OSM_UPDATE_GOLDEN=1 rewrites it).
#[tokio::test(flavor = "multi_thread")]
async fn introspection_matches_the_committed_xml() {
    let tmp = osm_integration_tests::scratch();
    let (bus, agent) = start(tmp.path());
    let src = tmp.path().join("src");
    disk::image(&src, MIB, &[], 0);
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    agent.wait_job(job.id, 30);
    let conn = connect(&bus.address).await;
    let mut xml = String::from("<node>\n");
    for (path, iface) in [
        (ROOT_PATH.to_string(), MANAGER_IFACE),
        (osm_api::job_path(job.id), JOB_IFACE),
    ] {
        let p = zbus::fdo::IntrospectableProxy::builder(&conn)
            .destination(osm_api::BUS_NAME)
            .unwrap()
            .path(path)
            .unwrap()
            .build()
            .await
            .unwrap();
        xml += &interface_block(&p.introspect().await.unwrap(), iface);
    }
    xml += "</node>\n";
    let golden = osm_integration_tests::repo_root().join("docs/dbus/io.github.os_migrate.Agent1.xml");
    if std::env::var_os("OSM_UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &xml).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert_eq!(
        xml,
        want,
        "the D-Bus API changed: review, then run with OSM_UPDATE_GOLDEN=1 to update {}",
        golden.display()
    );
}

/// The `<interface name="…">…</interface>` block of `name`, lines trimmed.
fn interface_block(xml: &str, name: &str) -> String {
    let start = xml
        .find(&format!("<interface name=\"{name}\">"))
        .unwrap_or_else(|| panic!("{name} missing in {xml}"));
    let end = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
    xml[start..end].lines().map(|l| format!("  {}\n", l.trim())).collect()
}

/// Migration calls over D-Bus (no vSphere here: what can be checked without one): a bad
/// plan is InvalidArgument, copies refuse Sync/Cutover/Cleanup, Logs reads the job's
/// file, Migration is "" for a copy; osmctl --dbus does the same.
#[tokio::test(flavor = "multi_thread")]
async fn migration_calls_over_dbus() {
    let tmp = osm_integration_tests::scratch();
    let (bus, agent) = start(tmp.path());
    let src = tmp.path().join("src");
    disk::image(&src, 4 * MIB, &[(0, MIB)], 4);
    let job = agent.copy(&[
        "--from",
        &format!("file:{}", src.display()),
        "--to",
        tmp.path().join("o").to_str().unwrap(),
    ]);
    agent.wait_job(job.id, 60);

    let conn = connect(&bus.address).await;
    let manager = ManagerProxy::new(&conn).await.unwrap();
    let err = manager
        .migrate(
            "vms = [\"a\"]\nmdoe = 1\n",
            "/etc/osm/plans.d/p.toml",
            &[],
            false,
            false,
        )
        .await
        .unwrap_err();
    let zbus::Error::MethodError(name, msg, _) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(name.as_str(), "io.github.os_migrate.Agent1.Error.InvalidArgument");
    let msg = msg.clone().unwrap_or_default();
    assert!(msg.contains("/etc/osm/plans.d/p.toml") && msg.contains("mdoe"), "{msg}");

    let j = JobProxy::builder(&conn)
        .path(osm_api::job_path(job.id))
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    assert_eq!(j.migration().await.unwrap(), "");
    for err in [
        j.sync().await.unwrap_err(),
        j.cutover("").await.unwrap_err(),
        j.cleanup().await.map(drop).unwrap_err(),
    ] {
        let zbus::Error::MethodError(name, msg, _) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(name.as_str(), "io.github.os_migrate.Agent1.Error.InvalidArgument");
        assert!(
            msg.as_deref().unwrap_or("").contains("is a copy, not a migration"),
            "{msg:?}"
        );
    }
    let logs = j.logs(0).await.unwrap();
    assert!(logs.contains("copy complete"), "{logs}");
    assert_eq!(j.logs(1).await.unwrap().lines().count(), 1);

    let id = job.id.to_string();
    let out = agent.osmctl(&["--dbus", "logs", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("copy complete"));
    let out = agent.osmctl(&["--dbus", "cutover", &id]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a copy, not a migration"));
    let out = agent.osmctl(&["--dbus", "sync", "42"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no job 42"));
    let plan = tmp.path().join("bad.toml");
    std::fs::write(&plan, "vms = [\"a\"]\nmdoe = 1\n").unwrap();
    let out = agent.osmctl(&["--dbus", "migrate", "--plan", plan.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("mdoe"), "{err}");
    let st = agent.osmctl(&["--dbus", "--output", "json", "status", &id]);
    assert!(!String::from_utf8_lossy(&st.stdout).contains("migration"));
}

#[test]
fn the_bus_policy_refuses_migration_calls_from_others() {
    let tmp = osm_integration_tests::scratch();
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let (_bus, agent) = start(tmp.path());
    let plan = tmp.path().join("p.toml");
    std::fs::write(&plan, "vms = [\"a\"]\n").unwrap();
    std::fs::set_permissions(&plan, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = agent.osmctl_as_nobody(&["--dbus", "migrate", "--plan", plan.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("D-Bus policy refused"), "{err}");
}
