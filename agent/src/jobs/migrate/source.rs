//! Where a disk's bytes are read from: VDDK (from the snapshot), the datastore's HTTPS
//! /folder URL, or a local mount of the datastore. Each becomes an nbdkit plugin.
use std::path::PathBuf;

use crate::exec::nbdkit::{Curl, Plugin, Vddk};
use crate::plan::{Plan, Transport};

/// What every disk of one VM shares.
#[derive(Debug, Clone)]
pub struct SourceContext {
    pub transport: Transport,
    /// vCenter host (and port) as the plan names it.
    pub vcenter: String,
    pub user: String,
    pub password_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// SHA-1 thumbprint vCenter presented (for VDDK).
    pub thumbprint: String,
    pub vddk_libdir: Option<PathBuf>,
    pub datacenter: String,
    pub vm_moref: String,
    pub local_disk_path: Option<PathBuf>,
}

/// `[datastore1] dir/name.vmdk` → (`datastore1`, `dir/name-flat.vmdk`).
pub fn flat_file(datastore_path: &str) -> Option<(String, String)> {
    let rest = datastore_path.strip_prefix('[')?;
    let (ds, path) = rest.split_once(']')?;
    let path = path.trim_start();
    let stem = path.strip_suffix(".vmdk")?;
    Some((ds.to_string(), format!("{stem}-flat.vmdk")))
}

/// The plugin serving one disk (`snapshot`: the moref of the sync snapshot).
pub fn plugin(ctx: &SourceContext, datastore_path: &str, snapshot: &str) -> Result<Plugin, String> {
    if let Some(root) = &ctx.local_disk_path {
        let (ds, flat) = flat_file(datastore_path).ok_or_else(|| {
            format!("cannot read disk path '{datastore_path}' (expected '[datastore] dir/name.vmdk')")
        })?;
        let candidates = [root.join(&ds).join(&flat), root.join(&flat)];
        return candidates
            .iter()
            .find(|p| p.is_file())
            .map(|p| Plugin::File(p.clone()))
            .ok_or_else(|| {
                format!(
                    "disk {datastore_path} is not under local_disk_path: looked for {} — mount the datastore there, or remove local_disk_path",
                    candidates.map(|p| p.display().to_string()).join(" and ")
                )
            });
    }
    match ctx.transport {
        Transport::Vddk => Ok(Plugin::Vddk(Box::new(Vddk {
            server: ctx.vcenter.split(':').next().unwrap_or(&ctx.vcenter).to_string(),
            user: ctx.user.clone(),
            password_file: ctx.password_file.clone(),
            thumbprint: ctx.thumbprint.clone(),
            vm_moref: ctx.vm_moref.clone(),
            snapshot_moref: Some(snapshot.to_string()),
            transports: None,
            libdir: ctx.vddk_libdir.clone(),
            compression: None,
            file: datastore_path.to_string(),
        }))),
        Transport::Https => {
            let (ds, flat) = flat_file(datastore_path).ok_or_else(|| {
                format!("cannot read disk path '{datastore_path}' (expected '[datastore] dir/name.vmdk')")
            })?;
            let mut url = url::Url::parse(&format!("https://{}/folder", ctx.vcenter))
                .map_err(|e| format!("vCenter address '{}': {e}", ctx.vcenter))?;
            url.path_segments_mut()
                .map_err(|_| format!("vCenter address '{}' cannot take a path", ctx.vcenter))?
                .extend(flat.split('/'));
            url.query_pairs_mut()
                .append_pair("dcPath", &ctx.datacenter)
                .append_pair("dsName", &ds);
            let url = url.to_string();
            Ok(Plugin::Curl(Box::new(Curl {
                url,
                user: Some(ctx.user.clone()),
                password_file: Some(ctx.password_file.clone()),
                ca_file: ctx.ca_file.clone(),
            })))
        }
    }
}

/// The transport a plan uses: its own, else the agent's default.
pub fn transport(plan: &Plan, default: Transport) -> Transport {
    plan.source.transport.unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(t: Transport) -> SourceContext {
        SourceContext {
            transport: t,
            vcenter: "127.0.0.1:8989".into(),
            user: "osm@vsphere.local".into(),
            password_file: "/run/osm/pw".into(),
            ca_file: Some("/etc/osm/ca.pem".into()),
            thumbprint: "AA:BB".into(),
            vddk_libdir: None,
            datacenter: "DC 0".into(),
            vm_moref: "vm-42".into(),
            local_disk_path: None,
        }
    }

    #[test]
    fn https_urls_are_encoded_and_vddk_reads_the_snapshot() {
        let p = plugin(
            &ctx(Transport::Https),
            "[datastore1] web [prod]/web [prod].vmdk",
            "snapshot-7",
        )
        .unwrap();
        let Plugin::Curl(c) = p else { panic!() };
        assert_eq!(
            c.url,
            "https://127.0.0.1:8989/folder/web%20[prod]/web%20[prod]-flat.vmdk?dcPath=DC+0&dsName=datastore1"
        );
        let Plugin::Vddk(v) = plugin(&ctx(Transport::Vddk), "[ds] a/a.vmdk", "snapshot-7").unwrap() else {
            panic!()
        };
        assert_eq!(
            (v.server.as_str(), v.snapshot_moref.as_deref()),
            ("127.0.0.1", Some("snapshot-7"))
        );
        assert!(plugin(&ctx(Transport::Https), "no brackets", "s").is_err());
    }

    #[test]
    fn local_disks_must_exist() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ds/a")).unwrap();
        std::fs::write(d.path().join("ds/a/a-flat.vmdk"), b"x").unwrap();
        let mut c = ctx(Transport::Vddk);
        c.local_disk_path = Some(d.path().into());
        assert!(matches!(plugin(&c, "[ds] a/a.vmdk", "s"), Ok(Plugin::File(_))));
        let e = plugin(&c, "[ds] b/b.vmdk", "s").unwrap_err();
        assert!(e.contains("not under local_disk_path"), "{e}");
    }
}
