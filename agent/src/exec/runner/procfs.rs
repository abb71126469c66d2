//! What /proc says about other processes: start times (to tell a PID from its reuse),
//! process groups, the runner's environment marker, and killing a set of processes and
//! waiting until they are gone even when they are not our children.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Fields of /proc/PID/stat the runner needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie: exited, files closed, waiting to be reaped), …
    pub state: char,
    pub pgrp: i32,
    /// Clock ticks after boot; with the PID it names one process for the boot's lifetime.
    pub start: u64,
}

/// Parse /proc/PID/stat. The command name (field 2) may hold spaces and parentheses,
/// so the fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        pgrp: f.get(2)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Is `pid` still the process that started at `start`, and not yet exited?
pub fn alive(pid: i32, start: u64) -> bool {
    stat(pid).is_some_and(|s| s.start == start && s.state != 'Z')
}

/// Every PID on the host, with its stat.
pub fn all() -> BTreeMap<i32, Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// The value of `key` in the environment `pid` was started with. Unreadable (another
/// user's process without CAP_SYS_PTRACE, a kernel thread, a zombie) gives None.
pub fn env_var(pid: i32, key: &str) -> Option<String> {
    let data = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    data.split(|&b| b == 0).find_map(|kv| {
        let v = kv.strip_prefix(key.as_bytes())?.strip_prefix(b"=")?;
        String::from_utf8(v.to_vec()).ok()
    })
}

/// SIGKILL every process of `victims` (PID and start time) that is still itself, then
/// wait until each is gone or a zombie (its files, the disk among them, are closed by
/// then), at most `timeout`. Returns those still running.
pub fn kill_and_wait(victims: &[(i32, u64)], timeout: Duration) -> Vec<i32> {
    let me = std::process::id() as i32;
    let victims: Vec<(i32, u64)> = victims.iter().copied().filter(|&(p, _)| p != me).collect();
    let end = Instant::now() + timeout;
    loop {
        let left: Vec<(i32, u64)> = victims.iter().copied().filter(|&(p, s)| alive(p, s)).collect();
        for &(pid, _) in &left {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if left.is_empty() || Instant::now() >= end {
            return left.into_iter().map(|(p, _)| p).collect();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (qemu (x) y) S 1 4240 4240 0 -1 4194560 100 0 0 0 5 6 0 0 20 0 3 0 987654 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            Stat {
                state: 'S',
                pgrp: 4240,
                start: 987654
            }
        );
        assert_eq!(parse_stat("12 (x) Z 1"), None);
    }

    #[test]
    fn this_process_is_alive_and_its_marker_readable() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(alive(me, s.start));
        assert!(!alive(me, s.start + 1));
        assert!(all().contains_key(&me));
        assert!(env_var(me, "PATH").is_some());
        assert_eq!(env_var(me, "OSM_SURELY_NOT_SET_ANYWHERE"), None);
    }
}
