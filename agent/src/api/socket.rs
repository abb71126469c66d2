//! The Unix-socket API: newline-delimited JSON (docs/api.md). The socket is 0666 so
//! anyone may read status; SO_PEERCRED decides who may start or cancel.
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use osm_api::{ApiError, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::jobs::{Caller, Engine};

/// Bind the socket (replacing a stale one) and make it connectable by everyone.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, engine: Engine) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let engine = engine.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, engine).await {
                        tracing::debug!("socket client: {e}");
                    }
                });
            }
            Err(e) => tracing::warn!("socket accept: {e}"),
        }
    }
}

async fn connection(stream: UnixStream, engine: Engine) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let caller = Caller::from_pid(cred.uid(), cred.gid(), cred.pid());
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim().is_empty() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Discover { vms, folder }) => {
                to_reply(crate::api::vsphere::discover(&engine, vms, folder).await)
            }
            Ok(Request::Check { vms, enable_cbt }) => {
                to_reply(crate::api::vsphere::check(&engine, &caller, vms, enable_cbt).await)
            }
            Ok(Request::Cleanup { id }) => to_reply(engine.cleanup(&caller, id).await),
            Ok(req) => dispatch(&engine, &caller, req),
            Err(e) => Reply::err(ApiError {
                code: osm_api::ErrorCode::InvalidArgument,
                message: format!("malformed request: {e}; see docs/api.md"),
            }),
        };
        let mut out = serde_json::to_vec(&reply).expect("reply serializes");
        out.push(b'\n');
        wr.write_all(&out).await?;
    }
    Ok(())
}

fn dispatch(engine: &Engine, caller: &Caller, req: Request) -> Reply {
    let json = |v: Result<_, crate::error::Error>| match v {
        Ok(v) => Reply::ok(v),
        Err(e) => Reply::err(ApiError::from(&e)),
    };
    match req {
        Request::Version => Reply::ok(serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "api": 1 })),
        Request::StartCopy(r) => json(engine.start_copy(caller, r).map(to_value)),
        Request::ListJobs => Reply::ok(to_value(engine.list())),
        Request::GetJob { id } => json(engine.get(id).map(to_value)),
        Request::Cancel { id } => json(engine.cancel(caller, id).map(to_value)),
        Request::Migrate(r) => json(engine.start_migrate(caller, r).map(to_value)),
        Request::Sync { id } => json(engine.sync_now(caller, id).map(to_value)),
        Request::Cutover { id, at } => json(engine.request_cutover(caller, id, at).map(to_value)),
        Request::Logs { id, lines } => json(engine.logs(caller, id, lines).map(to_value)),
        Request::Discover { .. } | Request::Check { .. } | Request::Cleanup { .. } => {
            unreachable!("answered asynchronously in connection()")
        }
    }
}

fn to_reply<T: serde::Serialize>(v: Result<T, crate::error::Error>) -> Reply {
    match v {
        Ok(v) => Reply::ok(to_value(v)),
        Err(e) => Reply::err(ApiError::from(&e)),
    }
}

fn to_value<T: serde::Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes")
}
