//! Conversion-host self-discovery: which Nova instance am I, in which AZ and project, and
//! how many volumes are attached to me already.
//!
//! Instance uuid, first that answers: the configured `instance_id` (an explicit override),
//! the metadata service (`<metadata_url>/openstack/latest/meta_data.json`, with a
//! timeout), the config drive (filesystem labelled `config-2`, mounted read-only for the
//! read), the SMBIOS/DMI system uuid (Nova sets it to the instance uuid).
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Client, Error};

/// Inputs of the discovery (from `[openstack]`).
#[derive(Debug, Clone)]
pub struct DiscoveryInputs {
    pub instance_id: Option<String>,
    pub metadata_url: String,
    pub metadata_timeout: Duration,
    /// Where to look for the config drive by label (default /dev/disk/by-label).
    pub by_label_dir: PathBuf,
    /// The DMI uuid file (default /sys/class/dmi/id/product_uuid).
    pub dmi_uuid_file: PathBuf,
}

/// Where the instance uuid came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Configuration,
    MetadataService,
    ConfigDrive,
    Dmi,
}

#[derive(Debug, Clone)]
pub struct HostIdentity {
    pub instance_id: String,
    pub source: Source,
    pub availability_zone: Option<String>,
    pub project_id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConversionHost {
    pub identity: HostIdentity,
    /// Volumes attached to this instance now (Nova's per-instance limit is ~25 with
    /// virtio-blk; the scheduler keeps below it).
    pub attached_volumes: usize,
}

#[derive(Debug, Deserialize)]
struct MetaData {
    uuid: String,
    #[serde(default)]
    availability_zone: Option<String>,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

/// Find this host's instance uuid (and AZ/project where the source tells them).
pub async fn identify(inp: &DiscoveryInputs) -> Result<HostIdentity, Error> {
    let mut tried = Vec::new();
    if let Some(id) = inp.instance_id.as_ref().filter(|s| !s.is_empty()) {
        return Ok(HostIdentity {
            instance_id: id.clone(),
            source: Source::Configuration,
            availability_zone: None,
            project_id: None,
            name: None,
        });
    }
    match metadata_service(&inp.metadata_url, inp.metadata_timeout).await {
        Ok(md) => return Ok(from_md(md, Source::MetadataService)),
        Err(e) => tried.push(format!("metadata service: {e}")),
    }
    match config_drive(&inp.by_label_dir).await {
        Ok(md) => return Ok(from_md(md, Source::ConfigDrive)),
        Err(e) => tried.push(format!("config drive: {e}")),
    }
    match std::fs::read_to_string(&inp.dmi_uuid_file) {
        Ok(s) if is_uuid(s.trim()) => {
            return Ok(HostIdentity {
                instance_id: s.trim().to_ascii_lowercase(),
                source: Source::Dmi,
                availability_zone: None,
                project_id: None,
                name: None,
            })
        }
        Ok(s) => tried.push(format!("{}: {:?} is not a uuid", inp.dmi_uuid_file.display(), s.trim())),
        Err(e) => tried.push(format!("{}: {e}", inp.dmi_uuid_file.display())),
    }
    Err(Error::Config(format!(
        "cannot tell which instance this host is ({}); set [openstack] instance_id",
        tried.join("; ")
    )))
}

fn from_md(md: MetaData, source: Source) -> HostIdentity {
    HostIdentity {
        instance_id: md.uuid,
        source,
        availability_zone: md.availability_zone,
        project_id: md.project_id,
        name: md.name,
    }
}

async fn metadata_service(base: &str, timeout: Duration) -> Result<MetaData, String> {
    let url = format!("{}/openstack/latest/meta_data.json", base.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let r = http.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("{url}: HTTP {}", r.status()));
    }
    r.json::<MetaData>().await.map_err(|e| format!("{url}: {e}"))
}

/// Read meta_data.json from the `config-2` filesystem (iso9660 or vfat), mounted
/// read-only in a private folder for the read.
async fn config_drive(by_label: &Path) -> Result<MetaData, String> {
    let dev = by_label.join("config-2");
    if !dev.exists() {
        return Err(format!("{} does not exist", dev.display()));
    }
    let dir = tempdir().map_err(|e| format!("temporary mount point: {e}"))?;
    let out = tokio::process::Command::new("mount")
        .args(["-o", "ro,nosuid,nodev,noexec"])
        .arg(&dev)
        .arg(&dir)
        .output()
        .await
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(&dir);
        return Err(format!(
            "mount {}: {}",
            dev.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = std::fs::read_to_string(dir.join("openstack/latest/meta_data.json"));
    let _ = tokio::process::Command::new("umount").arg(&dir).status().await;
    let _ = std::fs::remove_dir(&dir);
    let text = text.map_err(|e| format!("openstack/latest/meta_data.json: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("meta_data.json: {e}"))
}

fn tempdir() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let p = std::env::temp_dir().join(format!("osm-config-drive-{}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&p)?;
    Ok(p)
}

fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.chars().enumerate().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Identify this host, then fill AZ and project from Nova when the source did not say,
/// and count the volumes attached to it.
pub async fn discover(client: &Client, inp: &DiscoveryInputs) -> Result<ConversionHost, Error> {
    let mut identity = identify(inp).await?;
    if identity.availability_zone.is_none() || identity.project_id.is_none() || identity.name.is_none() {
        let s = client.get_server(&identity.instance_id).await.map_err(|e| match e {
            Error::NotFound(_) => Error::Config(format!(
                "this host says it is instance {} ({:?}) but Nova does not know it in this project; set [openstack] instance_id",
                identity.instance_id, identity.source
            )),
            e => e,
        })?;
        identity.availability_zone = identity.availability_zone.or(s.availability_zone);
        identity.project_id = identity.project_id.or(s.tenant_id);
        identity.name = identity.name.or(Some(s.name));
    }
    let attached_volumes = client.server_attachments(&identity.instance_id).await?.len();
    Ok(ConversionHost {
        identity,
        attached_volumes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn falls_back_to_dmi_then_explains() {
        let d = tempfile::tempdir().unwrap();
        let dmi = d.path().join("product_uuid");
        std::fs::write(&dmi, "3533A5C5-9CDE-4D52-AE77-E37D82E6F12E\n").unwrap();
        let mut inp = DiscoveryInputs {
            instance_id: None,
            metadata_url: "http://127.0.0.1:1".into(),
            metadata_timeout: Duration::from_millis(300),
            by_label_dir: d.path().join("by-label"),
            dmi_uuid_file: dmi.clone(),
        };
        let id = identify(&inp).await.unwrap();
        assert_eq!(id.source, Source::Dmi);
        assert_eq!(id.instance_id, "3533a5c5-9cde-4d52-ae77-e37d82e6f12e");
        std::fs::remove_file(&dmi).unwrap();
        let err = identify(&inp).await.unwrap_err().to_string();
        assert!(err.contains("metadata service") && err.contains("instance_id"), "{err}");
        inp.instance_id = Some("x".into());
        assert_eq!(identify(&inp).await.unwrap().source, Source::Configuration);
    }
}
