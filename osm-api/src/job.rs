use serde::{Deserialize, Serialize};

/// Life cycle of a job. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A byte range of a disk: what CBT's QueryChangedDiskAreas returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub length: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.length
    }
}

/// Copy a disk from an NBD source to a local block device or file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// `nbd://…`, `nbd+unix:///?socket=…` (an NBD URI), `file:PATH` (the agent starts
    /// nbdkit's file plugin over PATH, read-only), or `https://…` (nbdkit's curl plugin,
    /// e.g. a datastore's `/folder/…-flat.vmdk?dcPath=…&dsName=…`).
    pub source: String,
    /// Block device or regular file. A missing regular file is created (and known zero).
    pub target: String,
    /// Copy only these areas (a CBT delta). `None` copies the whole disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extents: Option<Vec<Extent>>,
    /// The target reads as zeroes already (a fresh volume): zero runs are not written.
    #[serde(default)]
    pub target_is_zero: bool,
    /// NBD connections (parallel requests); the agent's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// Credentials and CA for an `https://` source (a datastore's /folder URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
}

/// How to read an `https://` source. The password stays in its file: it is handed to
/// nbdkit as `password=+FILE` and never stored or logged by the agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// PEM bundle to verify the server with (default: the system's CAs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
}

/// What both APIs report about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: u64,
    pub kind: String,
    pub state: JobState,
    /// Current step, human readable ("starting nbdkit", "copying", "flushing").
    pub step: String,
    /// 0.0 ..= 1.0 of `bytes_total`.
    pub progress: f64,
    /// Bytes of the work list processed (copied, or skipped as holes).
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes actually read from the source (holes are not read).
    pub bytes_read: u64,
    /// Bytes actually written to the target (zero runs on a fresh target are not).
    pub bytes_written: u64,
    /// Bytes of work processed per second, recent average.
    pub rate: u64,
    /// Why the job failed; empty otherwise.
    pub error: String,
    pub source: String,
    pub target: String,
    /// Set for migration jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<crate::MigrationInfo>,
}
