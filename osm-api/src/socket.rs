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
