//! Wire types shared by `osm-agent` and `osmctl`: names, job states, requests, replies
//! and the stable error codes. Both transports (D-Bus and the Unix socket) carry these.

mod dbus;
mod error;
mod job;
mod migrate;
mod socket;
pub mod vsphere;

pub use dbus::{job_path, JobProxy, ManagerProxy, BUS_NAME, JOBS_PATH, JOB_IFACE, MANAGER_IFACE, ROOT_PATH};
pub use error::{ApiError, ErrorCode};
pub use job::{CopyRequest, Extent, HttpSource, JobInfo, JobState};
pub use migrate::{CleanupReport, MigrateReply, MigrateRequest, MigrationInfo, StepTiming};
pub use socket::{Reply, Request, DEFAULT_SOCKET};
