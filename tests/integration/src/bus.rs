//! A private system-type dbus-daemon with the project's own policy file
//! (tests/testbed/dbus/system-bus.conf.in + systemd/io.github.os_migrate.Agent1.conf).
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Bus {
    child: Child,
    pub address: String,
}

impl Bus {
    pub fn start(dir: &Path) -> Bus {
        let root = crate::repo_root();
        std::fs::create_dir_all(dir.join("system.d")).unwrap();
        let conf = std::fs::read_to_string(root.join("tests/testbed/dbus/system-bus.conf.in"))
            .unwrap()
            .replace("@DIR@", &dir.display().to_string());
        std::fs::write(dir.join("system-bus.conf"), conf).unwrap();
        std::fs::copy(
            root.join("systemd/io.github.os_migrate.Agent1.conf"),
            dir.join("system.d/io.github.os_migrate.Agent1.conf"),
        )
        .unwrap();
        let child = Command::new("dbus-daemon")
            .arg("--nofork")
            .arg("--nopidfile")
            .arg(format!("--config-file={}", dir.join("system-bus.conf").display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let sock = dir.join("system_bus_socket");
        crate::wait_for(10, "dbus-daemon socket", || sock.exists().then_some(()));
        Bus {
            child,
            address: format!("unix:path={}", sock.display()),
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
