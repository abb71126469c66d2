//! Who is calling, from the socket's SO_PEERCRED or the bus daemon's credentials.
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    /// Primary and supplementary groups.
    pub gids: Vec<u32>,
}

impl Caller {
    /// Groups of a live process: `gid`, then the effective and supplementary groups
    /// from /proc/PID/status.
    pub fn from_pid(uid: u32, gid: u32, pid: Option<i32>) -> Caller {
        let mut gids = vec![gid];
        if let Some(pid) = pid {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                for line in status.lines() {
                    if let Some(rest) = line.strip_prefix("Gid:") {
                        gids.extend(rest.split_whitespace().nth(1).and_then(|g| g.parse::<u32>().ok()));
                    }
                    if let Some(rest) = line.strip_prefix("Groups:") {
                        gids.extend(rest.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
                    }
                }
            }
        }
        Caller { uid, gids }
    }

    /// Root, or a member of the admin group, may start and cancel jobs.
    pub fn authorize_mutation(&self, admin_group: &str, admin_gid: Option<u32>) -> Result<(), Error> {
        if self.uid == 0 || admin_gid.is_some_and(|g| self.gids.contains(&g)) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "uid {} may only read job status; starting or cancelling jobs needs root or membership of group '{admin_group}'",
            self.uid
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_admin_group_may_mutate_others_not() {
        assert!(Caller { uid: 0, gids: vec![0] }.authorize_mutation("osm", None).is_ok());
        assert!(Caller {
            uid: 1000,
            gids: vec![100, 977]
        }
        .authorize_mutation("osm", Some(977))
        .is_ok());
        let e = Caller {
            uid: 1000,
            gids: vec![100],
        }
        .authorize_mutation("osm", Some(977))
        .unwrap_err();
        assert!(e.to_string().contains("group 'osm'"));
    }
}
