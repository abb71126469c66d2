//! The body of a copy job: start nbdkit for `file:` sources, run the copy engine with
//! the stored checkpoint, persist each new checkpoint, clean up whatever happens.
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use osm_api::CopyRequest;

use super::engine::Engine;
use super::store::StoreError;
use crate::config::CopySettings;
use crate::error::Error;
use crate::exec::nbdkit::{Curl, Nbdkit, NbdkitError, NbdkitSpec, Plugin};
use crate::nbd::copy::{self, Checkpoint, CopyError, CopySpec};
use crate::nbd::Endpoint;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error(transparent)]
    Copy(CopyError),
    #[error(transparent)]
    Nbdkit(#[from] NbdkitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot create the job folder {0}: {1}")]
    JobDir(PathBuf, std::io::Error),
    #[error("the job disappeared from the engine")]
    Vanished,
    /// A migration step failed; `message` says why and what to do.
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    #[error("internal error: the job thread panicked: {0}")]
    Panicked(String),
    /// Cancelled by the user, or paused by shutdown (the engine tells which).
    #[error("stopped")]
    Stopped,
    /// A migration went back to an earlier step (the source runs again): walk on from there.
    #[error("the migration went back to its cutover")]
    Rewound,
}

impl From<CopyError> for JobError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Cancelled => JobError::Stopped,
            e => JobError::Copy(e),
        }
    }
}

enum Source {
    Uri(String),
    File(PathBuf),
    Https(String),
}

fn parse_source(s: &str) -> Option<Source> {
    if let Some(p) = s.strip_prefix("file:") {
        return Some(Source::File(PathBuf::from(p)));
    }
    if s.starts_with("https://") {
        return Some(Source::Https(s.to_string()));
    }
    ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
        .iter()
        .any(|p| s.starts_with(p))
        .then(|| Source::Uri(s.to_string()))
}

/// Refuse what can never work, before a job exists.
pub fn validate(r: &CopyRequest) -> Result<(), Error> {
    let bad = |m: String| Err(Error::InvalidArgument(m));
    match parse_source(&r.source) {
        None => {
            return bad(format!(
                "source '{}' is none of: an NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///?socket=PATH), file:PATH, https://URL",
                r.source
            ))
        }
        Some(Source::File(p)) => {
            if !p.is_absolute() {
                return bad(format!("source file '{}' must be an absolute path", p.display()));
            }
            match std::fs::metadata(&p) {
                Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
                Ok(_) => {
                    return bad(format!(
                        "source '{}' is not a regular file or block device",
                        p.display()
                    ))
                }
                Err(e) => return bad(format!("source file '{}': {e}", p.display())),
            }
        }
        Some(Source::Uri(_)) | Some(Source::Https(_)) => {}
    }
    if let Some(h) = &r.http {
        if !r.source.starts_with("https://") {
            return bad("user, password file and CA file apply to https:// sources only".into());
        }
        for f in [&h.password_file, &h.ca_file].into_iter().flatten() {
            if !Path::new(f).is_absolute() || !Path::new(f).is_file() {
                return bad(format!("'{f}' is not an absolute path to a readable file"));
            }
        }
    }
    let t = Path::new(&r.target);
    if !t.is_absolute() {
        return bad(format!("target '{}' must be an absolute path", r.target));
    }
    match std::fs::metadata(t) {
        Ok(m) if m.is_file() || m.file_type().is_block_device() => {}
        Ok(_) => {
            return bad(format!(
                "target '{}' is neither a block device nor a regular file",
                r.target
            ))
        }
        Err(_) if t.parent().is_some_and(Path::is_dir) => {}
        Err(_) => {
            return bad(format!(
                "target '{}' does not exist and its folder does not either",
                r.target
            ))
        }
    }
    if let Some(n) = r.connections {
        if !(1..=16).contains(&n) {
            return bad(format!("connections = {n}: use 1 to 16"));
        }
    }
    if let Some(x) = r.extents.as_ref().and_then(|v| v.iter().find(|e| e.length == 0)) {
        return bad(format!("extent at offset {} has length 0", x.offset));
    }
    Ok(())
}

pub fn execute(engine: &Engine, id: u64) -> Result<(), JobError> {
    let _span = tracing::info_span!("job", job_id = id).entered();
    let (request, counters, stop) = engine.job_handles(id).ok_or(JobError::Vanished)?;
    let super::engine::JobRequest::Copy(request) = request else {
        return Err(JobError::Vanished);
    };
    let s = engine.settings();
    let jobs_dir = s.runtime_dir.join("jobs");
    let job_dir = jobs_dir.join(id.to_string());
    for d in [&jobs_dir, &job_dir] {
        match std::fs::DirBuilder::new().mode(0o700).create(d) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(JobError::JobDir(d.clone(), e)),
            _ => {}
        }
    }
    let result = run(engine, id, &request, &job_dir, &counters, &stop);
    let _ = std::fs::remove_dir_all(&job_dir);
    result
}

fn run(
    engine: &Engine,
    id: u64,
    request: &CopyRequest,
    job_dir: &Path,
    counters: &copy::Counters,
    stop: &std::sync::atomic::AtomicBool,
) -> Result<(), JobError> {
    let s = engine.settings();
    // Held for the whole copy; dropping it stops nbdkit and removes its socket.
    let mut _server: Option<Nbdkit> = None;
    let plugin = match parse_source(&request.source) {
        Some(Source::Uri(u)) => Err(Endpoint::Uri(u)),
        Some(Source::File(path)) => Ok(Plugin::File(path)),
        Some(Source::Https(url)) => {
            let h = request.http.clone().unwrap_or_default();
            Ok(Plugin::Curl(Box::new(Curl {
                url,
                user: h.user,
                password_file: h.password_file.map(PathBuf::from),
                ca_file: h.ca_file.map(PathBuf::from),
            })))
        }
        None => return Err(JobError::Vanished),
    };
    let endpoint = match plugin {
        Err(endpoint) => endpoint,
        Ok(plugin) => {
            engine.set_step(id, "starting nbdkit");
            let program = engine.nbdkit().ok_or(NbdkitError::NotInstalled)?;
            let spec = NbdkitSpec {
                plugin,
                socket: job_dir.join("nbdkit.sock"),
            };
            let log = s.log_dir.join(format!("job-{id}-nbdkit.log"));
            let server = Nbdkit::start(program, &spec, &log, Duration::from_secs(30))?;
            tracing::info!("nbdkit (pid {}) serving {}", server.pid(), request.source);
            let ep = Endpoint::Unix(server.socket().to_path_buf());
            _server = Some(server);
            ep
        }
    };
    let resume: Option<Checkpoint> = engine
        .store()
        .checkpoint(id)?
        .and_then(|j| serde_json::from_str(&j).ok());
    if let Some(cp) = &resume {
        tracing::info!(
            "resuming: {} of {} chunks already durable",
            cp.done.iter().map(|(a, b)| b - a).sum::<usize>(),
            cp.chunks
        );
    }
    let spec = CopySpec {
        source: endpoint,
        target: PathBuf::from(&request.target),
        extents: request.extents.clone(),
        target_is_zero: request.target_is_zero,
        device_only: false,
        tuning: CopySettings {
            connections: request.connections.map_or(s.copy.connections, |n| n as usize),
            ..s.copy.clone()
        },
    };
    engine.set_step(id, "copying");
    let store = engine.store();
    let mut save = |cp: &Checkpoint| -> Result<(), String> {
        let json = serde_json::to_string(cp).map_err(|e| e.to_string())?;
        let done = counters.bytes_done.load(std::sync::atomic::Ordering::Relaxed);
        let total = counters.bytes_total.load(std::sync::atomic::Ordering::Relaxed);
        store.set_checkpoint(id, &json, done, total).map_err(|e| e.to_string())
    };
    let cp = copy::run(&spec, resume, stop, counters, &mut save)?;
    tracing::info!(
        "copy complete: {} bytes read, {} bytes written, target flushed",
        cp.bytes_read,
        cp.bytes_written
    );
    Ok(())
}
