//! The Unix-socket protocol: one JSON request per line, one JSON reply per line.
//! See docs/api.md.
use serde::{Deserialize, Serialize};

use crate::{ApiError, CopyRequest, MigrateRequest};

pub const DEFAULT_SOCKET: &str = "/run/osm/osm-agent.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Agent version and API revision. Anyone.
    Version,
    /// Start a copy job; replies with its `JobInfo`. Root or the admin group only.
    StartCopy(CopyRequest),
    /// All jobs, oldest first. Anyone.
    ListJobs,
    /// One job. Anyone.
    GetJob { id: u64 },
    /// Cancel a queued or running job. Root or the admin group only.
    Cancel { id: u64 },
    /// Start one migration job per VM of a plan; replies with a `MigrateReply`. Root or
    /// the admin group only.
    Migrate(MigrateRequest),
    /// Run one more delta round of a warm migration now. Root or the admin group only.
    Sync { id: u64 },
    /// Cut a warm migration over now, or at `at` (RFC 3339). Root or the admin group only.
    Cutover {
        id: u64,
        #[serde(default)]
        at: Option<String>,
    },
    /// Remove everything osm created for a failed or cancelled migration (volumes, ports,
    /// flavor, snapshots), found by tags; replies with a `CleanupReport`. Root or the
    /// admin group only.
    Cleanup { id: u64 },
    /// The last `lines` lines of a job's log (its own file, 0600). Root or the admin
    /// group only (logs name hosts and volumes).
    Logs {
        id: u64,
        #[serde(default)]
        lines: Option<u32>,
    },
    /// vCenter's VMs (all, or those named by name or moref, under an inventory folder);
    /// replies with a list of `vsphere::VmInfo`. Anyone.
    Discover {
        #[serde(default)]
        vms: Vec<String>,
        #[serde(default)]
        folder: Option<String>,
    },
    /// Pre-migration checks of the named VMs; a list of `vsphere::CheckReport`.
    /// Anyone; with `enable_cbt` (turns CBT on) root or the admin group only.
    Check {
        vms: Vec<String>,
        #[serde(default)]
        enable_cbt: bool,
    },
}

/// `{"ok":true,"result":…}` or `{"ok":false,"error":{"code":…,"message":…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Reply {
    pub fn ok(result: serde_json::Value) -> Self {
        Reply {
            ok: true,
            result: Some(result),
            error: None,
        }
    }

    pub fn err(error: ApiError) -> Self {
        Reply {
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}
