//! Start-up, readiness, the engine loop with the watchdog, and a clean stop.
//! Order: config → logging → state → kill the previous agent's children → recover jobs →
//! socket → D-Bus → READY=1.
pub mod job_log;
mod logging;

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sd_notify::NotifyState;

use crate::api;
use crate::config::{Bus, Settings, DROPIN_DIRS};
use crate::jobs::store::Store;
use crate::jobs::Engine;

/// osm conversion-host agent.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Main configuration file (TOML), read after the drop-in folders.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Drop-in folders, in order (default: /usr/lib/osm/config.d, /run/osm/config.d, /etc/osm/config.d).
    #[arg(long = "dropin-dir", value_name = "DIR")]
    pub dropin_dirs: Vec<PathBuf>,
}

pub fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let dirs: Vec<PathBuf> = if args.dropin_dirs.is_empty() {
        DROPIN_DIRS.iter().map(PathBuf::from).collect()
    } else {
        args.dropin_dirs
    };
    let settings = Settings::load(&dirs, args.config.as_deref())?;
    logging::init(&settings.log_dir);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(settings))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    // The runtime folder holds the socket (everyone may read status); job folders in it are 0700.
    let dirs = [
        (&settings.state_dir, 0o700),
        (&settings.runtime_dir, 0o755),
        (&settings.log_dir, 0o700),
    ];
    for (d, mode) in dirs {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    take_over_children(&settings)?;
    let store = Store::open(&settings.state_dir)?;
    let engine = Engine::new(settings.clone(), store);
    let resumed = engine.recover()?;
    crate::jobs::migrate::spawn_release_retrier(engine.clone());
    // D-Bus first: once the socket accepts, everything is up.
    let _bus = match &settings.dbus {
        Bus::None => None,
        bus => {
            let conn = api::dbus::connect(bus, &engine)
                .await
                .context("serving on D-Bus (set agent.dbus = \"none\" to run without it)")?;
            tokio::spawn(api::dbus::publish(conn.clone(), engine.clone()));
            Some(conn)
        }
    };
    let listener =
        api::socket::bind(&settings.socket).with_context(|| format!("binding {}", settings.socket.display()))?;
    tokio::spawn(api::socket::serve(listener, engine.clone()));
    tracing::info!(
        socket = %settings.socket.display(),
        "osm-agent {} ready: {resumed} job(s) resumed, socket {}",
        env!("CARGO_PKG_VERSION"),
        settings.socket.display()
    );
    notify(&[NotifyState::Ready, NotifyState::Status(&engine.status_line())]);
    tokio::spawn(status_updates(engine.clone()));
    tokio::spawn(engine_loop(engine.clone()));
    // Plans from cloud-init and the status in Nova: in the background, never fatal.
    let unattended = crate::unattended::start(engine.clone());

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: pausing jobs at their checkpoints"),
    ]);
    tracing::info!("stopping: jobs pause at their last checkpoint and resume on the next start");
    engine.shutdown().await;
    unattended.shutdown().await;
    let _ = std::fs::remove_file(&settings.socket);
    Ok(())
}

/// Before any job resumes: no process of a previous agent may still write a volume.
fn take_over_children(settings: &Settings) -> anyhow::Result<()> {
    let t = crate::exec::runner::take_over(&settings.state_dir, CHILDREN_TIMEOUT)?;
    if !t.recorded.is_empty() || !t.killed.is_empty() {
        let killed: Vec<String> = t.killed.iter().map(|(pid, name)| format!("{name} ({pid})")).collect();
        tracing::warn!(
            "previous agent's children: {} group(s) recorded, {} process(es) still running killed and gone: {}",
            t.recorded.len(),
            t.killed.len(),
            if killed.is_empty() {
                "none".into()
            } else {
                killed.join(", ")
            }
        );
    }
    Ok(())
}

const CHILDREN_TIMEOUT: Duration = Duration::from_secs(30);

/// The engine's turn every second; WATCHDOG=1 only after a turn completes.
async fn engine_loop(engine: Engine) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let e = engine.clone();
        if tokio::task::spawn_blocking(move || e.tick()).await.is_ok() {
            notify(&[NotifyState::Watchdog]);
        }
    }
}

async fn status_updates(engine: Engine) {
    use tokio::sync::broadcast::error::RecvError;
    let mut rx = engine.subscribe();
    let mut last = String::new();
    loop {
        match rx.recv().await {
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
        let s = engine.status_line();
        if s != last {
            notify(&[NotifyState::Status(&s)]);
            last = s;
        }
    }
}

fn notify(states: &[NotifyState]) {
    let _ = sd_notify::notify(false, states);
}
