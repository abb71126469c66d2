//! Attach a Cinder volume to this host and find its block device, reliably: under a
//! host-wide lock, wait (timeout, backoff) for the by-id link of the volume's serial
//! (`virtio-<id[:20]>`, `scsi-0QEMU_QEMU_HARDDISK_<id>`, `nvme-*<id>`), settle udev
//! where it runs, check the device's size against the volume's, and fall back to a
//! before/after `lsblk` diff (still under the lock, so the new disk is ours). A device
//! that never appears is an error naming the volume and the attachment, and the
//! attachment is undone. Detach waits until the volume is `available` again.
mod lsblk;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cloud::openstack::{self, OpenStack};

pub use lsblk::{lsblk, new_disks, Disk};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    OpenStack(#[from] openstack::Error),
    #[error("volume {volume} was attached to server {server} (attachment {attachment}) but no device appeared within {secs}s (looked for {looked}; no new disk of {size} bytes in lsblk either); the attachment was undone{undo}")]
    NoDevice {
        volume: String,
        server: String,
        attachment: String,
        secs: u64,
        looked: String,
        size: u64,
        /// "" or "; undoing it failed too: …"
        undo: String,
    },
    #[error(
        "volume {volume}: device {device} has {found} bytes but the volume has {want}; the attachment was undone{undo}"
    )]
    SizeMismatch {
        volume: String,
        device: String,
        found: u64,
        want: u64,
        undo: String,
    },
    #[error("attach lock {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
}

/// Where and how long to look.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `/dev/disk/by-id` (the test bed's hypervisor uses its own).
    pub byid_dir: PathBuf,
    /// The host-wide lock file (in the agent's runtime folder).
    pub lock_file: PathBuf,
    /// Wait this long for the device.
    pub device_timeout: Duration,
    /// Wait this long for Cinder status changes (in-use, available).
    pub volume_timeout: Duration,
    /// Look at the lsblk diff only after this long without a by-id link (the link is the
    /// reliable name; the diff is the fallback for hosts without udev serial links).
    pub lsblk_grace: Duration,
}

impl Settings {
    pub fn new(byid_dir: impl Into<PathBuf>, runtime_dir: &Path) -> Settings {
        Settings {
            byid_dir: byid_dir.into(),
            lock_file: runtime_dir.join("attach.lock"),
            device_timeout: Duration::from_secs(120),
            volume_timeout: Duration::from_secs(600),
            lsblk_grace: Duration::from_secs(15),
        }
    }
}

/// A volume attached to this host and its device.
#[derive(Debug, Clone)]
pub struct AttachedVolume {
    pub volume_id: String,
    pub server_id: String,
    pub attachment_id: String,
    /// The by-id link (or /dev/<name> when found by the lsblk diff).
    pub path: PathBuf,
    /// The resolved device node, e.g. /dev/vdb.
    pub device: PathBuf,
    pub size: u64,
}

/// A held host-wide lock (flock); released on drop.
pub struct HostLock {
    _file: File,
}

impl HostLock {
    pub async fn acquire(path: &Path) -> Result<HostLock, Error> {
        let p = path.to_path_buf();
        let res = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&p)?;
            // SAFETY: flock on a valid fd we own; blocks until the lock is ours.
            loop {
                let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
                if r == 0 {
                    return Ok(f);
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r);
        res.map(|f| HostLock { _file: f }).map_err(|source| Error::Lock {
            path: path.to_path_buf(),
            source,
        })
    }
}

/// The by-id names a volume's device may carry.
pub fn byid_candidates(byid_dir: &Path, volume_id: &str) -> Vec<PathBuf> {
    let short: String = volume_id.chars().take(20).collect();
    let mut v = vec![
        byid_dir.join(format!("virtio-{short}")),
        byid_dir.join(format!("scsi-0QEMU_QEMU_HARDDISK_{volume_id}")),
        byid_dir.join(format!("scsi-0QEMU_QEMU_HARDDISK_{short}")),
    ];
    // NVMe serials carry the id (sometimes without dashes) at the end of the name.
    let nodash = volume_id.replace('-', "");
    if let Ok(rd) = std::fs::read_dir(byid_dir) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("nvme-")
                && !name.contains("-part")
                && (name.ends_with(volume_id) || name.ends_with(&nodash))
            {
                v.push(e.path());
            }
        }
    }
    v
}

/// The first candidate that exists, resolved: (link, device).
pub fn find_byid(byid_dir: &Path, volume_id: &str) -> Option<(PathBuf, PathBuf)> {
    byid_candidates(byid_dir, volume_id)
        .into_iter()
        .find_map(|p| std::fs::canonicalize(&p).ok().map(|d| (p, d)))
}

/// Whether `device` (as recorded at attach) is still the volume's: the by-id link of its
/// serial, or for a device found by the lsblk diff its sysfs serial, must name the
/// volume, resolve to a block device, and have the volume's size (`size`, or larger: Cinder
/// rounds up to GiB). The reason when not.
pub fn verify(byid_dir: &Path, volume_id: &str, device: &str, size: u64) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let path = Path::new(device);
    let node = std::fs::canonicalize(path).map_err(|_| format!("its device {device} is gone"))?;
    if !std::fs::metadata(&node).is_ok_and(|m| m.file_type().is_block_device()) {
        return Err(format!("{device} is not a block device"));
    }
    let named = match find_byid(byid_dir, volume_id) {
        Some((_, dev)) => dev == node,
        None => serial_of(&node).is_some_and(|s| !s.is_empty() && volume_id.starts_with(&s)),
    };
    if !named {
        return Err(format!(
            "{device} ({}) no longer carries the volume's serial",
            node.display()
        ));
    }
    match device_size(&node) {
        Ok(n) if n >= size => Ok(()),
        Ok(n) => Err(format!("{device} has {n} bytes, less than the disk's {size}")),
        Err(e) => Err(format!("{device}: {e}")),
    }
}

/// The serial a virtio disk reports in sysfs (the first 20 characters of the volume id).
fn serial_of(node: &Path) -> Option<String> {
    let name = node.file_name()?;
    let sys = Path::new("/sys/class/block").join(name);
    ["serial", "device/serial"]
        .iter()
        .find_map(|f| std::fs::read_to_string(sys.join(f)).ok())
        .map(|s| s.trim().to_string())
}

/// Size in bytes of a block device (from sysfs) or of a regular file.
pub fn device_size(dev: &Path) -> std::io::Result<u64> {
    if let Some(name) = dev.file_name() {
        let sys = Path::new("/sys/class/block").join(name).join("size");
        if let Ok(s) = std::fs::read_to_string(&sys) {
            if let Ok(sectors) = s.trim().parse::<u64>() {
                return Ok(sectors * 512);
            }
        }
    }
    std::fs::metadata(dev).map(|m| m.len())
}

/// `udevadm settle` where udev runs (its control socket exists); else nothing.
async fn udev_settle() {
    if !Path::new("/run/udev/control").exists() {
        return;
    }
    let _ = tokio::process::Command::new("udevadm")
        .args(["settle", "--timeout=10"])
        .kill_on_drop(true)
        .status()
        .await;
}

/// Attach `volume_id` to `server_id` (this host) and return its device.
pub async fn attach(
    os: &dyn OpenStack,
    s: &Settings,
    server_id: &str,
    volume_id: &str,
) -> Result<AttachedVolume, Error> {
    let vol = os.get_volume(volume_id).await?;
    let want = vol.size_bytes();
    let lock = HostLock::acquire(&s.lock_file).await?;
    let before = lsblk().await.ok();
    let att = os.attach_volume(server_id, volume_id).await?;
    let attachment = att.id.clone().unwrap_or_else(|| volume_id.to_string());
    tracing::info!(
        volume = volume_id,
        server = server_id,
        attachment,
        "attach requested; waiting for the device"
    );
    udev_settle().await;

    let start = Instant::now();
    let mut delay = Duration::from_millis(50);
    let mut wrong_size: Option<(PathBuf, u64)> = None;
    let mut last_settle = Instant::now();
    let found = loop {
        if let Some((link, dev)) = find_byid(&s.byid_dir, volume_id) {
            match device_size(&dev) {
                Ok(n) if n == want => break Some((link, dev)),
                Ok(n) => wrong_size = Some((dev.clone(), n)),
                Err(_) => {}
            }
        } else if start.elapsed() >= s.lsblk_grace {
            if let (Some(before), Ok(after)) = (&before, lsblk().await) {
                let new: Vec<Disk> = new_disks(before, &after)
                    .into_iter()
                    .filter(|d| d.size == want)
                    .collect();
                if new.len() == 1 {
                    let dev = PathBuf::from(format!("/dev/{}", new[0].name));
                    tracing::warn!(volume = volume_id, device = %dev.display(), "no by-id link; found the device by the lsblk diff");
                    break Some((dev.clone(), dev));
                }
            }
        }
        if start.elapsed() >= s.device_timeout {
            break None;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        if last_settle.elapsed() >= Duration::from_secs(5) {
            udev_settle().await;
            last_settle = Instant::now();
        }
    };
    drop(lock);

    let Some((path, device)) = found else {
        let undo = undo(os, s, server_id, volume_id).await;
        if let Some((dev, found)) = wrong_size {
            return Err(Error::SizeMismatch {
                volume: volume_id.into(),
                device: dev.display().to_string(),
                found,
                want,
                undo,
            });
        }
        let looked: Vec<String> = byid_candidates(&s.byid_dir, volume_id)
            .iter()
            .map(|p| p.display().to_string())
            .chain(std::iter::once(format!("{}/nvme-*{volume_id}", s.byid_dir.display())))
            .collect();
        return Err(Error::NoDevice {
            volume: volume_id.into(),
            server: server_id.into(),
            attachment,
            secs: s.device_timeout.as_secs(),
            looked: looked.join(", "),
            size: want,
            undo,
        });
    };
    if let Err(e) = os.wait_volume(volume_id, &["in-use"], s.volume_timeout).await {
        let _ = undo(os, s, server_id, volume_id).await;
        return Err(e.into());
    }
    tracing::info!(volume = volume_id, device = %device.display(), secs = start.elapsed().as_secs_f32(), "device found");
    Ok(AttachedVolume {
        volume_id: volume_id.into(),
        server_id: server_id.into(),
        attachment_id: attachment,
        path,
        device,
        size: want,
    })
}

async fn undo(os: &dyn OpenStack, s: &Settings, server_id: &str, volume_id: &str) -> String {
    match detach(os, s, server_id, volume_id).await {
        Ok(()) => String::new(),
        Err(e) => format!("; undoing it failed too: {e}"),
    }
}

/// Detach and wait until Cinder shows the volume `available` (and its by-id link gone,
/// briefly: a re-attach must not find a stale link).
pub async fn detach(os: &dyn OpenStack, s: &Settings, server_id: &str, volume_id: &str) -> Result<(), Error> {
    // A volume still `attaching` cannot be detached yet.
    let v = os.get_volume(volume_id).await?;
    if v.status == "attaching" {
        os.wait_volume(volume_id, &["in-use", "available"], s.volume_timeout)
            .await?;
    }
    os.detach_volume(server_id, volume_id).await?;
    os.wait_volume(volume_id, &["available"], s.volume_timeout).await?;
    let end = Instant::now() + Duration::from_secs(10);
    while find_byid(&s.byid_dir, volume_id).is_some() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if find_byid(&s.byid_dir, volume_id).is_some() {
        tracing::warn!(
            volume = volume_id,
            "volume is available but its by-id link is still there"
        );
    }
    Ok(())
}
