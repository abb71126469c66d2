//! osmctl: the operator's CLI for osm-agent.
mod client;
mod extents;
mod render;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use osm_api::{CopyRequest, HttpSource, JobInfo, JobState, MigrateRequest};

use client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "osmctl",
    version,
    about = "Operate osm-agent: migrate VMs, copy disks, follow and cancel jobs"
)]
struct Cli {
    /// The agent's Unix socket.
    #[arg(long, global = true, env = "OSM_SOCKET", default_value = osm_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Talk to the agent over D-Bus (the system bus, or --bus-address) instead of the socket.
    #[arg(long, global = true)]
    dbus: bool,
    /// D-Bus address to use with --dbus (default: the system bus).
    #[arg(long, global = true, env = "OSM_DBUS_ADDRESS")]
    bus_address: Option<String>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy a disk from an NBD source to a block device or file (a job in the agent).
    Copy {
        /// NBD URI (nbd://HOST[:PORT]/EXPORT, nbd+unix:///?socket=PATH), file:PATH, or https://URL
        /// (file and https are served by nbdkit).
        #[arg(long)]
        from: String,
        /// Target block device or file (created if missing).
        #[arg(long)]
        to: PathBuf,
        /// Copy only these areas: lines "OFFSET LENGTH", or a JSON list of {offset|start, length}.
        #[arg(long, value_name = "FILE")]
        extents: Option<PathBuf>,
        /// The target already reads as zeroes (a fresh volume): zero runs are not written.
        #[arg(long)]
        target_is_zero: bool,
        /// Parallel NBD connections (1-16; default from the agent's config).
        #[arg(long)]
        connections: Option<u32>,
        /// Follow the job until it ends (as `watch`).
        #[arg(long)]
        wait: bool,
        /// User for an https:// source.
        #[arg(long)]
        user: Option<String>,
        /// File holding the password for an https:// source (never pass the password itself).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// PEM CA bundle to verify an https:// source (default: the system's CAs).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
    },
    /// Migrate the VMs of a plan (all, or those named): one job per VM.
    Migrate {
        /// The plan: osm's TOML plan, or the seed's vars.yaml (*.yaml, *.yml).
        #[arg(long, value_name = "FILE")]
        plan: PathBuf,
        /// Only these VMs of the plan (default: all).
        #[arg(value_name = "VM")]
        vms: Vec<String>,
        /// Follow the jobs until they end; exit status 1 unless all succeeded.
        #[arg(long)]
        watch: bool,
        /// Migrate VMs that were already migrated successfully once more: a second server
        /// with new volumes (delete the first server's ports first: they hold the source MACs).
        #[arg(long)]
        again: bool,
        /// Start afresh (new volumes, a full copy) instead of continuing the VM's newest
        /// failed or cancelled migration, e.g. when its plan changed (mode, cutover,
        /// network, flavor) or its volumes are not to be trusted.
        #[arg(long)]
        fresh: bool,
    },
    /// Run one more delta round of a warm migration now.
    Sync {
        /// Job id, or a VM name (its newest migration job).
        #[arg(value_name = "VM|JOB")]
        job: String,
    },
    /// Cut a warm migration over: shut the VM down, last delta, convert, boot in OpenStack.
    Cutover {
        /// Job id, or a VM name (its newest migration job).
        #[arg(value_name = "VM|JOB")]
        job: String,
        /// Cut over at this time (RFC 3339, e.g. 2026-12-01T22:00:00Z) instead of now.
        #[arg(long, value_name = "RFC3339")]
        at: Option<String>,
    },
    /// Remove what osm created (volumes, ports, flavor, snapshots) for failed or cancelled
    /// migrations.
    Cleanup {
        /// Job ids or VM names (their newest migration job).
        #[arg(value_name = "VM|JOB", required_unless_present = "all", conflicts_with = "all")]
        jobs: Vec<String>,
        /// Every VM whose newest migration job failed or was cancelled.
        #[arg(long)]
        all: bool,
    },
    /// Show a job's log (its own file on the agent; needs root or group osm).
    Logs {
        /// Job id, or a VM name (its newest migration job).
        #[arg(value_name = "VM|JOB")]
        job: String,
        /// How many of the last lines to show.
        #[arg(short = 'n', long, value_name = "LINES", default_value_t = 200,
              value_parser = clap::value_parser!(u32).range(1..))]
        lines: u32,
        /// Keep printing new lines (polls every second) until the job ends.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Show all jobs, or one (migrations: VM, mode, rounds, predicted downtime, cutover).
    Status {
        /// Job id, or a VM name (its newest migration job).
        #[arg(value_name = "VM|JOB")]
        job: Option<String>,
    },
    /// Follow a job with a live progress line until it ends; exit status 1 unless it succeeded.
    Watch {
        /// Job id, or a VM name (its newest migration job).
        #[arg(value_name = "VM|JOB")]
        job: String,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id, or a VM name (its newest migration job).
        #[arg(value_name = "VM|JOB")]
        job: String,
    },
    /// List vCenter's VMs with what a migration needs (disks, NICs, CBT, snapshots…).
    Discover {
        /// Only this VM (name, inventory path or moref like vm-42); repeatable.
        #[arg(long = "vm", value_name = "NAME|MOREF")]
        vms: Vec<String>,
        /// Only VMs under this inventory folder, e.g. /DC0/vm/prod.
        #[arg(long, value_name = "PATH")]
        folder: Option<String>,
    },
    /// Pre-migration checks of VMs: ok / warn / blocking with the fix; exit status 2 when
    /// anything blocks.
    Check {
        /// VM names, inventory paths or morefs.
        #[arg(required = true, value_name = "VM")]
        vms: Vec<String>,
        /// Turn Changed Block Tracking on where it is off (ReconfigVM and a snapshot
        /// create/remove cycle); needs root or group osm.
        #[arg(long)]
        enable_cbt: bool,
    },
}

fn main() -> std::process::ExitCode {
    // Hidden, for packaging (osm.spec): kept out of `Cli` so it is in no man page or completion.
    let args: Vec<_> = std::env::args_os().collect();
    if args.len() == 3 && args[1] == "__generate-docs" {
        return match generate_docs(std::path::Path::new(&args[2])) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("osmctl: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("osmctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Man pages (`DIR/man1/osmctl.1`, `osmctl-SUBCOMMAND.1`) and completions
/// (`DIR/completions/osmctl.bash`, `_osmctl`, `osmctl.fish`) from the clap definition.
fn generate_docs(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man1");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man).with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [
        clap_complete::Shell::Bash,
        clap_complete::Shell::Zsh,
        clap_complete::Shell::Fish,
    ] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "osmctl", &completions)
            .with_context(|| format!("writing {shell} completion to {}", completions.display()))?;
    }
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let mut client = if cli.dbus {
        Client::dbus(cli.bus_address.as_deref()).await?
    } else {
        Client::socket(cli.socket.clone())
    };
    let ok = std::process::ExitCode::SUCCESS;
    match cli.command {
        Command::Copy {
            from,
            to,
            extents,
            target_is_zero,
            connections,
            wait,
            user,
            password_file,
            ca_file,
        } => {
            let abs = |p: Option<PathBuf>| -> anyhow::Result<Option<String>> {
                p.map(|p| Ok(std::path::absolute(&p)?.to_string_lossy().into_owned()))
                    .transpose()
            };
            let http = (user.is_some() || password_file.is_some() || ca_file.is_some()).then_some(HttpSource {
                user,
                password_file: abs(password_file)?,
                ca_file: abs(ca_file)?,
            });
            let to = std::path::absolute(&to).with_context(|| format!("target {}", to.display()))?;
            let extents = match extents {
                Some(f) => Some(extents::read(&f)?),
                None => None,
            };
            let req = CopyRequest {
                source: from,
                target: to.to_string_lossy().into_owned(),
                extents,
                target_is_zero,
                connections,
                http,
            };
            let job = client.start_copy(req).await?;
            if wait {
                return watch(&mut client, job.id, cli.output).await;
            }
            print_job(&job, cli.output);
            Ok(ok)
        }
        Command::Migrate {
            plan,
            vms,
            watch,
            again,
            fresh,
        } => migrate(&mut client, &plan, vms, watch, (again, fresh), cli.output).await,
        Command::Sync { job } => {
            let id = resolve(&mut client, &job).await?;
            let j = client.sync(id).await?;
            eprintln!("{}: delta round requested", label(&j));
            print_after_request(&j, cli.output);
            Ok(ok)
        }
        Command::Cutover { job, at } => {
            let id = resolve(&mut client, &job).await?;
            let j = client.cutover(id, at.clone()).await?;
            match &at {
                Some(t) => eprintln!("{}: cutover scheduled at {t}", label(&j)),
                None => eprintln!("{}: cutover requested now", label(&j)),
            }
            print_after_request(&j, cli.output);
            Ok(ok)
        }
        Command::Cleanup { jobs, all } => cleanup(&mut client, jobs, all, cli.output).await,
        Command::Logs { job, lines, follow } => {
            let id = resolve(&mut client, &job).await?;
            logs(&mut client, id, lines, follow).await
        }
        Command::Status { job: Some(job) } => {
            let id = resolve(&mut client, &job).await?;
            let j = client.get(id).await?;
            match (&j.migration, cli.output) {
                (Some(m), Output::Table) => print!("{}", render::migration_detail(&j, m)),
                _ => print_job(&j, cli.output),
            }
            Ok(ok)
        }
        Command::Status { job: None } => {
            let jobs = client.list().await?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&jobs)?),
                Output::Table => print!("{}", render::table(&jobs)),
            }
            Ok(ok)
        }
        Command::Watch { job } => {
            let id = resolve(&mut client, &job).await?;
            watch(&mut client, id, cli.output).await
        }
        Command::Cancel { job } => {
            let id = resolve(&mut client, &job).await?;
            client.cancel(id).await?;
            eprintln!("cancel requested for job {id}");
            Ok(ok)
        }
        Command::Discover { vms, folder } => {
            let found = client.discover(vms, folder).await?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&found)?),
                Output::Table => print!("{}", render::vms(&found)),
            }
            Ok(ok)
        }
        Command::Check { vms, enable_cbt } => {
            let reports = client.check(vms, enable_cbt).await?;
            match cli.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
                Output::Table => print!("{}", render::checks(&reports)),
            }
            let blocked: Vec<&str> = reports
                .iter()
                .filter(|r| r.status == osm_api::vsphere::CheckStatus::Blocking)
                .map(|r| r.vm.as_str())
                .collect();
            if blocked.is_empty() {
                Ok(ok)
            } else {
                eprintln!("osmctl: blocking problems on {}", blocked.join(", "));
                Ok(std::process::ExitCode::from(2))
            }
        }
    }
}

fn print_job(j: &JobInfo, out: Output) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(j).expect("serializes")),
        Output::Table => print!("{}", render::table(std::slice::from_ref(j))),
    }
}

async fn watch(client: &mut Client, id: u64, out: Output) -> anyhow::Result<std::process::ExitCode> {
    let tty = std::io::stderr().is_terminal();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(60);
    let job = loop {
        let j = client.get(id).await?;
        if j.state.is_terminal() {
            break j;
        }
        if tty {
            eprint!("\r\x1b[2K{}", render::progress_line(&j));
        } else if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("{}", render::progress_line(&j));
            last_print = std::time::Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(if tty { 200 } else { 500 })).await;
    };
    if tty {
        eprintln!("\r\x1b[2K{}", render::progress_line(&job));
    }
    print_job(&job, out);
    Ok(match job.state {
        JobState::Succeeded => std::process::ExitCode::SUCCESS,
        _ => {
            if !job.error.is_empty() {
                eprintln!("osmctl: job {id} {}: {}", job.state, job.error);
            } else {
                eprintln!("osmctl: job {id} {}", job.state);
            }
            std::process::ExitCode::FAILURE
        }
    })
}

/// "job 7 (web-1)" for a migration, "job 7" for a copy.
fn label(j: &JobInfo) -> String {
    match &j.migration {
        Some(m) => format!("job {} ({})", j.id, m.vm),
        None => format!("job {}", j.id),
    }
}

/// After sync/cutover: the job as JSON with --output json (the message went to stderr).
fn print_after_request(j: &JobInfo, out: Output) {
    if out == Output::Json {
        print_job(j, out);
    }
}

/// VM|JOB: a number is a job id; anything else a VM name, meaning its newest migration job.
async fn resolve(client: &mut Client, what: &str) -> anyhow::Result<u64> {
    if let Ok(id) = what.parse::<u64>() {
        return Ok(id);
    }
    let jobs = client.list().await?;
    pick_vm_job(&jobs, what)
}

fn pick_vm_job(jobs: &[JobInfo], vm: &str) -> anyhow::Result<u64> {
    if let Some(j) = jobs
        .iter()
        .filter(|j| j.migration.as_ref().is_some_and(|m| m.vm == vm))
        .max_by_key(|j| j.id)
    {
        return Ok(j.id);
    }
    let mut known: Vec<&str> = jobs
        .iter()
        .filter_map(|j| j.migration.as_ref().map(|m| m.vm.as_str()))
        .collect();
    known.sort_unstable();
    known.dedup();
    if known.is_empty() {
        anyhow::bail!("'{vm}' is neither a job id nor a VM with a migration job (there are no migration jobs)")
    }
    anyhow::bail!(
        "'{vm}' is neither a job id nor a VM with a migration job; VMs with migration jobs: {}",
        known.join(", ")
    )
}

async fn migrate(
    client: &mut Client,
    plan: &std::path::Path,
    vms: Vec<String>,
    follow: bool,
    (again, fresh): (bool, bool),
    out: Output,
) -> anyhow::Result<std::process::ExitCode> {
    let text = std::fs::read_to_string(plan).with_context(|| format!("cannot read plan {}", plan.display()))?;
    let plan_path = std::path::absolute(plan).unwrap_or_else(|_| plan.to_path_buf());
    let reply = client
        .migrate(MigrateRequest {
            plan: text,
            plan_path: plan_path.to_string_lossy().into_owned(),
            vms,
            again,
            fresh,
        })
        .await?;
    for w in &reply.warnings {
        eprintln!("warning: {w}");
    }
    match out {
        Output::Json if !follow => println!("{}", serde_json::to_string_pretty(&reply)?),
        Output::Json => {}
        Output::Table => {
            for j in &reply.jobs {
                match &j.migration {
                    Some(m) => println!("job {}: migrating {} ({})", j.id, m.vm, m.mode),
                    None => println!("job {}: started", j.id),
                }
            }
        }
    }
    if !follow {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    let ids: Vec<u64> = reply.jobs.iter().map(|j| j.id).collect();
    match ids.as_slice() {
        [id] => watch(client, *id, out).await,
        ids => watch_many(client, ids, out).await,
    }
}

/// Several jobs at once: a line whenever a job's step or state changes (and every 10 s
/// while it runs), then the final table; exit status 1 unless all succeeded.
async fn watch_many(client: &mut Client, ids: &[u64], out: Output) -> anyhow::Result<std::process::ExitCode> {
    let mut last: std::collections::HashMap<u64, (String, JobState, std::time::Instant)> = Default::default();
    let done = loop {
        let mut jobs = Vec::new();
        for id in ids {
            jobs.push(client.get(*id).await?);
        }
        for j in &jobs {
            let changed = match last.get(&j.id) {
                Some((step, state, at)) => {
                    *step != j.step || *state != j.state || at.elapsed() >= Duration::from_secs(10)
                }
                None => true,
            };
            if changed && !j.state.is_terminal() {
                eprintln!("{}", render::progress_line(j));
                last.insert(j.id, (j.step.clone(), j.state, std::time::Instant::now()));
            }
        }
        if jobs.iter().all(|j| j.state.is_terminal()) {
            break jobs;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(&done)?),
        Output::Table => print!("{}", render::table(&done)),
    }
    let mut failed = false;
    for j in done.iter().filter(|j| j.state != JobState::Succeeded) {
        failed = true;
        if j.error.is_empty() {
            eprintln!("osmctl: {} {}", label(j), j.state);
        } else {
            eprintln!("osmctl: {} {}: {}", label(j), j.state, j.error);
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// The newest migration job of each VM, where that job failed or was cancelled. Older
/// jobs are left alone: a later job of the same VM continued from their volumes.
fn cleanable(jobs: &[JobInfo]) -> Vec<u64> {
    let mut newest: std::collections::BTreeMap<&str, &JobInfo> = Default::default();
    for j in jobs {
        if let Some(m) = &j.migration {
            let e = newest.entry(m.vm.as_str()).or_insert(j);
            if j.id > e.id {
                *e = j;
            }
        }
    }
    let mut ids: Vec<u64> = newest
        .values()
        .filter(|j| matches!(j.state, JobState::Failed | JobState::Cancelled))
        .map(|j| j.id)
        .collect();
    ids.sort_unstable();
    ids
}

async fn cleanup(
    client: &mut Client,
    targets: Vec<String>,
    all: bool,
    out: Output,
) -> anyhow::Result<std::process::ExitCode> {
    let ids = if all {
        let ids = cleanable(&client.list().await?);
        if ids.is_empty() {
            eprintln!("nothing to clean up: no VM's newest migration job failed or was cancelled");
        }
        ids
    } else {
        let mut ids = Vec::new();
        for t in &targets {
            ids.push(resolve(client, t).await?);
        }
        ids
    };
    let mut ok = true;
    let mut reports = Vec::new();
    for id in ids {
        match client.cleanup(id).await {
            Ok(r) => {
                ok &= r.failed.is_empty();
                if out == Output::Table {
                    print!("{}", render::cleanup(&r));
                }
                reports.push(r);
            }
            Err(e) => {
                ok = false;
                eprintln!("osmctl: cleanup of job {id}: {e:#}");
            }
        }
    }
    if out == Output::Json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    }
    Ok(if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

/// How many lines `logs --follow` asks for on each poll (to find where it left off).
const FOLLOW_WINDOW: u32 = 2000;

async fn logs(client: &mut Client, id: u64, lines: u32, follow: bool) -> anyhow::Result<std::process::ExitCode> {
    let first = client.logs(id, lines).await?;
    let mut seen: Vec<String> = first.lines().map(str::to_string).collect();
    print_lines(&seen);
    if !follow {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    loop {
        // Read the state first: lines logged before the job ended are in the next fetch.
        let ended = client.get(id).await?.state.is_terminal();
        let now: Vec<String> = client
            .logs(id, FOLLOW_WINDOW)
            .await?
            .lines()
            .map(str::to_string)
            .collect();
        let fresh = new_lines(&seen, &now);
        print_lines(fresh);
        seen = now;
        if ended {
            return Ok(std::process::ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_lines(lines: &[String]) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    for l in lines {
        let _ = writeln!(o, "{l}");
    }
    let _ = o.flush();
}

/// The lines of `now` (the log's tail) after those already shown (`seen`, an earlier
/// tail): where the end of `seen` appears in `now`, what follows it; all of `now` when
/// it does not appear (more new lines than one window, or a log started afresh).
fn new_lines<'a>(seen: &[String], now: &'a [String]) -> &'a [String] {
    let Some(last) = seen.last() else { return now };
    for j in (0..now.len()).rev() {
        if &now[j] != last {
            continue;
        }
        let k = (j + 1).min(seen.len());
        if now[j + 1 - k..=j] == seen[seen.len() - k..] {
            return &now[j + 1..];
        }
    }
    now
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, vm: Option<&str>, state: JobState) -> JobInfo {
        JobInfo {
            id,
            kind: if vm.is_some() { "migrate" } else { "copy" }.into(),
            state,
            step: String::new(),
            progress: 0.0,
            bytes_done: 0,
            bytes_total: 0,
            bytes_read: 0,
            bytes_written: 0,
            rate: 0,
            error: String::new(),
            source: String::new(),
            target: String::new(),
            migration: vm.map(|v| osm_api::MigrationInfo {
                vm: v.into(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_vm_name_means_its_newest_migration_job() {
        let jobs = [
            job(1, Some("web-1"), JobState::Failed),
            job(2, None, JobState::Succeeded),
            job(3, Some("web-1"), JobState::Running),
            job(4, Some("db"), JobState::Cancelled),
        ];
        assert_eq!(pick_vm_job(&jobs, "web-1").unwrap(), 3);
        assert_eq!(pick_vm_job(&jobs, "db").unwrap(), 4);
        let e = pick_vm_job(&jobs, "nope").unwrap_err().to_string();
        assert!(e.contains("'nope'") && e.contains("db, web-1"), "{e}");
        let e = pick_vm_job(&jobs[1..2], "x").unwrap_err().to_string();
        assert!(e.contains("there are no migration jobs"), "{e}");
    }

    #[test]
    fn cleanup_all_takes_each_vms_newest_job_if_it_failed_or_was_cancelled() {
        let jobs = [
            job(1, Some("web-1"), JobState::Failed),
            job(2, Some("web-1"), JobState::Succeeded),
            job(3, Some("db"), JobState::Failed),
            job(4, Some("db"), JobState::Cancelled),
            job(5, Some("app"), JobState::Running),
            job(6, None, JobState::Failed),
            job(7, Some("mail"), JobState::Failed),
        ];
        assert_eq!(cleanable(&jobs), vec![4, 7]);
    }

    #[test]
    fn follow_prints_only_what_is_new() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(new_lines(&v(&[]), &v(&["a"])), v(&["a"]).as_slice());
        assert_eq!(new_lines(&v(&["a", "b"]), &v(&["a", "b", "c"])), v(&["c"]).as_slice());
        assert_eq!(
            new_lines(&v(&["a", "b"]), &v(&["b", "c", "d"])),
            v(&["c", "d"]).as_slice()
        );
        assert!(new_lines(&v(&["a", "b"]), &v(&["a", "b"])).is_empty());
        // "b" again later, but not after "a": the real end of what was seen is the first "b".
        assert_eq!(
            new_lines(&v(&["a", "b"]), &v(&["a", "b", "x", "b"])),
            v(&["x", "b"]).as_slice()
        );
        assert_eq!(new_lines(&v(&["q"]), &v(&["x", "y"])), v(&["x", "y"]).as_slice());
    }

    #[test]
    fn the_cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
