//! The vSphere boundary's error: transport, TLS, SOAP faults by kind, timeouts.
use std::time::Duration;

/// A vim25 fault as the server sent it: its type (`InvalidLogin`, …) and message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fault {
    /// The fault's xsi:type, e.g. `NoPermission`; empty when the server gave none.
    pub kind: String,
    pub message: String,
    /// NoPermission: the missing privilege.
    pub privilege: Option<String>,
    /// NoPermission / ManagedObjectNotFound: the object concerned (`type:value`).
    pub object: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vCenter is not configured: add a [vsphere] section (url, user, password_file, and ca_file or thumbprint) to the agent's configuration")]
    NotConfigured,
    #[error("vSphere settings: {0}")]
    Config(String),
    #[error("cannot read the vCenter password file {path}: {source}")]
    PasswordFile { path: String, source: std::io::Error },
    #[error("cannot reach vCenter at {url}: {reason}; check the URL, DNS and firewall (port 443)")]
    Unreachable { url: String, reason: String },
    #[error("vCenter at {url}: TLS verification failed: {reason}")]
    Tls { url: String, reason: String },
    #[error("vCenter refused the login of user '{user}': wrong user name or password (check the password file)")]
    InvalidLogin { user: String },
    #[error("vCenter session expired and the new login failed: {0}")]
    NotAuthenticated(String),
    #[error("permission denied by vCenter: privilege {privilege} is missing{}; grant it to the migration user's role", on_object(.object))]
    NoPermission { privilege: String, object: Option<String> },
    #[error("vCenter has no object {object} (it was deleted or never existed)")]
    ManagedObjectNotFound { object: String },
    #[error("no VM named or with id '{0}' in vCenter; `osmctl discover` lists them")]
    VmNotFound(String),
    #[error("no folder '{0}' in vCenter's inventory (expected a path like /DC0/vm/folder)")]
    FolderNotFound(String),
    #[error("{} VMs are named '{name}': {}; name one by its inventory path or moref, or set source.datacenter / source.folder in the plan", .paths.len(), .paths.join(", "))]
    AmbiguousVm { name: String, paths: Vec<String> },
    #[error("the VM this job migrates ({what}) is no longer in vCenter: it was deleted or unregistered. Nothing more is read from the source; `osmctl cleanup` removes what was made")]
    VmGone { what: String },
    #[error("another task is running on {object}: {message}; wait for it to finish and retry")]
    TaskInProgress { object: String, message: String },
    #[error("the object is in a state that does not allow this: {0}")]
    InvalidState(String),
    #[error("a disk file is locked: {0}; another process (backup, another migration) holds it")]
    FileLocked(String),
    #[error("vCenter task {task} ({what}) failed: {message}")]
    TaskFailed {
        task: String,
        what: String,
        message: String,
    },
    #[error("timed out after {:?} waiting for {what}", .after)]
    Timeout { what: String, after: Duration },
    #[error("vCenter fault {}: {}", .0.kind, .0.message)]
    Fault(Fault),
    #[error("vCenter sent a reply osm cannot read ({context}): {reason}")]
    Protocol { context: String, reason: String },
}

fn on_object(o: &Option<String>) -> String {
    o.as_ref().map(|o| format!(" on {o}")).unwrap_or_default()
}

impl Error {
    /// The typed error for a fault; unknown kinds stay `Error::Fault`.
    pub fn from_fault(f: Fault, user: &str) -> Error {
        match f.kind.as_str() {
            "InvalidLogin" => Error::InvalidLogin { user: user.into() },
            "NotAuthenticated" => Error::NotAuthenticated(f.message),
            "NoPermission" => Error::NoPermission {
                privilege: f.privilege.unwrap_or_else(|| "(not named by vCenter)".into()),
                object: f.object,
            },
            "ManagedObjectNotFound" => Error::ManagedObjectNotFound {
                object: f.object.unwrap_or(f.message),
            },
            "TaskInProgress" => Error::TaskInProgress {
                object: f.object.unwrap_or_else(|| "the object".into()),
                message: f.message,
            },
            "InvalidState" | "InvalidPowerState" | "InvalidVmState" | "InvalidHostState" => {
                Error::InvalidState(if f.message.is_empty() { f.kind } else { f.message })
            }
            "FileLocked" => Error::FileLocked(f.message),
            _ => Error::Fault(f),
        }
    }

    pub fn protocol(context: &str, reason: impl std::fmt::Display) -> Error {
        Error::Protocol {
            context: context.into(),
            reason: reason.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
