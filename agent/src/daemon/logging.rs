//! journald when its socket exists, else stderr without timestamps. Each job's lines
//! carry its id (a `job` span with `job_id`; field JOB_ID in the journal) and also go to
//! the job's own file under the log folder ([`super::job_log`]), whichever the sink.
use std::io::IsTerminal;
use std::path::Path;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use super::job_log::JobLogLayer;

pub fn init(log_dir: &Path) {
    let filter = EnvFilter::try_from_env("OSM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journald = std::path::Path::new("/run/systemd/journal/socket")
        .exists()
        .then(|| tracing_journald::layer().ok())
        .flatten();
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(JobLogLayer::new(log_dir));
    match journald {
        Some(j) => registry.with(j.with_syslog_identifier("osm-agent".into())).init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .without_time(),
            )
            .init(),
    }
}
