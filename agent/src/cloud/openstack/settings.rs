//! The `[openstack]` configuration section (merged by `crate::config`).
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::discovery::DiscoveryInputs;
use super::session::RetryPolicy;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenStackFragment {
    cloud: Option<String>,
    clouds_file: Option<PathBuf>,
    metadata_url: Option<String>,
    metadata_timeout_seconds: Option<u64>,
    instance_id: Option<String>,
    request_timeout_seconds: Option<u64>,
    call_deadline_seconds: Option<u64>,
    volume_timeout_seconds: Option<u64>,
    device_timeout_seconds: Option<u64>,
    server_timeout_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenStackSettings {
    /// Cloud name in clouds.yaml; None = `OS_CLOUD`, else the `OS_*` variables.
    pub cloud: Option<String>,
    /// None = `OS_CLIENT_CONFIG_FILE`, ./clouds.yaml, ~/.config/openstack, /etc/openstack.
    pub clouds_file: Option<PathBuf>,
    pub metadata_url: String,
    pub metadata_timeout: Duration,
    /// Overrides the discovered instance uuid of this host.
    pub instance_id: Option<String>,
    pub request_timeout: Duration,
    pub call_deadline: Duration,
    pub volume_timeout: Duration,
    pub device_timeout: Duration,
    pub server_timeout: Duration,
}

impl Default for OpenStackSettings {
    fn default() -> Self {
        OpenStackSettings {
            cloud: None,
            clouds_file: None,
            metadata_url: "http://169.254.169.254".into(),
            metadata_timeout: Duration::from_secs(5),
            instance_id: None,
            request_timeout: Duration::from_secs(60),
            call_deadline: Duration::from_secs(300),
            volume_timeout: Duration::from_secs(600),
            device_timeout: Duration::from_secs(120),
            server_timeout: Duration::from_secs(900),
        }
    }
}

impl OpenStackSettings {
    /// Apply one fragment; later fragments win key by key. An empty string clears.
    pub fn apply(&mut self, f: OpenStackFragment) {
        let secs = |v: Option<u64>, slot: &mut Duration| {
            if let Some(s) = v {
                *slot = Duration::from_secs(s.max(1));
            }
        };
        if let Some(c) = f.cloud {
            self.cloud = Some(c).filter(|s| !s.is_empty());
        }
        if let Some(p) = f.clouds_file {
            self.clouds_file = Some(p).filter(|p| !p.as_os_str().is_empty());
        }
        if let Some(u) = f.metadata_url {
            self.metadata_url = u;
        }
        if let Some(i) = f.instance_id {
            self.instance_id = Some(i).filter(|s| !s.is_empty());
        }
        secs(f.metadata_timeout_seconds, &mut self.metadata_timeout);
        secs(f.request_timeout_seconds, &mut self.request_timeout);
        secs(f.call_deadline_seconds, &mut self.call_deadline);
        secs(f.volume_timeout_seconds, &mut self.volume_timeout);
        secs(f.device_timeout_seconds, &mut self.device_timeout);
        secs(f.server_timeout_seconds, &mut self.server_timeout);
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            request_timeout: self.request_timeout,
            deadline: self.call_deadline,
            ..RetryPolicy::default()
        }
    }

    pub fn discovery(&self) -> DiscoveryInputs {
        DiscoveryInputs {
            instance_id: self.instance_id.clone(),
            metadata_url: self.metadata_url.clone(),
            metadata_timeout: self.metadata_timeout,
            by_label_dir: "/dev/disk/by-label".into(),
            dmi_uuid_file: "/sys/class/dmi/id/product_uuid".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_merges_key_by_key_and_refuses_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("10.toml"),
            "[openstack]\ncloud = \"dst\"\nmetadata_url = \"http://127.0.0.1:8775\"\ndevice_timeout_seconds = 30\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("20.toml"),
            "[openstack]\ninstance_id = \"abc\"\ncloud = \"\"\n",
        )
        .unwrap();
        let s = crate::config::Settings::load(&[d.path().to_path_buf()], None).unwrap();
        assert_eq!(s.openstack.cloud, None);
        assert_eq!(s.openstack.metadata_url, "http://127.0.0.1:8775");
        assert_eq!(s.openstack.device_timeout, Duration::from_secs(30));
        assert_eq!(s.openstack.instance_id.as_deref(), Some("abc"));
        assert_eq!(s.openstack.volume_timeout, OpenStackSettings::default().volume_timeout);
        let bad = d.path().join("bad.toml");
        std::fs::write(&bad, "[openstack]\nclud = \"x\"\n").unwrap();
        let e = crate::config::Settings::load(&[], Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("clud"), "{e}");
    }
}
