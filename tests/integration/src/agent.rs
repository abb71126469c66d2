//! A real osm-agent in a temporary folder, driven through osmctl or the socket.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use osm_api::{JobInfo, Reply, Request};

pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    bus: Option<String>,
    notify: Option<PathBuf>,
}

#[derive(Default)]
pub struct Options {
    pub dbus: Option<String>,
    pub notify_socket: Option<PathBuf>,
    pub extra_config: String,
}

impl Agent {
    pub fn start(dir: &Path, opts: Options) -> Agent {
        let config = dir.join("agent.toml");
        let dbus = opts.dbus.clone().unwrap_or_else(|| "none".into());
        // Never the host's /etc/osm/plans.d or user-data: a test agent must not start real plans.
        let mut plans = String::new();
        if !opts.extra_config.contains("plans_dir") {
            plans += &format!("plans_dir = \"{}/plans.d\"\n", dir.display());
        }
        if !opts.extra_config.contains("user_data") {
            plans += "user_data = \"\"\n";
        }
        let text = format!(
            "[agent]\nsocket = \"{d}/run/osm.sock\"\nstate_dir = \"{d}/state\"\nruntime_dir = \"{d}/run\"\nlog_dir = \"{d}/log\"\ndbus = \"{dbus}\"\n{plans}{}",
            opts.extra_config,
            d = dir.display()
        );
        std::fs::write(&config, text).unwrap();
        let mut a = Agent {
            dir: dir.to_path_buf(),
            socket: dir.join("run/osm.sock"),
            config,
            child: None,
            bus: opts.dbus,
            notify: opts.notify_socket,
        };
        a.spawn();
        a
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let mut c = Command::new(crate::bin("osm-agent"));
        c.arg("--config")
            .arg(&self.config)
            .arg("--dropin-dir")
            .arg(self.dir.join("no-dropins"));
        c.env_remove("NOTIFY_SOCKET");
        if let Some(n) = &self.notify {
            c.env("NOTIFY_SOCKET", n);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.stderr"))
            .unwrap();
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(c.spawn().unwrap());
        let sock = self.socket.clone();
        crate::wait_for(20, "the agent's socket", || {
            (UnixStream::connect(&sock).is_ok()).then_some(())
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to checkpoint or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(c.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        c.wait().unwrap()
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.stderr")).unwrap_or_default()
    }

    /// Run osmctl against this agent (socket, or D-Bus when the agent has a bus).
    pub fn osmctl(&self, args: &[&str]) -> Output {
        self.osmctl_cmd(args).output().unwrap()
    }

    /// osmctl as user nobody (uid/gid 65534, no supplementary groups).
    pub fn osmctl_as_nobody(&self, args: &[&str]) -> Output {
        let inner = self.osmctl_cmd(args);
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(inner.get_program())
            .args(inner.get_args())
            .output()
            .unwrap()
    }

    pub fn osmctl_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(crate::bin("osmctl"));
        c.arg("--socket").arg(&self.socket);
        if let Some(b) = &self.bus {
            c.arg("--bus-address").arg(b);
        }
        c.args(args);
        c
    }

    pub fn request(&self, req: &Request) -> Reply {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        let mut line = serde_json::to_vec(req).unwrap();
        line.push(b'\n');
        s.write_all(&line).unwrap();
        let mut buf = String::new();
        BufReader::new(s).read_line(&mut buf).unwrap();
        serde_json::from_str(&buf).unwrap()
    }

    pub fn job(&self, id: u64) -> JobInfo {
        let r = self.request(&Request::GetJob { id });
        assert!(r.ok, "get job {id}: {:?}", r.error);
        serde_json::from_value(r.result.unwrap()).unwrap()
    }

    /// Wait until the job is in a terminal state; return it.
    pub fn wait_job(&self, id: u64, secs: u64) -> JobInfo {
        crate::wait_for(secs, &format!("job {id} to end"), || {
            Some(self.job(id)).filter(|j| j.state.is_terminal())
        })
    }

    /// Start a copy through osmctl --output json; return the job.
    pub fn copy(&self, args: &[&str]) -> JobInfo {
        let mut a = vec!["--output", "json", "copy"];
        a.extend_from_slice(args);
        let out = self.osmctl(&a);
        assert!(
            out.status.success(),
            "osmctl copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}
