//! Configuration: TOML fragments from the drop-in folders (/usr/lib, /run, /etc, in that
//! order, files sorted by name) and then `--config FILE`; later keys win. Unknown keys
//! are refused with the file and key named.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub const DROPIN_DIRS: [&str; 3] = ["/usr/lib/osm/config.d", "/run/osm/config.d", "/etc/osm/config.d"];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fragment {
    agent: Option<AgentFragment>,
    copy: Option<CopyFragment>,
    openstack: Option<crate::cloud::openstack::OpenStackFragment>,
    vsphere: Option<VsphereFragment>,
    conversion: Option<ConversionFragment>,
    migration: Option<crate::jobs::migrate::settings::MigrationFragment>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct VsphereFragment {
    url: Option<String>,
    user: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    thumbprint: Option<String>,
    insecure: Option<bool>,
    timeout_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFragment {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    runtime_dir: Option<PathBuf>,
    log_dir: Option<PathBuf>,
    byid_dir: Option<PathBuf>,
    dbus: Option<String>,
    admin_group: Option<String>,
    nbdkit: Option<String>,
    plans_dir: Option<PathBuf>,
    user_data: Option<PathBuf>,
    publish_status: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyFragment {
    connections: Option<u32>,
    chunk_mib: Option<u64>,
    request_kib: Option<u64>,
    checkpoint_mib: Option<u64>,
    checkpoint_seconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConversionFragment {
    program: Option<String>,
    timeout_minutes: Option<u64>,
    virtio_win: Option<PathBuf>,
    force_tcg: Option<bool>,
    debug: Option<bool>,
    cache_dir: Option<PathBuf>,
}

/// Which D-Bus to serve on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bus {
    /// The system bus (honours DBUS_SYSTEM_BUS_ADDRESS).
    System,
    /// No D-Bus; the Unix socket only.
    None,
    /// An explicit bus address, e.g. `unix:path=/tmp/bus`.
    Address(String),
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub log_dir: PathBuf,
    pub byid_dir: PathBuf,
    pub dbus: Bus,
    pub admin_group: String,
    pub nbdkit: String,
    /// Plans started once at start-up (cloud-init drops them here; docs/unattended.md).
    pub plans_dir: PathBuf,
    /// cloud-init's copy of this instance's user-data, whose `osm: plans:` are started like
    /// files of `plans_dir`; None ("" in the file) = not read.
    pub user_data: Option<PathBuf>,
    /// Publish the migrations' status in this host's Nova server metadata.
    pub publish_status: bool,
    pub copy: CopySettings,
    /// Destination cloud and conversion-host discovery (section `[openstack]`).
    pub openstack: crate::cloud::openstack::OpenStackSettings,
    /// vCenter (section `[vsphere]`); None when not configured.
    pub vsphere: Option<crate::cloud::vsphere::Endpoint>,
    /// virt-v2v-in-place (section `[conversion]`).
    pub conversion: ConversionSettings,
    /// Section `[migration]`.
    pub migration: crate::jobs::migrate::settings::MigrationSettings,
}

/// Tuning of the copy engine (section `[copy]`).
pub use crate::nbd::copy::Tuning as CopySettings;

/// virt-v2v-in-place (section `[conversion]`).
pub use crate::exec::virt_v2v::ConversionSettings;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key} = {value}: {why}")]
    Invalid {
        path: String,
        key: &'static str,
        value: String,
        why: &'static str,
    },
}

impl Settings {
    /// Load drop-ins from `dropin_dirs`, then `file` (if any).
    pub fn load(dropin_dirs: &[PathBuf], file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut paths = Vec::new();
        for dir in dropin_dirs {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut v: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            v.sort();
            paths.extend(v);
        }
        paths.extend(file.map(Path::to_path_buf));
        let mut frags = Vec::new();
        for p in paths {
            let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
                path: p.clone(),
                source,
            })?;
            let frag: Fragment = toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: p.clone(),
                message: e.to_string(),
            })?;
            frags.push(frag);
        }
        Self::merge(frags)
    }

    fn merge(frags: Vec<Fragment>) -> Result<Settings, ConfigError> {
        let mut s = Settings::defaults();
        let mut vs = VsphereFragment::default();
        for f in frags {
            if let Some(v) = f.vsphere {
                set_opt(&mut vs.url, v.url);
                set_opt(&mut vs.user, v.user);
                set_opt(&mut vs.password_file, v.password_file);
                set_opt(&mut vs.ca_file, v.ca_file);
                set_opt(&mut vs.thumbprint, v.thumbprint);
                set_opt(&mut vs.insecure, v.insecure);
                set_opt(&mut vs.timeout_seconds, v.timeout_seconds);
            }
            if let Some(a) = f.agent {
                set(&mut s.socket, a.socket);
                set(&mut s.state_dir, a.state_dir);
                set(&mut s.runtime_dir, a.runtime_dir);
                set(&mut s.log_dir, a.log_dir);
                set(&mut s.byid_dir, a.byid_dir);
                set(&mut s.admin_group, a.admin_group);
                set(&mut s.nbdkit, a.nbdkit);
                set(&mut s.plans_dir, a.plans_dir);
                if let Some(p) = a.user_data {
                    s.user_data = (!p.as_os_str().is_empty()).then_some(p);
                }
                set(&mut s.publish_status, a.publish_status);
                if let Some(b) = a.dbus {
                    s.dbus = match b.as_str() {
                        "system" => Bus::System,
                        "none" => Bus::None,
                        addr => Bus::Address(addr.to_string()),
                    };
                }
            }
            if let Some(c) = f.conversion {
                apply_conversion(&mut s.conversion, c)?;
            }
            if let Some(o) = f.openstack {
                s.openstack.apply(o);
            }
            if let Some(m) = f.migration {
                s.migration.apply(m);
            }
            if let Some(c) = f.copy {
                let bad = |key, value: u64, why| ConfigError::Invalid {
                    path: "config".into(),
                    key,
                    value: value.to_string(),
                    why,
                };
                if let Some(n) = c.connections {
                    if !(1..=16).contains(&n) {
                        return Err(bad("copy.connections", n as u64, "must be 1 to 16"));
                    }
                    s.copy.connections = n as usize;
                }
                if let Some(m) = c.chunk_mib {
                    if !(1..=1024).contains(&m) {
                        return Err(bad("copy.chunk_mib", m, "must be 1 to 1024"));
                    }
                    s.copy.chunk_size = m << 20;
                }
                if let Some(k) = c.request_kib {
                    if !(4..=32768).contains(&k) || k % 4 != 0 {
                        return Err(bad("copy.request_kib", k, "must be a multiple of 4 from 4 to 32768"));
                    }
                    s.copy.request_size = (k << 10) as usize;
                }
                if let Some(m) = c.checkpoint_mib {
                    s.copy.checkpoint_bytes = m.max(1) << 20;
                }
                if let Some(secs) = c.checkpoint_seconds {
                    s.copy.checkpoint_interval = Duration::from_secs(secs.max(1));
                }
            }
        }
        s.vsphere = vsphere_endpoint(vs)?;
        Ok(s)
    }

    pub fn defaults() -> Settings {
        Settings {
            socket: osm_api::DEFAULT_SOCKET.into(),
            state_dir: "/var/lib/osm".into(),
            runtime_dir: "/run/osm".into(),
            log_dir: "/var/log/osm".into(),
            byid_dir: "/dev/disk/by-id".into(),
            dbus: Bus::System,
            admin_group: "osm".into(),
            nbdkit: "nbdkit".into(),
            plans_dir: "/etc/osm/plans.d".into(),
            user_data: Some("/var/lib/cloud/instance/user-data.txt".into()),
            publish_status: true,
            copy: CopySettings {
                connections: 4,
                chunk_size: 16 << 20,
                request_size: 2 << 20,
                checkpoint_bytes: 64 << 20,
                checkpoint_interval: Duration::from_secs(2),
            },
            openstack: Default::default(),
            vsphere: None,
            conversion: ConversionSettings::default(),
            migration: Default::default(),
        }
    }
}

fn set_opt<T>(slot: &mut Option<T>, v: Option<T>) {
    if v.is_some() {
        *slot = v;
    }
}

/// `[conversion]` over the defaults; `virtio_win = ""` means none.
fn apply_conversion(s: &mut ConversionSettings, c: ConversionFragment) -> Result<(), ConfigError> {
    set(&mut s.program, c.program);
    if let Some(m) = c.timeout_minutes {
        if m == 0 {
            return Err(ConfigError::Invalid {
                path: "config".into(),
                key: "conversion.timeout_minutes",
                value: m.to_string(),
                why: "must be at least 1",
            });
        }
        s.timeout = Duration::from_secs(m.saturating_mul(60));
    }
    if let Some(v) = c.virtio_win {
        s.virtio_win = (!v.as_os_str().is_empty()).then_some(v);
    }
    set(&mut s.force_tcg, c.force_tcg);
    set(&mut s.debug, c.debug);
    set(&mut s.cache_dir, c.cache_dir);
    Ok(())
}

/// `[vsphere]` → the endpoint: https URL, user, password file, and one way to trust it.
fn vsphere_endpoint(v: VsphereFragment) -> Result<Option<crate::cloud::vsphere::Endpoint>, ConfigError> {
    use crate::cloud::vsphere::{Endpoint, Trust};
    let bad = |key, value: &str, why| ConfigError::Invalid {
        path: "config".into(),
        key,
        value: value.to_string(),
        why,
    };
    let Some(raw) = v.url else {
        if v.user.is_some() || v.password_file.is_some() {
            return Err(bad("vsphere.url", "", "is required when [vsphere] is set"));
        }
        return Ok(None);
    };
    let mut url = url::Url::parse(&raw).map_err(|_| bad("vsphere.url", &raw, "is not a URL (https://vcenter/sdk)"))?;
    if url.scheme() != "https" {
        return Err(bad("vsphere.url", &raw, "must be https://"));
    }
    if url.path() == "/" || url.path().is_empty() {
        url.set_path("/sdk");
    }
    let user = v.user.ok_or_else(|| bad("vsphere.user", "", "is required"))?;
    let password_file = v
        .password_file
        .ok_or_else(|| bad("vsphere.password_file", "", "is required (a file holding the password)"))?;
    let insecure = v.insecure.unwrap_or(false);
    let trust = match (v.ca_file, v.thumbprint, insecure) {
        (None, None, false) => Trust::System,
        (Some(ca), None, false) => Trust::CaFile(ca),
        (None, Some(t), false) => {
            Trust::Thumbprint(crate::cloud::vsphere::tls::parse_thumbprint(&t).map_err(|_| {
                bad(
                    "vsphere.thumbprint",
                    &t,
                    "must be a SHA-1 or SHA-256 fingerprint, AA:BB:… as openssl prints it",
                )
            })?)
        }
        (None, None, true) => Trust::Insecure,
        _ => {
            return Err(bad(
                "vsphere.insecure",
                &insecure.to_string(),
                "set only one of ca_file, thumbprint and insecure",
            ))
        }
    };
    Ok(Some(Endpoint {
        url,
        user,
        password_file,
        trust,
        timeout: Duration::from_secs(v.timeout_seconds.unwrap_or(120).max(1)),
    }))
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_fragments_win_and_unknown_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10-a.toml"),
            "[agent]\nsocket = \"/a\"\nstate_dir = \"/s\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("20-b.toml"),
            "[agent]\nsocket = \"/b\"\ndbus = \"none\"\n[copy]\nconnections = 2\n",
        )
        .unwrap();
        let s = Settings::load(&[dir.path().to_path_buf()], None).unwrap();
        assert_eq!(s.socket, PathBuf::from("/b"));
        assert_eq!(s.state_dir, PathBuf::from("/s"));
        assert_eq!(s.dbus, Bus::None);
        assert_eq!(s.copy.connections, 2);
        assert_eq!(s.plans_dir, PathBuf::from("/etc/osm/plans.d"));
        assert!(s.publish_status);
        assert_eq!(
            s.user_data,
            Some(PathBuf::from("/var/lib/cloud/instance/user-data.txt"))
        );
        std::fs::write(
            dir.path().join("30-c.toml"),
            "[agent]\nplans_dir = \"/p\"\npublish_status = false\nuser_data = \"\"\n",
        )
        .unwrap();
        let s = Settings::load(&[dir.path().to_path_buf()], None).unwrap();
        assert_eq!(s.plans_dir, PathBuf::from("/p"));
        assert!(!s.publish_status);
        assert_eq!(s.user_data, None);
        std::fs::remove_file(dir.path().join("30-c.toml")).unwrap();

        let bad = dir.path().join("main.toml");
        std::fs::write(&bad, "[agent]\nsokcet = \"/x\"\n").unwrap();
        let err = Settings::load(&[], Some(&bad)).unwrap_err().to_string();
        assert!(err.contains("main.toml") && err.contains("sokcet"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let f = Fragment {
            copy: Some(CopyFragment {
                connections: Some(99),
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = Settings::merge(vec![f]).unwrap_err().to_string();
        assert!(err.contains("copy.connections"), "{err}");
    }

    #[test]
    fn vsphere_section_needs_one_trust_and_a_valid_thumbprint() {
        use crate::cloud::vsphere::Trust;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.toml");
        let base = "[vsphere]\nurl = \"https://vc.example.com\"\nuser = \"u\"\npassword_file = \"/etc/osm/vc\"\n";
        std::fs::write(
            &f,
            format!("{base}thumbprint = \"{}\"\n", "AB:".repeat(20).trim_end_matches(':')),
        )
        .unwrap();
        let s = Settings::load(&[], Some(&f)).unwrap();
        let ep = s.vsphere.unwrap();
        assert_eq!(ep.url.as_str(), "https://vc.example.com/sdk");
        assert_eq!(ep.trust, Trust::Thumbprint(vec![0xAB; 20]));
        std::fs::write(&f, format!("{base}thumbprint = \"AB:CD\"\n")).unwrap();
        let e = Settings::load(&[], Some(&f)).unwrap_err().to_string();
        assert!(e.contains("vsphere.thumbprint"), "{e}");
        std::fs::write(&f, format!("{base}insecure = true\nca_file = \"/x\"\n")).unwrap();
        assert!(Settings::load(&[], Some(&f)).is_err());
        std::fs::write(&f, base).unwrap();
        assert_eq!(
            Settings::load(&[], Some(&f)).unwrap().vsphere.unwrap().trust,
            Trust::System
        );
        assert!(Settings::load(&[], None).unwrap().vsphere.is_none());
    }

    #[test]
    fn conversion_section_defaults_and_overrides() {
        let d = Settings::defaults().conversion;
        assert_eq!(d.program, "virt-v2v-in-place");
        assert_eq!(d.timeout, Duration::from_secs(120 * 60));
        assert!(!d.force_tcg && !d.debug);
        assert_eq!(
            d.virtio_win.is_some(),
            Path::new(crate::exec::virt_v2v::DEFAULT_VIRTIO_WIN).exists()
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "[conversion]\nprogram = \"/opt/v2v\"\ntimeout_minutes = 5\nvirtio_win = \"/srv/virtio-win.iso\"\nforce_tcg = true\ndebug = true\ncache_dir = \"/c\"\n",
        )
        .unwrap();
        let c = Settings::load(&[], Some(&f)).unwrap().conversion;
        assert_eq!(c.program, "/opt/v2v");
        assert_eq!(c.timeout, Duration::from_secs(300));
        assert_eq!(c.virtio_win, Some(PathBuf::from("/srv/virtio-win.iso")));
        assert!(c.force_tcg && c.debug);
        assert_eq!(c.cache_dir, PathBuf::from("/c"));
        std::fs::write(&f, "[conversion]\nvirtio_win = \"\"\n").unwrap();
        assert_eq!(Settings::load(&[], Some(&f)).unwrap().conversion.virtio_win, None);
        std::fs::write(&f, "[conversion]\ntimeout_minutes = 0\n").unwrap();
        let e = Settings::load(&[], Some(&f)).unwrap_err().to_string();
        assert!(e.contains("conversion.timeout_minutes"), "{e}");
        std::fs::write(&f, "[conversion]\nvirtio = \"/x\"\n").unwrap();
        let e = Settings::load(&[], Some(&f)).unwrap_err().to_string();
        assert!(e.contains("virtio"), "{e}");
    }
}
