//! D-Bus names and client proxies. The agent serves these interfaces; the XML is
//! committed in docs/dbus/ and a test compares it with the running service.
use std::collections::HashMap;

use zbus::proxy;
use zbus::zvariant::{OwnedObjectPath, Value};

pub const BUS_NAME: &str = "io.github.os_migrate.Agent1";
pub const ROOT_PATH: &str = "/io/github/os_migrate/Agent1";
pub const JOBS_PATH: &str = "/io/github/os_migrate/Agent1/jobs";
pub const MANAGER_IFACE: &str = "io.github.os_migrate.Agent1.Manager";
pub const JOB_IFACE: &str = "io.github.os_migrate.Agent1.Job";

pub fn job_path(id: u64) -> String {
    format!("{JOBS_PATH}/{id}")
}

#[proxy(
    interface = "io.github.os_migrate.Agent1.Manager",
    default_service = "io.github.os_migrate.Agent1",
    default_path = "/io/github/os_migrate/Agent1"
)]
pub trait Manager {
    /// Options: "extents" a(tt) (offset, length), "target-is-zero" b, "connections" u,
    /// and for https:// sources "user" s, "password-file" s, "ca-file" s.
    fn start_copy(
        &self,
        source: &str,
        target: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;

    fn list_jobs(&self) -> zbus::Result<Vec<OwnedObjectPath>>;

    /// One migration job per VM of the plan (`vms` empty: all); the jobs and the plan's
    /// warnings. `plan` is the plan's text, `plan_path` where it came from.
    fn migrate(
        &self,
        plan: &str,
        plan_path: &str,
        vms: &[&str],
        again: bool,
        fresh: bool,
    ) -> zbus::Result<(Vec<OwnedObjectPath>, Vec<String>)>;

    /// vCenter's VMs as a JSON list of `vsphere::VmInfo`; `folder` "" for everywhere.
    fn discover(&self, vms: &[&str], folder: &str) -> zbus::Result<String>;

    /// Pre-migration checks as a JSON list of `vsphere::CheckReport`.
    fn check(&self, vms: &[&str], enable_cbt: bool) -> zbus::Result<String>;

    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
}

#[proxy(
    interface = "io.github.os_migrate.Agent1.Job",
    default_service = "io.github.os_migrate.Agent1"
)]
pub trait Job {
    fn cancel(&self) -> zbus::Result<()>;

    /// One more delta round of a warm migration now.
    fn sync(&self) -> zbus::Result<()>;

    /// Cut a warm migration over now (`at` "") or at `at` (RFC 3339).
    fn cutover(&self, at: &str) -> zbus::Result<()>;

    /// Remove what osm created for a failed or cancelled migration; `CleanupReport` JSON.
    fn cleanup(&self) -> zbus::Result<String>;

    /// The last `lines` lines of the job's log (0: the agent's default).
    fn logs(&self, lines: u32) -> zbus::Result<String>;

    #[zbus(signal)]
    fn completed(&self, state: &str, error: &str) -> zbus::Result<()>;

    #[zbus(property)]
    fn id(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn step(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn progress(&self) -> zbus::Result<f64>;
    #[zbus(property)]
    fn bytes_done(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_total(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_read(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn bytes_written(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn rate(&self) -> zbus::Result<u64>;
    #[zbus(property)]
    fn error(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn source(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn target(&self) -> zbus::Result<String>;
    /// `MigrationInfo` as JSON; "" for copy jobs.
    #[zbus(property)]
    fn migration(&self) -> zbus::Result<String>;
}
