//! The D-Bus API: a Manager object, one Job object per job, and the ObjectManager.
//! The bus policy (systemd/io.github.os_migrate.Agent1.conf) admits only root and
//! group osm to methods; the agent checks the caller's credentials again.
use std::collections::HashMap;

use osm_api::{ApiError, CopyRequest, ErrorCode, Extent, JobInfo, MigrateRequest, BUS_NAME, ROOT_PATH};
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{interface, Connection};

use crate::config::Bus;
use crate::jobs::{Caller, Engine, Event};

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "io.github.os_migrate.Agent1.Error")]
pub enum DbusError {
    #[zbus(error)]
    ZBus(zbus::Error),
    InvalidArgument(String),
    NotFound(String),
    PermissionDenied(String),
    SourceUnreachable(String),
    TargetTooSmall(String),
    TargetNotWritable(String),
    InvalidState(String),
    Internal(String),
    VsphereAuth(String),
    VsphereUnreachable(String),
    VsphereTls(String),
    VsphereFault(String),
}

impl From<crate::error::Error> for DbusError {
    fn from(e: crate::error::Error) -> Self {
        let ApiError { code, message: m } = ApiError::from(&e);
        match code {
            ErrorCode::InvalidArgument => DbusError::InvalidArgument(m),
            ErrorCode::NotFound => DbusError::NotFound(m),
            ErrorCode::PermissionDenied => DbusError::PermissionDenied(m),
            ErrorCode::SourceUnreachable => DbusError::SourceUnreachable(m),
            ErrorCode::TargetTooSmall => DbusError::TargetTooSmall(m),
            ErrorCode::TargetNotWritable => DbusError::TargetNotWritable(m),
            ErrorCode::InvalidState => DbusError::InvalidState(m),
            ErrorCode::Internal => DbusError::Internal(m),
            ErrorCode::VsphereAuth => DbusError::VsphereAuth(m),
            ErrorCode::VsphereUnreachable => DbusError::VsphereUnreachable(m),
            ErrorCode::VsphereTls => DbusError::VsphereTls(m),
            ErrorCode::VsphereFault => DbusError::VsphereFault(m),
        }
    }
}

/// The calling process's credentials, as the bus daemon vouches for them.
async fn caller(conn: &Connection, hdr: &Header<'_>) -> Result<Caller, DbusError> {
    let sender = hdr
        .sender()
        .ok_or_else(|| DbusError::PermissionDenied("message without sender".into()))?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let name = zbus::names::BusName::from(sender.to_owned());
    let uid = dbus
        .get_connection_unix_user(name.clone())
        .await
        .map_err(|e| DbusError::ZBus(e.into()))?;
    let pid = dbus.get_connection_unix_process_id(name).await.ok();
    Ok(Caller::from_pid(uid, u32::MAX, pid.map(|p| p as i32)))
}

struct Manager {
    engine: Engine,
}

#[interface(name = "io.github.os_migrate.Agent1.Manager")]
impl Manager {
    /// Start a copy job; returns its object path at once.
    /// Options: "extents" a(tt) (offset, length), "target-is-zero" b, "connections" u,
    /// and for https:// sources "user" s, "password-file" s, "ca-file" s.
    async fn start_copy(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        source: String,
        target: String,
        options: HashMap<String, OwnedValue>,
    ) -> Result<OwnedObjectPath, DbusError> {
        let who = caller(conn, &hdr).await?;
        let mut req = CopyRequest {
            source,
            target,
            extents: None,
            target_is_zero: false,
            connections: None,
            http: None,
        };
        for (k, v) in options {
            let bad = |k: &str| DbusError::InvalidArgument(format!("option '{k}' has the wrong type"));
            match k.as_str() {
                "extents" => {
                    let v: Vec<(u64, u64)> = v.try_into().map_err(|_| bad(&k))?;
                    req.extents = Some(
                        v.into_iter()
                            .map(|(offset, length)| Extent { offset, length })
                            .collect(),
                    );
                }
                "target-is-zero" => req.target_is_zero = v.try_into().map_err(|_| bad(&k))?,
                "connections" => req.connections = Some(v.try_into().map_err(|_| bad(&k))?),
                "user" | "password-file" | "ca-file" => {
                    let v: String = v.try_into().map_err(|_| bad(&k))?;
                    let h = req.http.get_or_insert_with(Default::default);
                    match k.as_str() {
                        "user" => h.user = Some(v),
                        "password-file" => h.password_file = Some(v),
                        _ => h.ca_file = Some(v),
                    }
                }
                other => {
                    return Err(DbusError::InvalidArgument(format!(
                        "unknown option '{other}' (known: extents, target-is-zero, connections, user, password-file, ca-file)"
                    )))
                }
            }
        }
        let info = self.engine.start_copy(&who, req)?;
        Ok(path(info.id))
    }

    /// vCenter's VMs as a JSON list of VmInfo (docs/api.md): all, or those named (name
    /// or moref) in `vms`, under inventory folder `folder` ("" for everywhere).
    async fn discover(&self, vms: Vec<String>, folder: String) -> Result<String, DbusError> {
        let folder = (!folder.is_empty()).then_some(folder);
        let v = crate::api::vsphere::discover(&self.engine, vms, folder).await?;
        Ok(serde_json::to_string(&v).expect("serializes"))
    }

    /// Pre-migration checks as a JSON list of CheckReport; `enable_cbt` (root or group
    /// osm) first turns CBT on where it is off.
    async fn check(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        vms: Vec<String>,
        enable_cbt: bool,
    ) -> Result<String, DbusError> {
        let who = caller(conn, &hdr).await?;
        let v = crate::api::vsphere::check(&self.engine, &who, vms, enable_cbt).await?;
        Ok(serde_json::to_string(&v).expect("serializes"))
    }

    /// Start one migration job per VM of a plan (its text; `plan_path` names it in
    /// messages and picks the format: `*.yaml`/`*.yml` the seed's vars.yaml, else TOML);
    /// `vms` empty means all of the plan's VMs; `again` migrates VMs whose newest migration
    /// succeeded once more (else refused); `fresh` starts afresh instead of continuing a
    /// failed or cancelled migration. Returns the jobs and the plan's warnings.
    #[zbus(out_args("jobs", "warnings"))]
    #[allow(clippy::too_many_arguments)] // the D-Bus method's arguments, plus zbus's header and connection
    async fn migrate(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        plan: String,
        plan_path: String,
        vms: Vec<String>,
        again: bool,
        fresh: bool,
    ) -> Result<(Vec<OwnedObjectPath>, Vec<String>), DbusError> {
        let who = caller(conn, &hdr).await?;
        let req = MigrateRequest {
            plan,
            plan_path,
            vms,
            again,
            fresh,
        };
        let reply = self.engine.start_migrate(&who, req)?;
        Ok((reply.jobs.iter().map(|j| path(j.id)).collect(), reply.warnings))
    }

    async fn list_jobs(&self) -> Vec<OwnedObjectPath> {
        self.engine.list().iter().map(|j| path(j.id)).collect()
    }

    #[zbus(property)]
    async fn version(&self) -> String {
        env!("CARGO_PKG_VERSION").to_string()
    }
}

/// A job object. Its report sits behind a plain mutex so the publisher updates it under
/// the object server's *read* lock: a long method call (Cleanup) holds that read lock for
/// its whole run, and a write lock would stall every job's updates behind it.
struct Job {
    id: u64,
    info: std::sync::Mutex<JobInfo>,
    engine: Engine,
}

impl Job {
    fn new(info: JobInfo, engine: &Engine) -> Job {
        Job {
            id: info.id,
            info: std::sync::Mutex::new(info),
            engine: engine.clone(),
        }
    }

    fn info(&self) -> std::sync::MutexGuard<'_, JobInfo> {
        self.info.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[interface(name = "io.github.os_migrate.Agent1.Job")]
impl Job {
    async fn cancel(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let who = caller(conn, &hdr).await?;
        self.engine.cancel(&who, self.id)?;
        Ok(())
    }

    /// Run one more delta round of a warm migration now.
    async fn sync(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<(), DbusError> {
        let who = caller(conn, &hdr).await?;
        self.engine.sync_now(&who, self.id)?;
        Ok(())
    }

    /// Cut a warm migration over now (`at` "") or at `at` (RFC 3339).
    async fn cutover(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        at: String,
    ) -> Result<(), DbusError> {
        let who = caller(conn, &hdr).await?;
        let at = (!at.is_empty()).then_some(at);
        self.engine.request_cutover(&who, self.id, at)?;
        Ok(())
    }

    /// Remove what osm created for this failed or cancelled migration; the report as JSON
    /// (`CleanupReport`, docs/api.md).
    async fn cleanup(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
    ) -> Result<String, DbusError> {
        let who = caller(conn, &hdr).await?;
        let report = self.engine.cleanup(&who, self.id).await?;
        Ok(serde_json::to_string(&report).expect("serializes"))
    }

    /// The last `lines` lines of the job's log (0: the agent's default, 200).
    async fn logs(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        #[zbus(connection)] conn: &Connection,
        lines: u32,
    ) -> Result<String, DbusError> {
        let who = caller(conn, &hdr).await?;
        Ok(self.engine.logs(&who, self.id, (lines > 0).then_some(lines))?)
    }

    /// Emitted once when the job reaches succeeded, failed or cancelled.
    #[zbus(signal)]
    async fn completed(emitter: &SignalEmitter<'_>, state: &str, error: &str) -> zbus::Result<()>;

    #[zbus(property)]
    async fn id(&self) -> u64 {
        self.id
    }
    #[zbus(property)]
    async fn kind(&self) -> String {
        self.info().kind.clone()
    }
    #[zbus(property)]
    async fn state(&self) -> String {
        self.info().state.as_str().to_string()
    }
    #[zbus(property)]
    async fn step(&self) -> String {
        self.info().step.clone()
    }
    #[zbus(property)]
    async fn progress(&self) -> f64 {
        self.info().progress
    }
    #[zbus(property)]
    async fn bytes_done(&self) -> u64 {
        self.info().bytes_done
    }
    #[zbus(property)]
    async fn bytes_total(&self) -> u64 {
        self.info().bytes_total
    }
    #[zbus(property)]
    async fn bytes_read(&self) -> u64 {
        self.info().bytes_read
    }
    #[zbus(property)]
    async fn bytes_written(&self) -> u64 {
        self.info().bytes_written
    }
    #[zbus(property)]
    async fn rate(&self) -> u64 {
        self.info().rate
    }
    #[zbus(property)]
    async fn error(&self) -> String {
        self.info().error.clone()
    }
    #[zbus(property)]
    async fn source(&self) -> String {
        self.info().source.clone()
    }
    #[zbus(property)]
    async fn target(&self) -> String {
        self.info().target.clone()
    }
    /// A migration job's report as JSON (`MigrationInfo`, docs/api.md); "" for copies.
    #[zbus(property)]
    async fn migration(&self) -> String {
        self.info()
            .migration
            .as_ref()
            .map(|m| serde_json::to_string(m).expect("serializes"))
            .unwrap_or_default()
    }
}

fn path(id: u64) -> OwnedObjectPath {
    OwnedObjectPath::try_from(osm_api::job_path(id)).expect("valid object path")
}

/// Connect, export every known job, take the well-known name.
pub async fn connect(bus: &Bus, engine: &Engine) -> zbus::Result<Connection> {
    let builder = match bus {
        Bus::System => zbus::connection::Builder::system()?,
        Bus::Address(a) => zbus::connection::Builder::address(a.as_str())?,
        Bus::None => unreachable!("callers skip D-Bus when disabled"),
    };
    let conn = builder
        .serve_at(ROOT_PATH, Manager { engine: engine.clone() })?
        .serve_at(ROOT_PATH, zbus::fdo::ObjectManager)?
        .build()
        .await?;
    for info in engine.list() {
        conn.object_server()
            .at(osm_api::job_path(info.id), Job::new(info, engine))
            .await?;
    }
    conn.request_name(BUS_NAME).await?;
    Ok(conn)
}

/// Mirror engine events onto job objects: add, update properties, signal completion.
pub async fn publish(conn: Connection, engine: Engine) {
    let mut rx = engine.subscribe();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(_) => return,
        };
        if let Err(e) = apply(&conn, &engine, ev).await {
            tracing::warn!("D-Bus update: {e}");
        }
    }
}

async fn apply(conn: &Connection, engine: &Engine, ev: Event) -> zbus::Result<()> {
    let server = conn.object_server();
    match ev {
        Event::Added(info) => {
            server.at(osm_api::job_path(info.id), Job::new(info, engine)).await?;
        }
        Event::Changed(info) => {
            let iface = server.interface::<_, Job>(osm_api::job_path(info.id)).await?;
            let job = iface.get().await;
            let old = std::mem::replace(&mut *job.info(), info.clone());
            let em = iface.signal_emitter();
            let new = &info;
            if old.state != new.state {
                job.state_changed(em).await?;
            }
            if old.step != new.step {
                job.step_changed(em).await?;
            }
            if old.error != new.error {
                job.error_changed(em).await?;
            }
            if old.bytes_done != new.bytes_done || old.bytes_total != new.bytes_total {
                job.progress_changed(em).await?;
                job.bytes_done_changed(em).await?;
                job.bytes_total_changed(em).await?;
                job.bytes_read_changed(em).await?;
                job.bytes_written_changed(em).await?;
            }
            if old.rate != new.rate {
                job.rate_changed(em).await?;
            }
            if old.migration != new.migration {
                job.migration_changed(em).await?;
            }
        }
        Event::Completed(info) => {
            let iface = server.interface::<_, Job>(osm_api::job_path(info.id)).await?;
            Job::completed(iface.signal_emitter(), info.state.as_str(), &info.error).await?;
        }
    }
    Ok(())
}
