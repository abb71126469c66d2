//! osmctl: the operator's CLI for osm-agent.
mod client;
mod extents;
mod render;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use osm_api::{CopyRequest, HttpSource, JobInfo, JobState};

use client::Client;

#[derive(Debug, Parser)]
#[command(
    name = "osmctl",
    version,
    about = "Operate osm-agent: copy disks, follow and cancel jobs"
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
    /// Show all jobs, or one.
    Status { job: Option<u64> },
    /// Follow a job with a live progress line until it ends; exit status 1 unless it succeeded.
    Watch { job: u64 },
    /// Cancel a queued or running job.
    Cancel { job: u64 },
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
        Command::Status { job: Some(id) } => {
            print_job(&client.get(id).await?, cli.output);
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
        Command::Watch { job } => watch(&mut client, job, cli.output).await,
        Command::Cancel { job } => {
            client.cancel(job).await?;
            eprintln!("cancel requested for job {job}");
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
