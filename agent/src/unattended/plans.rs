//! The plans in `[agent] plans_dir`: each `*.toml`, `*.yaml`, `*.yml` file (sorted by
//! name, hidden files skipped) is started once. What was started is remembered in
//! `<state_dir>/unattended.json` (0600) by path and SHA-256 of the content: an unchanged
//! file is never started again, a changed one is tried at the next start of the agent.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use osm_api::MigrateRequest;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::status::{now_rfc3339, PlanError};
use crate::error::Error;
use crate::jobs::{Caller, Engine};

pub const RECORD_FILE: &str = "unattended.json";
/// Plans are small; anything bigger is a mistake (or not a plan).
const MAX_PLAN_BYTES: u64 = 1 << 20;

/// What was done with one plan file, as remembered across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub sha256: String,
    /// When it was started (or refused by the engine), RFC 3339.
    pub at: String,
    /// The jobs it started.
    #[serde(default)]
    pub jobs: Vec<u64>,
    /// Why the engine refused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RecordFile {
    /// Plan path → what happened.
    plans: BTreeMap<String, Entry>,
}

/// `<state_dir>/unattended.json`.
#[derive(Debug)]
pub struct Record {
    path: PathBuf,
    data: RecordFile,
}

impl Record {
    /// A missing file is an empty record; an unreadable one is an error (nothing may be
    /// started then: it could start a wave twice).
    pub fn load(state_dir: &Path) -> Result<Record, String> {
        let path = state_dir.join(RECORD_FILE);
        let data = match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RecordFile::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Record { path, data })
    }

    pub fn get(&self, plan: &Path) -> Option<&Entry> {
        self.data.plans.get(&plan.display().to_string())
    }

    /// Remember and write at once (0600, written aside then renamed).
    pub fn put(&mut self, plan: &Path, e: Entry) -> std::io::Result<()> {
        self.data.plans.insert(plan.display().to_string(), e);
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(
            serde_json::to_string_pretty(&self.data)
                .expect("record serializes")
                .as_bytes(),
        )?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Plans started now or earlier (file name, jobs).
    pub started: Vec<(String, Vec<u64>)>,
    /// Plans not started, with why.
    pub errors: Vec<PlanError>,
}

impl Outcome {
    pub fn summary(&self) -> String {
        let started: Vec<String> = self
            .started
            .iter()
            .map(|(f, jobs)| {
                let ids: Vec<String> = jobs.iter().map(u64::to_string).collect();
                format!("{f} (jobs {})", ids.join(", "))
            })
            .collect();
        let failed: Vec<&str> = self.errors.iter().map(|e| e.file.as_str()).collect();
        format!(
            "{} plan(s) started: {}; {} not started: {}",
            started.len(),
            if started.is_empty() {
                "none".into()
            } else {
                started.join(", ")
            },
            failed.len(),
            if failed.is_empty() {
                "none".into()
            } else {
                failed.join(", ")
            },
        )
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The plan files of `dir`, sorted by name.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = file_name(p);
            !name.starts_with('.') && p.extension().is_some_and(|e| e == "toml" || e == "yaml" || e == "yml")
        })
        .collect();
    v.sort();
    Ok(v)
}

/// Who may have written it: only root, and nobody else may write it now.
fn check_owner_and_mode(md: &std::fs::Metadata) -> Result<(), String> {
    if md.uid() != 0 {
        return Err(format!(
            "owned by uid {}, not root: refused (chown root:root)",
            md.uid()
        ));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o022 != 0 {
        let who = if mode & 0o002 != 0 {
            "every local user"
        } else {
            "its group"
        };
        return Err(format!(
            "writable by {who} (mode {mode:04o}): refused (chmod go-w; plans should be 0600 root)"
        ));
    }
    Ok(())
}

/// Open and read a plan file without following a symbolic link, after its checks; also
/// whether every local user may read it.
fn read_plan(path: &Path) -> Result<(String, bool), String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "a symbolic link: refused (plans must be regular files owned by root)".to_string(),
            _ => format!("cannot open: {e}"),
        })?;
    let md = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !md.is_file() {
        return Err("not a regular file: refused".into());
    }
    check_owner_and_mode(&md)?;
    if md.len() > MAX_PLAN_BYTES {
        return Err(format!(
            "{} bytes: refused (a plan is at most {MAX_PLAN_BYTES})",
            md.len()
        ));
    }
    let mut text = String::new();
    f.read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e} (a plan is UTF-8 text)"))?;
    Ok((text, md.mode() & 0o004 != 0))
}

/// Secrets readable by every local user are worth a warning, not a refusal.
fn warn_about_secrets(path: &Path, text: &str, world_readable: bool) {
    let Ok(loaded) = crate::plan::parse(text, path) else {
        return; // the engine names the problem
    };
    match &loaded.plan.source.password {
        crate::plan::Secret::Inline(_) if world_readable => tracing::warn!(
            "unattended: plan {} holds the vCenter password inline and is readable by every local user: \
             chmod 600 it, or better use password = {{ file = \"/etc/osm/vcenter.password\" }}",
            path.display(),
        ),
        crate::plan::Secret::File(f) => {
            if let Ok(m) = std::fs::metadata(f) {
                if m.mode() & 0o004 != 0 {
                    tracing::warn!(
                        "unattended: plan {}: password file {f} is readable by every local user (mode {:04o}): chmod 600 it",
                        path.display(),
                        m.mode() & 0o7777
                    );
                }
            }
        }
        _ => {}
    }
}

/// A plan's name (its path, or a pseudo-path for the user-data's) and its text with whether
/// every local user may read it, or why it is refused.
type Source = (PathBuf, Result<(String, bool), String>);

/// The plan files of `dir`, each read (or why not). A missing folder has none.
fn plan_files(dir: &Path) -> Result<Vec<Source>, String> {
    let dir_name = dir.display().to_string();
    let files = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("unattended: {dir_name} does not exist: no plan files");
            return Ok(Vec::new());
        }
        Err(e) => Err(format!("cannot read {dir_name}: {e}")),
        Ok(md) if !md.is_dir() => Err(format!("{dir_name} is not a directory")),
        Ok(md) => check_owner_and_mode(&md)
            .map_err(|why| format!("the folder {dir_name}: {why}"))
            .and_then(|()| list(dir).map_err(|e| format!("cannot list {dir_name}: {e}"))),
    }?;
    Ok(files.into_iter().map(|p| (p.clone(), read_plan(&p))).collect())
}

/// The plans of the user-data's `osm:` section (user_data.rs). A missing file has none.
fn user_data_plans(path: &Path) -> Result<Vec<Source>, String> {
    if let Err(e) = std::fs::symlink_metadata(path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return Ok(Vec::new());
        }
    }
    let (text, world_readable) = read_plan(path).map_err(|why| format!("{}: {why}", path.display()))?;
    let plans = super::user_data::plans(&text).map_err(|why| format!("{}: {why}", path.display()))?;
    Ok(plans
        .into_iter()
        .map(|(p, plan)| (p, plan.map(|t| (t, world_readable))))
        .collect())
}

/// Start every plan of `dir`, and of the user-data's `osm:` section, not started before.
/// Never fails: every problem becomes a journal line and a [`PlanError`].
pub fn run(engine: &Engine, dir: &Path, user_data: Option<&Path>, state_dir: &Path) -> Outcome {
    let mut out = Outcome::default();
    let mut sources = Vec::new();
    let found = [
        (dir.display().to_string(), plan_files(dir)),
        match user_data {
            Some(p) => (p.display().to_string(), user_data_plans(p)),
            None => (String::new(), Ok(Vec::new())),
        },
    ];
    for (file, plans) in found {
        match plans {
            Ok(p) => sources.extend(p),
            Err(message) => {
                tracing::error!("unattended: {message}; no plan of it started");
                out.errors.push(PlanError { file, message });
            }
        }
    }
    if sources.is_empty() {
        tracing::info!("unattended: no plans to start");
        return out;
    }
    let mut record = match Record::load(state_dir) {
        Ok(r) => r,
        Err(e) => {
            let message = format!(
                "cannot read the record of started plans ({e}); no plan started, so that none starts twice: \
                 repair the file, or remove it to start every plan again"
            );
            tracing::error!("unattended: {message}");
            out.errors.push(PlanError {
                file: RECORD_FILE.into(),
                message,
            });
            return out;
        }
    };
    let root = Caller { uid: 0, gids: vec![0] };
    for (path, read) in sources {
        let name = file_name(&path);
        let shown = path.display();
        let (text, world_readable) = match read {
            Ok(x) => x,
            Err(why) => {
                tracing::error!("unattended: plan {shown}: {why}");
                out.errors.push(PlanError {
                    file: name,
                    message: why,
                });
                continue;
            }
        };
        let sha = sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        if let Some(e) = record.get(&path).filter(|e| e.sha256 == sha) {
            match &e.error {
                None => {
                    tracing::info!(
                        "unattended: plan {shown} was started at {} (jobs {:?}) and is unchanged: not started again",
                        e.at,
                        e.jobs
                    );
                    out.started.push((name, e.jobs.clone()));
                }
                Some(err) => {
                    tracing::warn!(
                        "unattended: plan {shown} was refused at {} and is unchanged: {err} \
                         (a changed file is tried at the next start)",
                        e.at
                    );
                    out.errors.push(PlanError {
                        file: name,
                        message: err.clone(),
                    });
                }
            }
            continue;
        }
        warn_about_secrets(&path, &text, world_readable);
        let req = MigrateRequest {
            plan: text,
            plan_path: shown.to_string(),
            vms: Vec::new(),
            again: false, // a changed plan never migrates a VM a second time by itself
            fresh: false,
        };
        let entry = match engine.start_migrate(&root, req) {
            Ok(reply) => {
                let jobs: Vec<u64> = reply.jobs.iter().map(|j| j.id).collect();
                tracing::info!("unattended: plan {shown} started: jobs {jobs:?}");
                out.started.push((name, jobs.clone()));
                Entry {
                    sha256: sha,
                    at: now_rfc3339(),
                    jobs,
                    error: None,
                }
            }
            Err(e @ (Error::ShuttingDown | Error::Store(_))) => {
                // Not the plan's fault: not recorded, so the next start tries again.
                tracing::error!("unattended: plan {shown} not started: {e}");
                out.errors.push(PlanError {
                    file: name,
                    message: e.to_string(),
                });
                continue;
            }
            Err(e) => {
                tracing::error!("unattended: plan {shown} not started: {e}");
                out.errors.push(PlanError {
                    file: name,
                    message: e.to_string(),
                });
                Entry {
                    sha256: sha,
                    at: now_rfc3339(),
                    jobs: Vec::new(),
                    error: Some(e.to_string()),
                }
            }
        };
        if let Err(e) = record.put(&path, entry) {
            tracing::error!(
                "unattended: cannot write {}: {e}; plan {shown} may be started again at the next start",
                state_dir.join(RECORD_FILE).display()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips_with_mode_0600() {
        let d = tempfile::tempdir().unwrap();
        let mut r = Record::load(d.path()).unwrap();
        let p = Path::new("/etc/osm/plans.d/10-wave1.toml");
        assert!(r.get(p).is_none());
        let e = Entry {
            sha256: "ab".into(),
            at: "2026-11-27T10:00:00Z".into(),
            jobs: vec![3, 4],
            error: None,
        };
        r.put(p, e.clone()).unwrap();
        let md = std::fs::metadata(d.path().join(RECORD_FILE)).unwrap();
        assert_eq!(md.mode() & 0o777, 0o600);
        assert_eq!(Record::load(d.path()).unwrap().get(p), Some(&e));
        std::fs::write(d.path().join(RECORD_FILE), "{not json").unwrap();
        assert!(Record::load(d.path()).unwrap_err().contains(RECORD_FILE));
    }

    #[test]
    fn lists_plan_files_sorted_and_checks_modes() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "20-b.yaml",
            "10-a.toml",
            "30-c.yml",
            ".10-a.toml.swp",
            ".hidden.toml",
            "README",
            "x.json",
        ] {
            std::fs::write(d.path().join(n), "").unwrap();
        }
        let names: Vec<String> = list(d.path()).unwrap().iter().map(|p| file_name(p)).collect();
        assert_eq!(names, ["10-a.toml", "20-b.yaml", "30-c.yml"]);

        let p = d.path().join("10-a.toml");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let am_root = nix::unistd::geteuid().is_root();
        if am_root {
            assert!(read_plan(&p).is_ok());
        }
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read_plan(&p).unwrap_err();
        assert!(e.contains("refused"), "{e}");
        if am_root {
            assert!(e.contains("every local user") && e.contains("0666"), "{e}");
        }
        std::os::unix::fs::symlink(&p, d.path().join("40-link.toml")).unwrap();
        let e = read_plan(&d.path().join("40-link.toml")).unwrap_err();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
