//! nbdkit: argv built by a pure function, a process started by [`super::runner`] (dies
//! with the agent) and killed (with its socket removed) when dropped, readiness by a real
//! handshake.
use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::runner::{self, Child};
use crate::nbd::handle::handshake_ok;

/// Production source: VMware's VDDK through nbdkit's vddk plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vddk {
    pub server: String,
    pub user: String,
    /// A 0600 file holding the password; passed as `password=+FILE`, never in argv.
    pub password_file: PathBuf,
    /// SHA-1 thumbprint of the server certificate, colon-separated hex.
    pub thumbprint: String,
    /// Managed object id of the VM, e.g. `vm-123`.
    pub vm_moref: String,
    pub snapshot_moref: Option<String>,
    /// e.g. `file:nbdssl:nbd`
    pub transports: Option<String>,
    pub libdir: Option<PathBuf>,
    /// `none`, `zlib`, `fastlz`, `skipz`
    pub compression: Option<String>,
    /// The disk as vSphere names it: `[datastore] folder/disk.vmdk`.
    pub file: String,
}

/// An HTTPS source through nbdkit's curl plugin (needs Range support, as /folder has).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Curl {
    pub url: String,
    pub user: Option<String>,
    /// Passed as `password=+FILE`, never in argv.
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plugin {
    /// A local file (a datastore mounted on the host, and tests).
    File(PathBuf),
    Vddk(Box<Vddk>),
    Curl(Box<Curl>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdkitSpec {
    pub plugin: Plugin,
    /// The Unix socket to serve on, inside a private 0700 folder.
    pub socket: PathBuf,
}

/// The argv after the program name. Pure: unit-tested below.
pub fn argv(spec: &NbdkitSpec) -> Vec<OsString> {
    // No --exit-with-parent: it would replace the runner's PR_SET_PDEATHSIG(SIGKILL)
    // with SIGTERM.
    let mut a: Vec<OsString> = ["--readonly", "--foreground", "--unix"].map(OsString::from).to_vec();
    a.push(spec.socket.clone().into());
    let kv = |k: &str, v: &std::ffi::OsStr| {
        let mut s = OsString::from(format!("{k}="));
        s.push(v);
        s
    };
    match &spec.plugin {
        Plugin::File(path) => {
            a.push("file".into());
            a.push(kv("file", path.as_os_str()));
        }
        Plugin::Curl(c) => {
            a.extend(["--filter=retry", "curl", "protocols=https"].map(OsString::from));
            a.push(kv("url", c.url.as_ref()));
            if let Some(u) = &c.user {
                a.push(kv("user", u.as_ref()));
            }
            if let Some(f) = &c.password_file {
                let mut pw = OsString::from("password=+");
                pw.push(f);
                a.push(pw);
            }
            if let Some(ca) = &c.ca_file {
                a.push(kv("cainfo", ca.as_os_str()));
            }
            a.extend(["retries=5", "retry-delay=2", "retry-readonly=true"].map(OsString::from));
        }
        Plugin::Vddk(v) => {
            // Transient NBD/VDDK errors are retried by nbdkit itself, read-only.
            a.extend(["--filter=retry", "vddk"].map(OsString::from));
            a.push(kv("server", v.server.as_ref()));
            a.push(kv("user", v.user.as_ref()));
            let mut pw = OsString::from("password=+");
            pw.push(&v.password_file);
            a.push(pw);
            a.push(kv("thumbprint", v.thumbprint.as_ref()));
            a.push(kv("vm", format!("moref={}", v.vm_moref).as_ref()));
            if let Some(s) = &v.snapshot_moref {
                a.push(kv("snapshot", s.as_ref()));
            }
            if let Some(t) = &v.transports {
                a.push(kv("transports", t.as_ref()));
            }
            if let Some(l) = &v.libdir {
                a.push(kv("libdir", l.as_os_str()));
            }
            if let Some(c) = &v.compression {
                a.push(kv("compression", c.as_ref()));
            }
            a.push(kv("file", v.file.as_ref()));
            a.extend(["retries=5", "retry-delay=2", "retry-readonly=true"].map(OsString::from));
        }
    }
    a
}

#[derive(Debug, thiserror::Error)]
pub enum NbdkitError {
    #[error("nbdkit was not found on PATH; install the nbdkit package (and its vddk plugin for VMware sources)")]
    NotInstalled,
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: std::io::Error },
    #[error("cannot start nbdkit: {0}")]
    Spawn(std::io::Error),
    #[error("nbdkit exited before serving ({status}): {stderr}")]
    Exited {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("nbdkit did not accept an NBD handshake within {0:?}: {1}")]
    NotReady(Duration, String),
}

/// A running nbdkit. Dropping it kills it and removes its socket.
pub struct Nbdkit {
    child: Child,
    socket: PathBuf,
}

impl Nbdkit {
    /// Start nbdkit and wait until it completes an NBD handshake. Its stderr goes to
    /// `log` (0600); a failure quotes the log's tail.
    pub fn start(program: &Path, spec: &NbdkitSpec, log: &Path, timeout: Duration) -> Result<Nbdkit, NbdkitError> {
        let dir = spec.socket.parent().unwrap_or(Path::new("/"));
        let prep = |path: &Path| {
            let path = path.to_path_buf();
            move |source| NbdkitError::Prepare { path, source }
        };
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(prep(dir))?;
        let _ = std::fs::remove_file(&spec.socket);
        let errlog: File = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)
            .map_err(prep(log))?;
        let mut cmd = Command::new(program);
        cmd.args(argv(spec))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(errlog);
        let child = runner::spawn(cmd).map_err(NbdkitError::Spawn)?;
        let mut me = Nbdkit {
            child,
            socket: spec.socket.clone(),
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                return Err(NbdkitError::Exited {
                    status,
                    stderr: super::tail(log, 2000),
                });
            }
            if me.socket.exists() && handshake_ok(&me.socket) {
                return Ok(me);
            }
            if start.elapsed() > timeout {
                return Err(NbdkitError::NotReady(timeout, super::tail(log, 2000)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.stop(Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn file_plugin_is_readonly_and_serves_in_the_foreground() {
        let spec = NbdkitSpec {
            plugin: Plugin::File("/ds/my vm/disk-flat.vmdk".into()),
            socket: "/run/osm/jobs/7/nbdkit.sock".into(),
        };
        assert_eq!(
            strs(argv(&spec)),
            [
                "--readonly",
                "--foreground",
                "--unix",
                "/run/osm/jobs/7/nbdkit.sock",
                "file",
                "file=/ds/my vm/disk-flat.vmdk"
            ]
        );
    }

    #[test]
    fn curl_takes_the_password_from_a_file_and_https_only() {
        let c = Curl {
            url: "https://vc/folder/vm/d-flat.vmdk?dcPath=DC0&dsName=ds 1".into(),
            user: Some("osm@vsphere.local".into()),
            password_file: Some("/etc/osm/vc.password".into()),
            ca_file: Some("/etc/osm/vc-ca.pem".into()),
        };
        let spec = NbdkitSpec {
            plugin: Plugin::Curl(Box::new(c)),
            socket: "/s".into(),
        };
        assert_eq!(
            strs(argv(&spec))[4..],
            [
                "--filter=retry",
                "curl",
                "protocols=https",
                "url=https://vc/folder/vm/d-flat.vmdk?dcPath=DC0&dsName=ds 1",
                "user=osm@vsphere.local",
                "password=+/etc/osm/vc.password",
                "cainfo=/etc/osm/vc-ca.pem",
                "retries=5",
                "retry-delay=2",
                "retry-readonly=true",
            ]
        );
    }

    #[test]
    fn vddk_takes_the_password_from_a_file_only() {
        let v = Vddk {
            server: "vcenter.example".into(),
            user: "osm@vsphere.local".into(),
            password_file: "/run/osm/jobs/7/password".into(),
            thumbprint: "AA:BB".into(),
            vm_moref: "vm-42".into(),
            snapshot_moref: Some("snapshot-9".into()),
            transports: Some("nbdssl:nbd".into()),
            libdir: Some("/usr/lib64/vmware-vix-disklib".into()),
            compression: Some("zlib".into()),
            file: "[datastore1] web [prod]/web.vmdk".into(),
        };
        let spec = NbdkitSpec {
            plugin: Plugin::Vddk(Box::new(v)),
            socket: "/s".into(),
        };
        let a = strs(argv(&spec));
        assert_eq!(
            a,
            [
                "--readonly",
                "--foreground",
                "--unix",
                "/s",
                "--filter=retry",
                "vddk",
                "server=vcenter.example",
                "user=osm@vsphere.local",
                "password=+/run/osm/jobs/7/password",
                "thumbprint=AA:BB",
                "vm=moref=vm-42",
                "snapshot=snapshot-9",
                "transports=nbdssl:nbd",
                "libdir=/usr/lib64/vmware-vix-disklib",
                "compression=zlib",
                "file=[datastore1] web [prod]/web.vmdk",
                "retries=5",
                "retry-delay=2",
                "retry-readonly=true",
            ]
        );
        assert!(a
            .iter()
            .filter(|s| s.starts_with("password="))
            .all(|s| s.starts_with("password=+")));
    }
}
