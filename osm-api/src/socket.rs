//! The Unix-socket protocol: one JSON request per line, one JSON reply per line.
//! See docs/api.md.
use serde::{Deserialize, Serialize};

use crate::{ApiError, CopyRequest};

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
