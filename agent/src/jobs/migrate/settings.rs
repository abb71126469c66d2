//! `[migration]`: how migrations run on this host.
use std::time::Duration;

use serde::Deserialize;

use crate::plan::Transport;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationFragment {
    transport: Option<Transport>,
    max_concurrent: Option<usize>,
    parallel_disks: Option<usize>,
    readers_per_host: Option<usize>,
    sync_interval_seconds: Option<u64>,
    shutdown_timeout_seconds: Option<u64>,
    release_retry_max_seconds: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// For plans that do not name one (default `vddk`).
    pub transport: Transport,
    /// Migrations running at once; more wait queued.
    pub max_concurrent: usize,
    /// Disks of one VM copied at once.
    pub parallel_disks: usize,
    /// Disks read at once from one ESXi host, over all migrations (NFC connections are
    /// a limited resource of the host).
    pub readers_per_host: usize,
    /// Time between automatic delta rounds of a warm migration.
    pub sync_interval: Duration,
    /// How long the guest may take to shut down before it is powered off.
    pub shutdown_timeout: Duration,
    /// The longest wait between two tries at what a failed job must give back.
    pub release_retry_max: Duration,
}

/// One migration per 2 GiB of RAM and per vCPU, whichever is fewer (at least one).
pub fn default_concurrency() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(2, |kib| kib >> 20);
    cpus.min((mem_gib / 2) as usize).max(1)
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            transport: Transport::Vddk,
            max_concurrent: default_concurrency(),
            parallel_disks: 4,
            readers_per_host: 8,
            sync_interval: Duration::from_secs(1800),
            shutdown_timeout: Duration::from_secs(300),
            release_retry_max: Duration::from_secs(300),
        }
    }
}

impl MigrationSettings {
    pub fn apply(&mut self, f: MigrationFragment) {
        if let Some(t) = f.transport {
            self.transport = t;
        }
        if let Some(n) = f.max_concurrent {
            self.max_concurrent = n.max(1);
        }
        if let Some(n) = f.parallel_disks {
            self.parallel_disks = n.clamp(1, 16);
        }
        if let Some(n) = f.readers_per_host {
            self.readers_per_host = n.clamp(1, 64);
        }
        if let Some(s) = f.sync_interval_seconds {
            self.sync_interval = Duration::from_secs(s.max(1));
        }
        if let Some(s) = f.shutdown_timeout_seconds {
            self.shutdown_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(s) = f.release_retry_max_seconds {
            self.release_retry_max = Duration::from_secs(s.max(1));
        }
    }
}
