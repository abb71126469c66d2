//! One client over both transports: the agent's Unix socket or D-Bus.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use osm_api::vsphere::{CheckReport, VmInfo};
use osm_api::{
    ApiError, CleanupReport, CopyRequest, ErrorCode, JobInfo, JobProxy, JobState, ManagerProxy, MigrateReply,
    MigrateRequest, Reply, Request,
};
use zbus::zvariant::Value;

pub enum Client {
    Socket {
        path: PathBuf,
        stream: Option<BufReader<UnixStream>>,
    },
    DBus(zbus::Connection),
}

impl Client {
    pub fn socket(path: PathBuf) -> Client {
        Client::Socket { path, stream: None }
    }

    pub async fn dbus(address: Option<&str>) -> anyhow::Result<Client> {
        let b = match address {
            Some(a) => zbus::connection::Builder::address(a)?,
            None => zbus::connection::Builder::system()?,
        };
        Ok(Client::DBus(b.build().await.context("connecting to D-Bus")?))
    }

    fn call(&mut self, req: &Request) -> anyhow::Result<serde_json::Value> {
        let Client::Socket { path, stream } = self else {
            unreachable!("socket only")
        };
        if stream.is_none() {
            let s = UnixStream::connect(&*path).with_context(|| {
                format!("cannot reach osm-agent at {}; is it running (systemctl status osm-agent)? Use --socket to point elsewhere", path.display())
            })?;
            *stream = Some(BufReader::new(s));
        }
        let s = stream.as_mut().expect("connected");
        let mut line = serde_json::to_vec(req)?;
        line.push(b'\n');
        s.get_mut().write_all(&line).context("sending to osm-agent")?;
        let mut buf = String::new();
        if s.read_line(&mut buf).context("reading from osm-agent")? == 0 {
            bail!("osm-agent closed the connection");
        }
        let reply: Reply = serde_json::from_str(&buf).context("osm-agent sent a malformed reply")?;
        match (reply.ok, reply.result, reply.error) {
            (true, Some(v), _) => Ok(v),
            (_, _, Some(e)) => Err(e.into()),
            _ => bail!("osm-agent sent a reply with neither result nor error"),
        }
    }

    pub async fn start_copy(&mut self, req: CopyRequest) -> anyhow::Result<JobInfo> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::StartCopy(req))?)?),
            Client::DBus(conn) => {
                let m = ManagerProxy::new(conn).await?;
                let mut opts: HashMap<&str, Value> = HashMap::new();
                if let Some(ex) = &req.extents {
                    opts.insert(
                        "extents",
                        Value::from(ex.iter().map(|e| (e.offset, e.length)).collect::<Vec<_>>()),
                    );
                }
                opts.insert("target-is-zero", Value::from(req.target_is_zero));
                if let Some(n) = req.connections {
                    opts.insert("connections", Value::from(n));
                }
                if let Some(h) = &req.http {
                    let fields = [
                        ("user", &h.user),
                        ("password-file", &h.password_file),
                        ("ca-file", &h.ca_file),
                    ];
                    for (k, v) in fields {
                        if let Some(v) = v {
                            opts.insert(k, Value::from(v.as_str()));
                        }
                    }
                }
                let path = m.start_copy(&req.source, &req.target, opts).await.map_err(dbus_err)?;
                let conn = conn.clone();
                job_from_dbus(&conn, path.as_str()).await
            }
        }
    }

    pub async fn list(&mut self) -> anyhow::Result<Vec<JobInfo>> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::ListJobs)?)?),
            Client::DBus(conn) => {
                let conn = conn.clone();
                let paths = ManagerProxy::new(&conn).await?.list_jobs().await.map_err(dbus_err)?;
                let mut v = Vec::new();
                for p in paths {
                    v.push(job_from_dbus(&conn, p.as_str()).await?);
                }
                Ok(v)
            }
        }
    }

    pub async fn get(&mut self, id: u64) -> anyhow::Result<JobInfo> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::GetJob { id })?)?),
            Client::DBus(conn) => {
                let conn = conn.clone();
                let paths = ManagerProxy::new(&conn).await?.list_jobs().await.map_err(dbus_err)?;
                let path = osm_api::job_path(id);
                if !paths.iter().any(|p| p.as_str() == path) {
                    return Err(ApiError {
                        code: ErrorCode::NotFound,
                        message: format!("there is no job {id}; `osmctl status` lists the jobs"),
                    }
                    .into());
                }
                job_from_dbus(&conn, &path).await
            }
        }
    }

    pub async fn cancel(&mut self, id: u64) -> anyhow::Result<()> {
        match self {
            Client::Socket { .. } => self.call(&Request::Cancel { id }).map(drop),
            Client::DBus(_) => self.job_proxy(id).await?.cancel().await.map_err(dbus_err),
        }
    }

    /// The Job object of an existing job (a clear "no job N" otherwise).
    async fn job_proxy(&mut self, id: u64) -> anyhow::Result<JobProxy<'static>> {
        let Client::DBus(conn) = self else {
            unreachable!("D-Bus only")
        };
        let conn = conn.clone();
        self.get(id).await?;
        Ok(JobProxy::builder(&conn)
            .path(osm_api::job_path(id))?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?)
    }
}

/// Migrations.
impl Client {
    pub async fn migrate(&mut self, req: MigrateRequest) -> anyhow::Result<MigrateReply> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::Migrate(req))?)?),
            Client::DBus(conn) => {
                let conn = conn.clone();
                let m = ManagerProxy::new(&conn).await?;
                let vms: Vec<&str> = req.vms.iter().map(String::as_str).collect();
                let (paths, warnings) = m
                    .migrate(&req.plan, &req.plan_path, &vms, req.again, req.fresh)
                    .await
                    .map_err(dbus_err)?;
                let mut jobs = Vec::new();
                for p in paths {
                    jobs.push(job_from_dbus(&conn, p.as_str()).await?);
                }
                Ok(MigrateReply { jobs, warnings })
            }
        }
    }

    pub async fn sync(&mut self, id: u64) -> anyhow::Result<JobInfo> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::Sync { id })?)?),
            Client::DBus(_) => {
                self.job_proxy(id).await?.sync().await.map_err(dbus_err)?;
                self.get(id).await
            }
        }
    }

    pub async fn cutover(&mut self, id: u64, at: Option<String>) -> anyhow::Result<JobInfo> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::Cutover { id, at })?)?),
            Client::DBus(_) => {
                let j = self.job_proxy(id).await?;
                j.cutover(at.as_deref().unwrap_or("")).await.map_err(dbus_err)?;
                self.get(id).await
            }
        }
    }

    pub async fn cleanup(&mut self, id: u64) -> anyhow::Result<CleanupReport> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::Cleanup { id })?)?),
            Client::DBus(_) => {
                let json = self.job_proxy(id).await?.cleanup().await.map_err(dbus_err)?;
                Ok(serde_json::from_str(&json).context("the agent sent a malformed cleanup report")?)
            }
        }
    }

    /// The last `lines` lines of a job's log.
    pub async fn logs(&mut self, id: u64, lines: u32) -> anyhow::Result<String> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(
                self.call(&Request::Logs { id, lines: Some(lines) })?,
            )?),
            Client::DBus(_) => Ok(self.job_proxy(id).await?.logs(lines).await.map_err(dbus_err)?),
        }
    }
}

impl Client {
    pub async fn discover(&mut self, vms: Vec<String>, folder: Option<String>) -> anyhow::Result<Vec<VmInfo>> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::Discover { vms, folder })?)?),
            Client::DBus(conn) => {
                let m = ManagerProxy::new(conn).await?;
                let names: Vec<&str> = vms.iter().map(String::as_str).collect();
                let json = m
                    .discover(&names, folder.as_deref().unwrap_or(""))
                    .await
                    .map_err(dbus_err)?;
                Ok(serde_json::from_str(&json)?)
            }
        }
    }

    pub async fn check(&mut self, vms: Vec<String>, enable_cbt: bool) -> anyhow::Result<Vec<CheckReport>> {
        match self {
            Client::Socket { .. } => Ok(serde_json::from_value(self.call(&Request::Check { vms, enable_cbt })?)?),
            Client::DBus(conn) => {
                let m = ManagerProxy::new(conn).await?;
                let names: Vec<&str> = vms.iter().map(String::as_str).collect();
                let json = m.check(&names, enable_cbt).await.map_err(dbus_err)?;
                Ok(serde_json::from_str(&json)?)
            }
        }
    }
}

async fn job_from_dbus(conn: &zbus::Connection, path: &str) -> anyhow::Result<JobInfo> {
    let j = JobProxy::builder(conn)
        .path(path.to_string())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    // A job just started is exported by the agent a moment after the call returns.
    let mut tries = 0;
    let state = loop {
        match j.state().await {
            Err(e) if tries < 50 && not_exported_yet(&e) => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            r => break r?,
        }
    };
    let migration = j.migration().await?;
    Ok(JobInfo {
        id: j.id().await?,
        kind: j.kind().await?,
        state: JobState::parse(&state).ok_or_else(|| anyhow!("unknown job state '{state}'"))?,
        step: j.step().await?,
        progress: j.progress().await?,
        bytes_done: j.bytes_done().await?,
        bytes_total: j.bytes_total().await?,
        bytes_read: j.bytes_read().await?,
        bytes_written: j.bytes_written().await?,
        rate: j.rate().await?,
        error: j.error().await?,
        source: j.source().await?,
        target: j.target().await?,
        migration: if migration.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&migration).context("the agent sent a malformed Migration property")?)
        },
    })
}

fn not_exported_yet(e: &zbus::Error) -> bool {
    const NAMES: [&str; 2] = [
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownInterface",
    ];
    match e {
        zbus::Error::FDO(e) => matches!(
            **e,
            zbus::fdo::Error::UnknownObject(_) | zbus::fdo::Error::UnknownInterface(_)
        ),
        zbus::Error::MethodError(name, _, _) => NAMES.contains(&name.as_str()),
        _ => false,
    }
}

/// A D-Bus error named io.github.os_migrate.Agent1.Error.X becomes the ApiError with code X.
fn dbus_err(e: zbus::Error) -> anyhow::Error {
    if let zbus::Error::MethodError(name, msg, _) = &e {
        if let Some(code) = name
            .as_str()
            .strip_prefix("io.github.os_migrate.Agent1.Error.")
            .and_then(ErrorCode::from_dbus_name)
        {
            return ApiError {
                code,
                message: msg.clone().unwrap_or_default(),
            }
            .into();
        }
        if name.as_str() == "org.freedesktop.DBus.Error.AccessDenied" {
            return ApiError {
                code: ErrorCode::PermissionDenied,
                message: format!(
                    "the D-Bus policy refused the call: {}; starting or cancelling jobs needs root or group 'osm'",
                    msg.clone().unwrap_or_default()
                ),
            }
            .into();
        }
    }
    e.into()
}
