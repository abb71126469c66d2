//! Unattended migrations (cloud-init): after READY, every plan in `[agent] plans_dir` and
//! in the user-data's `osm: plans:` (user_data.rs) not started before is validated and started; then the status of every migration (and
//! every plan that could not start) is logged and published in this conversion host's
//! own Nova server metadata, where an operator outside the host sees it
//! (`openstack server show HOST -c properties`). See docs/unattended.md.
//!
//! Nothing here stops the daemon: a bad plan, an unreachable Nova or an unknown host
//! become journal lines and `osm_plan_error_*` / warnings, never an exit.
pub mod plans;
pub mod publish;
pub mod status;
pub mod user_data;

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::jobs::Engine;
use status::{PlanError, Summary};

/// Events come in bursts (every progress tick): publish once they settle.
const DEBOUNCE: Duration = Duration::from_secs(5);
/// While a migration runs, the status (progress, time) is refreshed at least this often.
const REFRESH: Duration = Duration::from_secs(60);
/// After a failed publish or discovery the next try comes after this, doubled after each
/// further failure up to `RETRY_MAX`.
const RETRY_AFTER: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// The last publish when the agent stops.
const FINAL_PUBLISH: Duration = Duration::from_secs(5);

/// The running unattended work; [`shutdown`](Self::shutdown) it when the daemon stops.
pub struct Unattended {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Start the plans and the status publisher in the background (the caller is READY).
pub fn start(engine: Engine) -> Unattended {
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(engine, stop.clone()));
    Unattended { stop, task }
}

impl Unattended {
    /// Stop publishing (after one last `agent stopped` status, bounded in time).
    pub async fn shutdown(self) {
        self.stop.cancel();
        if tokio::time::timeout(FINAL_PUBLISH + Duration::from_secs(2), self.task)
            .await
            .is_err()
        {
            tracing::warn!("unattended: the status publisher did not stop in time");
        }
    }
}

async fn run(engine: Engine, stop: CancellationToken) {
    // Subscribe first: no job change between the scan and the publisher is missed.
    let rx = engine.subscribe();
    let s = engine.settings().clone();
    let e = engine.clone();
    let (dir, user_data, state_dir) = (s.plans_dir.clone(), s.user_data.clone(), s.state_dir.clone());
    let outcome =
        match tokio::task::spawn_blocking(move || plans::run(&e, &dir, user_data.as_deref(), &state_dir)).await {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("unattended: the plan scan failed: {e}");
                plans::Outcome {
                    errors: vec![PlanError {
                        file: s.plans_dir.display().to_string(),
                        message: format!("the plan scan failed: {e}"),
                    }],
                    ..Default::default()
                }
            }
        };
    tracing::info!("unattended: {}", outcome.summary());
    let mut p = Publisher {
        engine,
        plan_errors: outcome.errors,
        target: if s.publish_status {
            Target::Unknown
        } else {
            tracing::info!("unattended: publish_status = false: the status goes to the journal only");
            Target::Off
        },
        retry_not_before: None,
        failures: 0,
        published: None,
        logged: Vec::new(),
        active: false,
        last_attempt: None,
    };
    p.run(rx, &stop).await;
    p.final_publish().await;
}

enum Target {
    /// Not looked for yet, or the last look failed.
    Unknown,
    Found(Box<publish::Target>),
    /// Not configured (or switched off): journal only.
    Off,
}

struct Publisher {
    engine: Engine,
    plan_errors: Vec<PlanError>,
    target: Target,
    /// After a failure: the next attempt, not before this.
    retry_not_before: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
    /// What the server's metadata says (significant part), after the last good publish.
    published: Option<Vec<(String, String)>>,
    /// What the journal was told last.
    logged: Vec<(String, String)>,
    /// Whether a migration was queued or running at the last look.
    active: bool,
    last_attempt: Option<Instant>,
}

impl Publisher {
    async fn run(&mut self, mut rx: tokio::sync::broadcast::Receiver<crate::jobs::Event>, stop: &CancellationToken) {
        // The first status (plan errors, the jobs just started) goes out at once.
        let mut dirty_since = Some(Instant::now() - DEBOUNCE);
        let mut events_open = true;
        loop {
            let mut wake = match dirty_since {
                Some(t) => Some(t + DEBOUNCE),
                None if self.active => Some(self.last_attempt.map_or_else(Instant::now, |t| t + REFRESH)),
                None => None,
            };
            if let Some(r) = self.retry_not_before {
                // A failed publish is tried again even when nothing changes.
                wake = Some(wake.map_or(r, |w| w.max(r)));
            }
            let sleep = async {
                match wake {
                    Some(w) => tokio::time::sleep_until(w).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = rx.recv(), if events_open => match ev {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        dirty_since.get_or_insert_with(Instant::now);
                    }
                    Err(RecvError::Closed) => events_open = false,
                },
                _ = sleep => {
                    // A refresh or a retry publishes even when nothing significant changed.
                    let periodic = dirty_since.is_none() || self.retry_not_before.is_some();
                    dirty_since = None;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = self.step(periodic) => {}
                    }
                }
            }
        }
    }

    /// Look at the jobs; log what changed; publish when it is worth it.
    async fn step(&mut self, periodic: bool) {
        let summary = Summary::new(&self.engine.list(), &self.plan_errors);
        self.active = summary.active();
        let sig = summary.significant();
        if sig != self.logged {
            for (k, v) in sig.iter().filter(|kv| !self.logged.contains(kv)) {
                tracing::info!("unattended status: {k} = {v}");
            }
            self.logged = sig.clone();
        }
        if summary.is_empty() && self.published.is_none() {
            return; // nothing to say (a host with copy jobs only, or idle)
        }
        if !periodic && self.published.as_ref() == Some(&sig) {
            return; // progress only: the periodic refresh carries it
        }
        if self.retry_not_before.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.last_attempt = Some(Instant::now());
        let md = summary.metadata(&status::now_rfc3339(), "");
        self.find_target().await;
        let Target::Found(t) = &self.target else { return };
        match t.apply(&md).await {
            Ok(()) => {
                if self.published.is_none() {
                    tracing::info!(
                        "unattended: status published in the metadata of server {} ({} keys)",
                        t.server_id,
                        md.len()
                    );
                }
                self.published = Some(sig);
                self.retry_not_before = None;
                self.failures = 0;
            }
            Err(e) => {
                let server = t.server_id.clone();
                let after = self.failed();
                tracing::warn!(
                    "unattended: cannot publish the status in the metadata of server {server}: {e}; next try in {}s",
                    after.as_secs()
                );
            }
        }
    }

    /// Note a failure; when the next attempt comes.
    fn failed(&mut self) -> Duration {
        let after = RETRY_AFTER.saturating_mul(1 << self.failures.min(5)).min(RETRY_MAX);
        self.failures += 1;
        self.retry_not_before = Some(Instant::now() + after);
        after
    }

    /// This host's server, found once (and looked for again after a failure).
    async fn find_target(&mut self) {
        if matches!(self.target, Target::Unknown) {
            let s = self.engine.settings().openstack.clone();
            match publish::find(&s).await {
                Ok(t) => {
                    tracing::info!(
                        "unattended: publishing the status in the metadata of server {} ({})",
                        t.server_name,
                        t.server_id
                    );
                    self.target = Target::Found(Box::new(t));
                }
                Err(publish::Unavailable::NotConfigured(why)) => {
                    tracing::info!("unattended: status not published in Nova (journal only): {why}");
                    self.target = Target::Off;
                }
                Err(publish::Unavailable::Discovery(why)) => {
                    let after = self.failed();
                    tracing::warn!(
                        "unattended: cannot publish the status: this host's Nova server is unknown ({why}); next try in {}s",
                        after.as_secs()
                    );
                }
            }
        }
    }

    /// `agent stopped; …` once the agent stops, if a status was ever published.
    async fn final_publish(&mut self) {
        let (Target::Found(t), Some(_)) = (&self.target, &self.published) else {
            return;
        };
        let summary = Summary::new(&self.engine.list(), &self.plan_errors);
        let prefix = if summary.active() {
            "agent stopped, migrations resume when it starts; "
        } else {
            "agent stopped; "
        };
        let md = summary.metadata(&status::now_rfc3339(), prefix);
        match tokio::time::timeout(FINAL_PUBLISH, t.apply(&md)).await {
            Ok(Ok(())) => tracing::info!("unattended status: osm_status = {}", md[status::STATUS_KEY]),
            Ok(Err(e)) => tracing::warn!("unattended: cannot publish the final status: {e}"),
            Err(_) => tracing::warn!("unattended: the final status was not published in {FINAL_PUBLISH:?}"),
        }
    }
}
