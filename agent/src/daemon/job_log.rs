//! Each job's own log file (0600) under the log folder: `osmctl logs` reads it.
//!
//! [`JobLogLayer`] is a `tracing` layer: every event inside a span carrying `job_id`
//! (the engine runs each job body in `info_span!("job", job_id = id)`), or carrying a
//! `job_id` field itself, is appended as one line to `<log_dir>/job-<id>.log`:
//! `2026-01-02T03:04:05.123456Z  INFO message key=value …`. Files are created 0600 (the
//! folder 0700 if the layer has to create it); a few handles stay open. IO errors never
//! panic and never stop the agent: the first one is reported on stderr, the line is lost.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// How many job files stay open at once (least recently used is closed first).
const OPEN_FILES: usize = 16;

pub fn path(log_dir: &Path, id: u64) -> PathBuf {
    log_dir.join(format!("job-{id}.log"))
}

/// Writes the events of each job to that job's file.
pub struct JobLogLayer {
    dir: PathBuf,
    files: Mutex<Files>,
    warned: AtomicBool,
}

#[derive(Default)]
struct Files {
    open: HashMap<u64, (File, u64)>,
    clock: u64,
}

/// The job a span belongs to (stored in its extensions).
struct JobId(u64);

impl JobLogLayer {
    pub fn new(log_dir: impl Into<PathBuf>) -> JobLogLayer {
        JobLogLayer {
            dir: log_dir.into(),
            files: Mutex::new(Files::default()),
            warned: AtomicBool::new(false),
        }
    }

    fn append(&self, id: u64, line: &str) {
        let Ok(mut files) = self.files.lock() else { return };
        files.clock += 1;
        let now = files.clock;
        // A file removed under us (log rotation, an operator) is opened afresh.
        let stale = files
            .open
            .get(&id)
            .is_some_and(|(f, _)| f.metadata().map(|m| m.nlink() == 0).unwrap_or(true));
        if stale {
            files.open.remove(&id);
        }
        if !files.open.contains_key(&id) {
            let file = match self.open(id) {
                Ok(f) => f,
                Err(e) => return self.warn(&format!("cannot open {}: {e}", path(&self.dir, id).display())),
            };
            if files.open.len() >= OPEN_FILES {
                if let Some(oldest) = files.open.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k) {
                    files.open.remove(&oldest);
                }
            }
            files.open.insert(id, (file, now));
        }
        let Some((file, used)) = files.open.get_mut(&id) else {
            return;
        };
        *used = now;
        if let Err(e) = file.write_all(line.as_bytes()) {
            files.open.remove(&id);
            self.warn(&format!("cannot write {}: {e}", path(&self.dir, id).display()));
        }
    }

    fn open(&self, id: u64) -> std::io::Result<File> {
        if !self.dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
        }
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path(&self.dir, id))?;
        // A file made before (by hand, another umask…) is tightened: logs name hosts and volumes.
        if f.metadata()?.mode() & 0o077 != 0 {
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(f)
    }

    fn warn(&self, msg: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!("osm-agent: job log: {msg} (further job log errors are not reported)");
        }
    }
}

impl<S> Layer<S> for JobLogLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut v = JobIdVisitor(None);
        attrs.record(&mut v);
        if let (Some(job), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(JobId(job));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let mut v = JobIdVisitor(None);
        values.record(&mut v);
        if let (Some(job), Some(span)) = (v.0, ctx.span(id)) {
            let mut ext = span.extensions_mut();
            ext.replace(JobId(job));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut line = LineVisitor::default();
        event.record(&mut line);
        let job = line.job_id.or_else(|| {
            ctx.event_scope(event)?
                .find_map(|span| span.extensions().get::<JobId>().map(|j| j.0))
        });
        let Some(job) = job else { return };
        let mut out = String::with_capacity(64 + line.message.len() + line.fields.len());
        let _ = SystemTime.format_time(&mut Writer::new(&mut out));
        let _ = write!(out, " {:>5} {}", event.metadata().level(), line.message);
        if !line.fields.is_empty() {
            if !line.message.is_empty() {
                out.push(' ');
            }
            out.push_str(&line.fields);
        }
        // One event, one line: a multi-line message is folded.
        let mut out = out.replace('\n', "\n    ");
        out.push('\n');
        self.append(job, &out);
    }
}

fn parse_job_id(s: &str) -> Option<u64> {
    s.trim().trim_matches('"').parse().ok()
}

struct JobIdVisitor(Option<u64>);

impl Visit for JobIdVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "job_id" {
            self.0 = Some(value);
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "job_id" {
            self.0 = u64::try_from(value).ok();
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "job_id" {
            self.0 = parse_job_id(value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "job_id" {
            self.0 = parse_job_id(&format!("{value:?}"));
        }
    }
}

/// The message, then `key=value` for the other fields (`job_id` is the file's name).
#[derive(Default)]
struct LineVisitor {
    message: String,
    fields: String,
    job_id: Option<u64>,
}

impl LineVisitor {
    fn field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        if !self.fields.is_empty() {
            self.fields.push(' ');
        }
        let _ = write!(self.fields, "{name}={value}");
    }
}

impl Visit for LineVisitor {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "job_id" {
            self.job_id = Some(value);
        } else {
            self.field(field.name(), format_args!("{value}"));
        }
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "job_id" {
            self.job_id = u64::try_from(value).ok();
        } else {
            self.field(field.name(), format_args!("{value}"));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "job_id" => self.job_id = parse_job_id(value),
            name if value.is_empty() || value.contains(char::is_whitespace) => {
                self.field(name, format_args!("{value:?}"))
            }
            name => self.field(name, format_args!("{value}")),
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "job_id" => self.job_id = parse_job_id(&format!("{value:?}")),
            name => self.field(name, format_args!("{value:?}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn events_in_a_job_span_land_in_that_jobs_file_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("log");
        let subscriber = tracing_subscriber::registry().with(JobLogLayer::new(&dir));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("outside any job");
            {
                let _span = tracing::info_span!("job", job_id = 7u64).entered();
                tracing::info!(bytes = 42u64, "copying {}", "disk0");
                let _inner = tracing::info_span!("step", name = "sync").entered();
                tracing::warn!(host = "esx 1", "multi\nline");
            }
            tracing::info!(job_id = 9u64, "a job event outside its span");
            tracing::error!("outside again");
        });
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let seven = std::fs::read_to_string(path(&dir, 7)).unwrap();
        let lines: Vec<&str> = seven.lines().collect();
        assert_eq!(lines.len(), 3, "{seven}");
        assert!(lines[0].ends_with(" INFO copying disk0 bytes=42"), "{seven}");
        assert!(lines[0].as_bytes()[4] == b'-' && lines[0].contains('T') && lines[0].contains("Z "));
        assert!(lines[1].ends_with(" WARN multi"), "{seven}");
        assert_eq!(lines[2], "    line host=\"esx 1\"");
        assert!(!seven.contains("outside"), "{seven}");
        assert_eq!(std::fs::metadata(path(&dir, 7)).unwrap().mode() & 0o777, 0o600);
        let nine = std::fs::read_to_string(path(&dir, 9)).unwrap();
        assert!(nine.ends_with("INFO a job event outside its span\n"), "{nine}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "events outside job spans go to no file: {names:?}");
    }

    #[test]
    fn io_errors_do_not_panic_and_files_reopen_after_removal() {
        let tmp = tempfile::tempdir().unwrap();
        let blocker = tmp.path().join("not-a-dir");
        std::fs::write(&blocker, "").unwrap();
        let layer = JobLogLayer::new(blocker.join("log"));
        layer.append(1, "lost\n");
        let dir = tmp.path().join("log");
        let layer = JobLogLayer::new(&dir);
        for id in 0..(OPEN_FILES as u64 + 4) {
            layer.append(id, "a\n");
        }
        layer.append(0, "b\n");
        std::fs::remove_file(path(&dir, 0)).unwrap();
        layer.append(0, "c\n");
        assert_eq!(std::fs::read_to_string(path(&dir, 0)).unwrap(), "c\n");
        assert_eq!(std::fs::read_to_string(path(&dir, 3)).unwrap(), "a\n");
    }
}
