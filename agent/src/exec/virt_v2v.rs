//! virt-v2v-in-place: convert a VM's disks, already copied to this host (attached volumes
//! or raw files), so the guest boots on KVM/OpenStack. One run covers every disk of the VM
//! (the root may span disks), described to virt-v2v by a libvirt domain XML
//! (`-i libvirtxml`) that [`domain_xml`] writes.
//!
//! # How the root disk, firmware and OS are learned
//!
//! virt-v2v 2.2 (Debian 12) has no `-O` option for in-place conversion (later versions'
//! `-O` is not relied on), and without `-v` it prints only its steps (`[  27.5] Inspecting
//! the source`, `Converting 12.15 to run on KVM`: a product name, not the root). With `-v` it
//! prints, once, the result of its own inspection of the guest, a block of `i_KEY = value`
//! lines (`i_root = /dev/sdb1`, `i_type = linux`, `i_distro = debian`, `i_osinfo =
//! debian12`, `i_firmware = BIOS`, …). We always pass `-v` (`-x`, the call trace, only with
//! `[conversion] debug`) and read that block from the log while the tool runs, because:
//!
//! - it is exactly the root virt-v2v chose and converted (`--root first` on a multi-boot
//!   guest), so the disk we boot from is the disk that was converted; a separate inspection
//!   could pick another root;
//! - it costs nothing: a second libguestfs appliance (`virt-inspector`, guestfish) costs an
//!   appliance boot plus inspection, ~45 s under TCG (conversion hosts often have no nested
//!   KVM) for every VM;
//! - `--print-source` does no inspection (it only echoes the XML).
//!
//! The price is a larger log (~1 MB of appliance messages per run), which is also what one
//! needs to debug a failed conversion. `LC_ALL=C` keeps the messages parseable.
//!
//! The appliance names the disks `/dev/sda`, `/dev/sdb`, … in the XML's order, so a root on
//! a partition (`/dev/sdb1`, `btrfsvol:/dev/sdb2/@`) maps straight to a disk index. A root
//! on LVM (`/dev/VG/LV`) or MD RAID (`/dev/md127`) does not; only then one short read-only
//! guestfish session lists the PVs of the root's volume group (or the array's members) and
//! the lowest disk among them is the root disk (where installers put `/boot` and the boot
//! loader). Firmware: the XML always says what vSphere reported (`bios`/`efi`), and
//! virt-v2v converts for the source's firmware when it is known, so the result echoes the
//! spec; the guest's own view (`i_firmware`, UEFI when an ESP is mounted) is returned
//! beside it.
//!
//! Windows: virt-v2v installs virtio drivers from `VIRTIO_WIN` (`[conversion] virtio_win`).
//! Without them it would silently configure IDE/e1000, which do not suit OpenStack; so a
//! Windows guest without `virtio_win` is stopped as soon as inspection names it, before the
//! conversion starts, and a "no virtio drivers for this version" warning fails the run.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::runner;

/// The firmware the VM booted with at the source (vSphere's `firmware`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

impl Firmware {
    /// `"bios"` or `"uefi"`, as [`Conversion::firmware`] and Nova's `hw_firmware_type` spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Bios => "bios",
            Firmware::Uefi => "uefi",
        }
    }
}

/// Section `[conversion]` of the agent's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversionSettings {
    /// Program name (looked up on PATH) or absolute path.
    pub program: String,
    pub timeout: Duration,
    /// virtio-win ISO or folder for Windows guests; None = no Windows drivers.
    pub virtio_win: Option<PathBuf>,
    /// Run libguestfs' appliance under TCG even when /dev/kvm exists (test beds, broken nesting).
    pub force_tcg: bool,
    /// Add `-x` (every libguestfs call traced) to the always-on `-v`.
    pub debug: bool,
    /// libguestfs' appliance cache (LIBGUESTFS_CACHEDIR), kept between runs.
    pub cache_dir: PathBuf,
}

pub const DEFAULT_VIRTIO_WIN: &str = "/usr/share/virtio-win";

impl Default for ConversionSettings {
    fn default() -> Self {
        ConversionSettings {
            program: "virt-v2v-in-place".into(),
            timeout: Duration::from_secs(120 * 60),
            virtio_win: Path::new(DEFAULT_VIRTIO_WIN)
                .exists()
                .then(|| DEFAULT_VIRTIO_WIN.into()),
            force_tcg: false,
            debug: false,
            cache_dir: "/var/cache/osm".into(),
        }
    }
}

impl ConversionSettings {
    /// A spec for one VM with these settings.
    pub fn spec(
        &self,
        name: &str,
        memory_mib: u64,
        vcpus: u32,
        firmware: Firmware,
        disks: Vec<PathBuf>,
        log: PathBuf,
    ) -> ConvertSpec {
        ConvertSpec {
            name: name.into(),
            memory_mib,
            vcpus,
            firmware,
            disks,
            virtio_win: self.virtio_win.clone(),
            log,
            timeout: self.timeout,
            force_tcg: self.force_tcg,
            debug: self.debug,
            cache_dir: Some(self.cache_dir.clone()),
        }
    }
}

/// One conversion. `Default` gives a 120-minute timeout and no disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertSpec {
    pub name: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub firmware: Firmware,
    /// Block devices or raw files, in the VM's disk order.
    pub disks: Vec<PathBuf>,
    /// virtio-win ISO or folder (`VIRTIO_WIN`); needed for Windows guests.
    pub virtio_win: Option<PathBuf>,
    /// virt-v2v's stdout and stderr (appended; created 0600).
    pub log: PathBuf,
    pub timeout: Duration,
    pub force_tcg: bool,
    /// Also trace every libguestfs call (`-x`).
    pub debug: bool,
    /// LIBGUESTFS_CACHEDIR; None = /var/tmp (libguestfs' own default).
    pub cache_dir: Option<PathBuf>,
}

impl Default for ConvertSpec {
    fn default() -> Self {
        ConvertSpec {
            name: String::new(),
            memory_mib: 1024,
            vcpus: 1,
            firmware: Firmware::Bios,
            disks: Vec::new(),
            virtio_win: None,
            log: PathBuf::new(),
            timeout: Duration::from_secs(120 * 60),
            force_tcg: false,
            debug: false,
            cache_dir: None,
        }
    }
}

/// What the conversion found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Conversion {
    /// Index into `ConvertSpec::disks` of the disk holding the root filesystem: boot it first.
    pub root_disk: usize,
    /// Firmware the guest was converted for, `"bios"` or `"uefi"`.
    pub firmware: String,
    /// libguestfs' `type`: `linux`, `windows`, …
    pub os_type: String,
    /// libguestfs' `distro`: `debian`, `rhel`, `windows`, …
    pub os_distro: String,
    /// libosinfo short id (`debian12`, `win2k19`), `unknown` when libosinfo does not know it.
    pub osinfo: String,
    pub product_name: String,
    /// The root filesystem as the appliance named it (`/dev/sdb1`, `/dev/rhel/root`).
    pub root_device: String,
    /// What the guest itself is set up for (`uefi` when an EFI system partition is mounted).
    pub guest_firmware: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{0} was not found: install the virt-v2v package (it ships virt-v2v-in-place since 2.0), or set [conversion] program")]
    NotInstalled(String),
    #[error("nothing to convert: the VM has no disks")]
    NoDisks,
    #[error("disk {path}: {why}")]
    BadDisk { path: PathBuf, why: String },
    #[error("cannot prepare {path}: {source}")]
    Prepare { path: PathBuf, source: std::io::Error },
    #[error("cannot start {program}: {source}")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("conversion stopped on request; virt-v2v-in-place was killed (log {log})")]
    Stopped { log: PathBuf },
    #[error("virt-v2v-in-place did not finish within {timeout:?} and was killed; raise [conversion] timeout_minutes if the guest is just slow. Log {log}, last lines:\n{tail}")]
    Timeout {
        timeout: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("virt-v2v-in-place failed ({status}). Log {log}, last lines:\n{tail}")]
    Failed {
        status: ExitStatus,
        log: PathBuf,
        tail: String,
    },
    #[error("the guest is Windows ({product}) and no virtio-win drivers are configured{missing}: install virtio-win and set [conversion] virtio_win to its ISO or folder (default {DEFAULT_VIRTIO_WIN}); stopped before converting. Log {log}")]
    NoVirtioWin {
        product: String,
        missing: String,
        log: PathBuf,
    },
    #[error("virtio-win ({virtio_win}) has no drivers for this Windows ({product}): install a newer virtio-win; the guest was left on emulated devices. Log {log}")]
    VirtioWinTooOld {
        virtio_win: String,
        product: String,
        log: PathBuf,
    },
    #[error("virt-v2v-in-place succeeded but its log {log} has no inspection result (i_root): is it virt-v2v 2.x run with -v?")]
    NoInspection { log: PathBuf },
    #[error("cannot tell which disk holds the root filesystem {device}: {why}")]
    RootNotFound { device: String, why: String },
}

/// XML-escape text or an attribute value. Control characters become U+FFFD: XML 1.0 cannot
/// carry most of them, and a line break in a VM name would reach virt-v2v's log (which
/// echoes the source) as a line of its own.
fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => o.push('\u{FFFD}'),
            c => o.push(c),
        }
    }
    o
}

/// `sda`, `sdb`, … `sdz`, `sdaa`: the target name of disk `i` (and the appliance's name for it).
fn disk_name(i: usize) -> String {
    let mut n = i + 1;
    let mut letters = Vec::new();
    while n > 0 {
        n -= 1;
        letters.push(b'a' + (n % 26) as u8);
        n /= 26;
    }
    letters.reverse();
    format!("sd{}", String::from_utf8(letters).expect("ascii"))
}

/// The libvirt domain XML virt-v2v-in-place reads (`-i libvirtxml`). Pure. Block devices
/// become `<disk type='block'>`, anything else `<disk type='file'>`; all raw.
pub fn domain_xml(spec: &ConvertSpec) -> String {
    let mut x = String::new();
    x.push_str("<domain type='kvm'>\n");
    x.push_str(&format!("  <name>{}</name>\n", xml_escape(&spec.name)));
    x.push_str(&format!("  <memory unit='MiB'>{}</memory>\n", spec.memory_mib));
    x.push_str(&format!("  <vcpu>{}</vcpu>\n", spec.vcpus.max(1)));
    let fw = match spec.firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "efi",
    };
    x.push_str(&format!(
        "  <os firmware='{fw}'>\n    <type arch='x86_64'>hvm</type>\n  </os>\n"
    ));
    x.push_str("  <features>\n    <acpi/>\n    <apic/>\n  </features>\n");
    x.push_str("  <devices>\n");
    for (i, d) in spec.disks.iter().enumerate() {
        let path = xml_escape(&d.to_string_lossy());
        let block = std::fs::metadata(d).is_ok_and(|m| m.file_type().is_block_device());
        let (kind, attr) = if block { ("block", "dev") } else { ("file", "file") };
        x.push_str(&format!(
            "    <disk type='{kind}' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source {attr}='{path}'/>\n      <target dev='{}' bus='scsi'/>\n    </disk>\n",
            disk_name(i)
        ));
    }
    x.push_str("  </devices>\n</domain>\n");
    x
}

/// virt-v2v-in-place's argv after the program name. Pure. `-v` always (its inspection
/// result is how we learn the root disk, see the module doc), `-x` only for `debug`;
/// `--root first` because nobody answers `--root ask` on a service's stdin.
pub fn argv(xml_path: &Path, debug: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["-v"].map(OsString::from).to_vec();
    if debug {
        a.push("-x".into());
    }
    a.extend(["--root", "first", "-i", "libvirtxml"].map(OsString::from));
    a.push(xml_path.as_os_str().to_owned());
    a
}

/// The environment added to the agent's for virt-v2v-in-place. Pure. [`run`] adds
/// `TMPDIR` (its private folder) to it.
pub fn env(spec: &ConvertSpec) -> Vec<(OsString, OsString)> {
    let mut e: Vec<(OsString, OsString)> = vec![
        ("LIBGUESTFS_BACKEND".into(), "direct".into()),
        ("LC_ALL".into(), "C".into()),
    ];
    if spec.force_tcg {
        e.push(("LIBGUESTFS_BACKEND_SETTINGS".into(), "force_tcg".into()));
    }
    if let Some(v) = &spec.virtio_win {
        e.push(("VIRTIO_WIN".into(), v.clone().into()));
    }
    // TMPDIR moves libguestfs' default cache with it: pin the cache so the appliance
    // built by supermin is reused across runs (and large temporary files stay on disk).
    let cache = spec.cache_dir.clone().unwrap_or_else(|| "/var/tmp".into());
    e.push(("LIBGUESTFS_CACHEDIR".into(), cache.into()));
    e
}

/// A 0700 folder removed with everything in it when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir, ConvertError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let base = std::env::temp_dir();
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!(
                "osm-v2v.{}.{}.{nanos:x}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            match DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => return Ok(PrivateDir(p)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(ConvertError::Prepare { path: p, source }),
            }
        }
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the log said so far: step messages go to `progress`, `i_*` lines are kept.
#[derive(Default)]
struct LogReader {
    offset: u64,
    partial: Vec<u8>,
    /// The inspection block counts only after virt-v2v said it is inspecting.
    inspecting: bool,
    inspect: BTreeMap<String, String>,
    no_virtio_drivers: bool,
}

const INSPECT_KEYS: [&str; 7] = [
    "i_root",
    "i_type",
    "i_distro",
    "i_osinfo",
    "i_product_name",
    "i_firmware",
    "i_arch",
];

impl LogReader {
    fn poll(&mut self, log: &Path, progress: &mut dyn FnMut(&str)) {
        let Ok(mut f) = File::open(log) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else { return };
        self.offset += n as u64;
        self.partial.extend_from_slice(&buf);
        while let Some(nl) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            self.line(line.trim_end_matches('\r'), progress);
        }
    }

    fn line(&mut self, line: &str, progress: &mut dyn FnMut(&str)) {
        if let Some(msg) = step_message(line) {
            self.inspecting |= msg.starts_with("Inspecting");
            progress(msg);
            return;
        }
        if !self.inspecting {
            return;
        }
        if line.contains("no virtio drivers available for this version of Windows") {
            self.no_virtio_drivers = true;
        } else if let Some((k, v)) = line.split_once(" = ") {
            // The block's first line may be glued to a fragment of appliance output (see
            // step_message); the lines after it come in the same write.
            let k = match k.find("i_root") {
                Some(at) if k.len() == at + "i_root".len() => "i_root",
                _ => k,
            };
            if INSPECT_KEYS.contains(&k) && !self.inspect.contains_key(k) {
                self.inspect.insert(k.to_string(), v.trim().to_string());
            }
        }
    }

    fn get(&self, k: &str) -> &str {
        self.inspect.get(k).map(String::as_str).unwrap_or("")
    }
}

/// virt-v2v's step lines look like `[  27.5] Inspecting the source` (one decimal; the
/// appliance kernel's `[   27.512345]` lines have six and are not steps). stdout and
/// stderr share the log, and appliance output arrives in chunks that may end mid-line, so
/// a step can be glued to the end of such a fragment: it is looked for anywhere in the line.
fn step_message(line: &str) -> Option<&str> {
    line.match_indices('[').find_map(|(i, _)| {
        let (stamp, msg) = line[i + 1..].split_once("] ")?;
        let (secs, frac) = stamp.trim_start().split_once('.')?;
        let ok = !secs.is_empty()
            && secs.bytes().all(|b| b.is_ascii_digit())
            && frac.len() == 1
            && frac.bytes().all(|b| b.is_ascii_digit());
        (ok && !msg.trim().is_empty()).then(|| msg.trim())
    })
}

/// The disk index of an appliance device (`/dev/sdb1` → 1, `/dev/sdaa` → 26,
/// `btrfsvol:/dev/sdc2/@` → 2); None for LVM, MD and other composite devices.
pub fn disk_index_of(device: &str) -> Option<usize> {
    let dev = device.strip_prefix("btrfsvol:").unwrap_or(device);
    let name = dev.strip_prefix("/dev/")?;
    let name = name.split('/').next()?;
    let rest = ["sd", "vd", "hd", "xvd"].iter().find_map(|p| name.strip_prefix(p))?;
    let letters: &str = &rest[..rest.bytes().take_while(u8::is_ascii_lowercase).count()];
    let tail = &rest[letters.len()..];
    if letters.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = letters.bytes().try_fold(0usize, |acc, b| {
        acc.checked_mul(26)?.checked_add((b - b'a' + 1) as usize)
    })?;
    Some(n - 1)
}

fn guestfish_argv(disks: &[PathBuf], commands: &[&str]) -> Vec<OsString> {
    let mut a: Vec<OsString> = ["--ro", "--format=raw"].map(OsString::from).to_vec();
    for d in disks {
        a.push("-a".into());
        a.push(d.clone().into());
    }
    a.push("--".into());
    a.push("run".into());
    for c in commands {
        a.push(":".into());
        a.extend(c.split(' ').map(OsString::from));
    }
    a
}

/// The disk holding `device` (the root virt-v2v reported). Partitions map by name; LVM
/// logical volumes (`/dev/VG/LV`) and MD arrays need one read-only guestfish session, and
/// the lowest disk holding one of the volume group's PVs (the array's members) wins.
pub fn root_disk(device: &str, spec: &ConvertSpec) -> Result<usize, ConvertError> {
    let not_found = |why: String| ConvertError::RootNotFound {
        device: device.to_string(),
        why,
    };
    let check = |i: usize| {
        if i < spec.disks.len() {
            Ok(i)
        } else {
            Err(not_found(format!("the VM has only {} disks", spec.disks.len())))
        }
    };
    if let Some(i) = disk_index_of(device) {
        return check(i);
    }
    let parts: Vec<&str> = device.trim_start_matches("/dev/").split('/').collect();
    let md = parts.len() == 1 && parts[0].starts_with("md");
    let commands: Vec<String> = match parts.as_slice() {
        [_] if md => vec![format!("md-stat {device}")],
        [vg, _lv] if device.starts_with("/dev/") && *vg != "mapper" => {
            vec!["pvs-full".into(), format!("vgpvuuids {vg}")]
        }
        _ => {
            return Err(not_found(
                "not a partition, an LVM volume (/dev/VG/LV) or an MD array".into(),
            ))
        }
    };
    let guestfish = super::resolve("guestfish").ok_or_else(|| {
        not_found(
            "guestfish is needed for a root on LVM or MD: install libguestfs-tools (Debian) or guestfish (EL)".into(),
        )
    })?;
    let cmds: Vec<&str> = commands.iter().map(String::as_str).collect();
    let mut cmd = Command::new(&guestfish);
    cmd.args(guestfish_argv(&spec.disks, &cmds)).envs(env(spec));
    let out = runner::output(cmd).map_err(|e| not_found(format!("cannot run guestfish: {e}")))?;
    if !out.status.success() {
        return Err(not_found(format!(
            "guestfish failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let members = if md {
        parse_md_members(&text)
    } else {
        parse_vg_pvs(&text)
    };
    let idx = members.iter().filter_map(|m| disk_index_of(m)).min();
    match idx {
        Some(i) => check(i),
        None => Err(not_found(format!("its members {members:?} are not on the VM's disks"))),
    }
}

/// `pvs-full` (blocks of `pv_name: X` / `pv_uuid: U`) followed by `vgpvuuids` (one uuid a
/// line) → the PV devices of that volume group.
fn parse_vg_pvs(text: &str) -> Vec<String> {
    let mut pvs: Vec<(String, String)> = Vec::new();
    let mut vg_uuids = Vec::new();
    let mut name = None;
    for l in text.lines().map(str::trim) {
        if let Some(n) = l.strip_prefix("pv_name: ") {
            name = Some(n.to_string());
        } else if let Some(u) = l.strip_prefix("pv_uuid: ") {
            if let Some(n) = name.take() {
                pvs.push((n, u.to_string()));
            }
        } else {
            // vgpvuuids prints LVM's hyphenated form (C2LDDP-AWpp-…); pvs-full the raw 32.
            let u: String = l.chars().filter(|&c| c != '-').collect();
            if u.len() == 32 && u.bytes().all(|b| b.is_ascii_alphanumeric()) {
                vg_uuids.push(u);
            }
        }
    }
    pvs.into_iter()
        .filter(|(_, u)| vg_uuids.contains(u))
        .map(|(n, _)| n)
        .collect()
}

/// `md-stat` → the array's member devices.
fn parse_md_members(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("mdstat_device: "))
        .map(str::to_string)
        .collect()
}

fn check_disks(disks: &[PathBuf]) -> Result<(), ConvertError> {
    if disks.is_empty() {
        return Err(ConvertError::NoDisks);
    }
    for d in disks {
        let bad = |why: String| ConvertError::BadDisk { path: d.clone(), why };
        let m = std::fs::metadata(d).map_err(|e| bad(e.to_string()))?;
        if !(m.file_type().is_block_device() || m.is_file()) {
            return Err(bad("neither a block device nor a regular file".into()));
        }
        if d.to_str().is_none() {
            return Err(bad("the path is not UTF-8".into()));
        }
    }
    Ok(())
}

/// The last `lines` lines of the log written since `from` (a shared log keeps older runs).
fn log_tail(log: &Path, lines: usize) -> String {
    let t = super::tail(log, 16 * 1024);
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

const POLL: Duration = Duration::from_millis(250);
const GRACE: Duration = Duration::from_secs(5);

/// Convert in place. Blocking (call it from `spawn_blocking`). Writes the XML into a
/// private 0700 folder (also the tool's TMPDIR), appends the tool's output to
/// `spec.log` (0600), hands each step message to `progress`, and kills the whole process
/// group (virt-v2v, nbdkit, qemu) on timeout or as soon as `stop` turns true.
pub fn run(
    program: &Path,
    spec: &ConvertSpec,
    stop: &AtomicBool,
    progress: &mut dyn FnMut(&str),
) -> Result<Conversion, ConvertError> {
    let exe = super::resolve(&program.to_string_lossy())
        .ok_or_else(|| ConvertError::NotInstalled(program.display().to_string()))?;
    check_disks(&spec.disks)?;
    let dir = PrivateDir::new()?;
    let xml_path = dir.0.join("domain.xml");
    let prep = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConvertError::Prepare { path, source }
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&xml_path)
        .and_then(|mut f| f.write_all(domain_xml(spec).as_bytes()))
        .map_err(prep(&xml_path))?;
    if let Some(c) = &spec.cache_dir {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(c)
            .map_err(prep(c))?;
    }
    if let Some(parent) = spec.log.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(prep(parent))?;
    }
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&spec.log)
        .map_err(prep(&spec.log))?;
    let args = argv(&xml_path, spec.debug);
    // A virtio_win that does not exist is as good as none (and would make virt-v2v fail
    // for Linux guests too): leave it out and say so if the guest turns out to be Windows.
    let missing_virtio = spec.virtio_win.as_ref().filter(|p| !p.exists());
    let mut envs: Vec<(OsString, OsString)> = env(spec)
        .into_iter()
        .filter(|(k, _)| !(k == "VIRTIO_WIN" && missing_virtio.is_some()))
        .collect();
    envs.push(("TMPDIR".into(), dir.0.clone().into()));
    let has_virtio = spec.virtio_win.is_some() && missing_virtio.is_none();
    let header = format!(
        "\n=== osm: {} {} ===\n",
        exe.display(),
        args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" ")
    );
    log.write_all(header.as_bytes()).map_err(prep(&spec.log))?;
    let mut reader = LogReader {
        offset: log.metadata().map(|m| m.len()).unwrap_or(0),
        ..Default::default()
    };
    let stderr = log.try_clone().map_err(prep(&spec.log))?;
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .envs(envs)
        .current_dir(&dir.0)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    // The runner's group holds virt-v2v, its nbdkit and (by the environment marker) the
    // qemu appliance libguestfs starts; all are killed together.
    let mut group = runner::spawn(cmd).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => ConvertError::NotInstalled(exe.display().to_string()),
        _ => ConvertError::Spawn {
            program: exe.clone(),
            source,
        },
    })?;
    let start = Instant::now();
    let status = loop {
        let done = group.exited();
        reader.poll(&spec.log, progress);
        if done {
            break group.wait();
        }
        if stop.load(Ordering::SeqCst) {
            let _ = group.stop(GRACE);
            return Err(ConvertError::Stopped { log: spec.log.clone() });
        }
        if reader.get("i_type") == "windows" && !has_virtio {
            let _ = group.stop(GRACE);
            return Err(ConvertError::NoVirtioWin {
                product: reader.get("i_product_name").to_string(),
                missing: missing_virtio
                    .map(|p| format!(" ({} does not exist)", p.display()))
                    .unwrap_or_default(),
                log: spec.log.clone(),
            });
        }
        if start.elapsed() > spec.timeout {
            let _ = group.stop(GRACE);
            return Err(ConvertError::Timeout {
                timeout: spec.timeout,
                log: spec.log.clone(),
                tail: log_tail(&spec.log, 20),
            });
        }
        std::thread::sleep(POLL);
    };
    let status = status.map_err(|source| ConvertError::Spawn {
        program: exe.clone(),
        source,
    })?;
    if !status.success() {
        return Err(ConvertError::Failed {
            status,
            log: spec.log.clone(),
            tail: log_tail(&spec.log, 20),
        });
    }
    if reader.no_virtio_drivers {
        return Err(ConvertError::VirtioWinTooOld {
            virtio_win: spec
                .virtio_win
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            product: reader.get("i_product_name").to_string(),
            log: spec.log.clone(),
        });
    }
    let root_device = reader.get("i_root").to_string();
    if root_device.is_empty() {
        return Err(ConvertError::NoInspection { log: spec.log.clone() });
    }
    let root_disk = root_disk(&root_device, spec)?;
    let lower = |k: &str| reader.get(k).to_ascii_lowercase();
    let guest_firmware = match lower("i_firmware").as_str() {
        f if f.starts_with("uefi") => "uefi",
        _ => "bios",
    };
    Ok(Conversion {
        root_disk,
        firmware: spec.firmware.as_str().to_string(),
        os_type: lower("i_type"),
        os_distro: lower("i_distro"),
        osinfo: reader.get("i_osinfo").to_string(),
        product_name: reader.get("i_product_name").to_string(),
        root_device,
        guest_firmware: guest_firmware.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::os::unix::fs::PermissionsExt;

    fn strs(a: Vec<OsString>) -> Vec<String> {
        a.into_iter().map(|s| s.into_string().unwrap()).collect()
    }

    #[test]
    fn xml_escapes_names_and_paths_and_keeps_unicode() {
        let spec = ConvertSpec {
            name: "web & db <prod> \"new\" 'x' – Zürich 東京\u{1}\ni_root = /dev/sda1".into(),
            disks: vec!["/nonexistent/a&b'.raw".into()],
            ..Default::default()
        };
        let x = domain_xml(&spec);
        assert!(
            x.contains("<name>web &amp; db &lt;prod&gt; &quot;new&quot; &apos;x&apos; – Zürich 東京\u{FFFD}\u{FFFD}i_root = /dev/sda1</name>"),
            "{x}"
        );
        assert!(x.contains("<source file='/nonexistent/a&amp;b&apos;.raw'/>"), "{x}");
        // Every markup character left in the document is ours.
        let inner = x.split("<name>").nth(1).unwrap().split("</name>").next().unwrap();
        assert!(!inner.contains(['<', '>', '"', '\'']));
    }

    #[test]
    fn xml_has_firmware_memory_vcpus_and_disks_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("d0.raw");
        std::fs::write(&f, b"").unwrap();
        let mut spec = ConvertSpec {
            name: "vm".into(),
            memory_mib: 4096,
            vcpus: 2,
            firmware: Firmware::Uefi,
            disks: vec![f.clone(), "/dev/null".into(), "/dev/loop-none".into()],
            ..Default::default()
        };
        let x = domain_xml(&spec);
        assert!(x.contains("<os firmware='efi'>"), "{x}");
        assert!(x.contains("<memory unit='MiB'>4096</memory>"));
        assert!(x.contains("<vcpu>2</vcpu>"));
        let file_disk = format!(
            "<disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source file='{}'/>\n      <target dev='sda' bus='scsi'/>",
            f.display()
        );
        assert!(x.contains(&file_disk), "{x}");
        // /dev/null is a character device: not a block device.
        assert!(x.contains("<source file='/dev/null'/>\n      <target dev='sdb'"));
        assert!(x.contains("<target dev='sdc'"));
        spec.firmware = Firmware::Bios;
        assert!(domain_xml(&spec).contains("<os firmware='bios'>"));
    }

    #[test]
    fn xml_uses_type_block_for_block_devices() {
        let Some(dev) = std::fs::read_dir("/dev")
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
        else {
            return; // no block device visible (unprivileged container)
        };
        let spec = ConvertSpec {
            disks: vec![dev.clone()],
            ..Default::default()
        };
        let x = domain_xml(&spec);
        assert!(
            x.contains(&format!(
                "<disk type='block' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <source dev='{}'/>",
                dev.display()
            )),
            "{x}"
        );
    }

    #[test]
    fn disk_names_and_indexes_round_trip() {
        assert_eq!(disk_name(0), "sda");
        assert_eq!(disk_name(25), "sdz");
        assert_eq!(disk_name(26), "sdaa");
        assert_eq!(disk_name(701), "sdzz");
        assert_eq!(disk_name(702), "sdaaa");
        for i in 0..1000 {
            assert_eq!(disk_index_of(&format!("/dev/{}", disk_name(i))), Some(i));
        }
        assert_eq!(disk_index_of("/dev/sdb1"), Some(1));
        assert_eq!(disk_index_of("/dev/vdc"), Some(2));
        assert_eq!(disk_index_of("btrfsvol:/dev/sdb2/@root"), Some(1));
        assert_eq!(disk_index_of("/dev/rhel/root"), None);
        assert_eq!(disk_index_of("/dev/md127"), None);
        assert_eq!(disk_index_of("/dev/mapper/vg-root"), None);
        assert_eq!(disk_index_of("/dev/sd"), None);
        assert_eq!(disk_index_of("/dev/sdb1x"), None);
    }

    #[test]
    fn argv_is_verbose_and_traces_only_in_debug() {
        assert_eq!(
            strs(argv(Path::new("/tmp/osm-v2v.1/domain.xml"), false)),
            ["-v", "--root", "first", "-i", "libvirtxml", "/tmp/osm-v2v.1/domain.xml"]
        );
        let a = argv(Path::new("/x.xml"), true);
        assert_eq!(a[1], OsStr::new("-x"));
        assert_eq!(a.len(), 7);
    }

    #[test]
    fn env_sets_backend_tcg_virtio_and_cache() {
        let mut spec = ConvertSpec::default();
        let e = |s: &ConvertSpec| -> Vec<(String, String)> {
            env(s)
                .into_iter()
                .map(|(k, v)| (k.into_string().unwrap(), v.into_string().unwrap()))
                .collect()
        };
        let plain = e(&spec);
        assert!(plain.contains(&("LIBGUESTFS_BACKEND".into(), "direct".into())));
        assert!(plain.contains(&("LC_ALL".into(), "C".into())));
        assert!(plain.contains(&("LIBGUESTFS_CACHEDIR".into(), "/var/tmp".into())));
        assert!(!plain
            .iter()
            .any(|(k, _)| k == "LIBGUESTFS_BACKEND_SETTINGS" || k == "VIRTIO_WIN"));
        spec.force_tcg = true;
        spec.virtio_win = Some("/usr/share/virtio-win/virtio-win.iso".into());
        spec.cache_dir = Some("/var/cache/osm".into());
        let all = e(&spec);
        assert!(all.contains(&("LIBGUESTFS_BACKEND_SETTINGS".into(), "force_tcg".into())));
        assert!(all.contains(&("VIRTIO_WIN".into(), "/usr/share/virtio-win/virtio-win.iso".into())));
        assert!(all.contains(&("LIBGUESTFS_CACHEDIR".into(), "/var/cache/osm".into())));
    }

    #[test]
    fn step_lines_are_told_from_kernel_lines() {
        assert_eq!(
            step_message("[  27.5] Inspecting the source"),
            Some("Inspecting the source")
        );
        assert_eq!(step_message("[1234.0] Finishing off"), Some("Finishing off"));
        assert_eq!(step_message("[    5.553477]  sda: sda1"), None);
        assert_eq!(step_message("i_root = /dev/sdb1"), None);
        assert_eq!(step_message("[  27.5] "), None);
        assert_eq!(
            step_message("guestfsd: => mountpoints (0x93) took 0.0[ 416.7] Closing the overlay"),
            Some("Closing the overlay")
        );
        assert_eq!(step_message("\t0 [scsi]virtio-blk slot 1:"), None);
        let mut r = LogReader::default();
        for l in [
            "i_root = /dev/sdz1",
            "[  27.5] Inspecting the source",
            "fs: /dev/sdb2 (vfat) role: otheri_root = /dev/sdb1",
            "i_type = linux",
            "multi_arch = x",
            "i_osinfo = debian12",
        ] {
            r.line(l, &mut |_| {});
        }
        assert_eq!(
            (r.get("i_root"), r.get("i_type"), r.get("i_osinfo")),
            ("/dev/sdb1", "linux", "debian12")
        );
        assert_eq!(r.get("i_arch"), "");
    }

    #[test]
    fn guestfish_output_parsers() {
        // As guestfish 1.48 prints them.
        let pvs = "[0] = {\n  pv_name: /dev/sdc\n  pv_uuid: C2LDDPAWpp0xeHgeendm5XV4dQZ1fSrC\n  pv_fmt: lvm2\n  pv_tags: \n}\n[1] = {\n  pv_name: /dev/sdb\n  pv_uuid: pQ9sAPHJL95M0qmLNQjkBv5V0PcuPgEi\n}\nC2LDDP-AWpp-0xeH-geen-dm5X-V4dQ-Z1fSrC\n";
        assert_eq!(parse_vg_pvs(pvs), ["/dev/sdc"]);
        assert_eq!(parse_vg_pvs(&pvs.replace("C2LDDP-", "XXXXXX-")), Vec::<String>::new());
        let md = "[0] = {\n  mdstat_device: /dev/sdb1\n  mdstat_index: 0\n  mdstat_flags: \n}\n[1] = {\n  mdstat_device: /dev/sdc1\n}\n";
        assert_eq!(parse_md_members(md), ["/dev/sdb1", "/dev/sdc1"]);
        assert_eq!(
            strs(guestfish_argv(&["/a".into(), "/b".into()], &["vgpvuuids vg0"])),
            [
                "--ro",
                "--format=raw",
                "-a",
                "/a",
                "-a",
                "/b",
                "--",
                "run",
                ":",
                "vgpvuuids",
                "vg0"
            ]
        );
    }

    /// A stand-in for virt-v2v-in-place: a shell script (tests only; run() itself never
    /// uses a shell).
    fn fake(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("fake-v2v");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn spec_in(dir: &Path, disks: usize) -> ConvertSpec {
        let disks = (0..disks)
            .map(|i| {
                let p = dir.join(format!("d{i}.raw"));
                std::fs::write(&p, b"").unwrap();
                p
            })
            .collect();
        ConvertSpec {
            name: "vm".into(),
            disks,
            log: dir.join("logs/v2v.log"),
            timeout: Duration::from_secs(60),
            cache_dir: Some(dir.join("cache")),
            ..Default::default()
        }
    }

    #[test]
    fn run_reports_steps_and_the_inspected_root() {
        let dir = tempfile::tempdir().unwrap();
        let prog = fake(
            dir.path(),
            r#"test "$LIBGUESTFS_BACKEND" = direct || exit 3
for xml; do :; done
grep -q "<target dev='sdb'" "$xml" || exit 4
test "$(dirname "$xml")" = "$TMPDIR" && test "$PWD" = "$TMPDIR" || exit 5
echo "[   0.0] Setting up the source: -i libvirtxml $xml"
echo "[    5.553477]  sdb: sdb1 sdb2" >&2
echo "[  27.5] Inspecting the source"
printf 'i_root = /dev/sdb1\ni_type = linux\ni_distro = debian\ni_osinfo = debian12\ni_product_name = 12.15\ni_firmware = BIOS\n' >&2
sleep 0.3
echo "[  56.7] Converting 12.15 to run on KVM"
echo "[ 300.1] Finishing off""#,
        );
        let spec = spec_in(dir.path(), 2);
        let mut steps = Vec::new();
        let c = run(&prog, &spec, &AtomicBool::new(false), &mut |s| {
            steps.push(s.to_string())
        })
        .unwrap();
        assert_eq!(c.root_disk, 1);
        assert_eq!(c.root_device, "/dev/sdb1");
        assert_eq!(
            (c.os_type.as_str(), c.os_distro.as_str(), c.osinfo.as_str()),
            ("linux", "debian", "debian12")
        );
        assert_eq!((c.firmware.as_str(), c.guest_firmware.as_str()), ("bios", "bios"));
        assert_eq!(
            steps[1..],
            [
                "Inspecting the source",
                "Converting 12.15 to run on KVM",
                "Finishing off"
            ]
        );
        assert!(steps[0].starts_with("Setting up the source"));
        let mode = std::fs::metadata(&spec.log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn run_failure_names_status_log_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let prog = fake(
            dir.path(),
            "for i in $(seq 1 40); do echo \"line $i\"; done\necho 'virt-v2v-in-place: error: inspection could not detect the source guest' >&2\nexit 1",
        );
        let spec = spec_in(dir.path(), 1);
        let e = run(&prog, &spec, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConvertError::Failed { .. }), "{msg}");
        assert!(
            msg.contains("exit status: 1") && msg.contains(&spec.log.display().to_string()),
            "{msg}"
        );
        assert!(
            msg.contains("line 40") && msg.contains("could not detect") && !msg.contains("line 20\n"),
            "{msg}"
        );
    }

    #[test]
    fn stop_kills_the_whole_process_group_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild.pid");
        let prog = fake(
            dir.path(),
            &format!("trap '' TERM\nsleep 300 &\necho $! > {}\nwait", pidfile.display()),
        );
        let spec = spec_in(dir.path(), 1);
        let stop = AtomicBool::new(false);
        let t0 = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(500));
                stop.store(true, Ordering::SeqCst);
            });
            let e = run(&prog, &spec, &stop, &mut |_| {}).unwrap_err();
            assert!(matches!(e, ConvertError::Stopped { .. }), "{e}");
        });
        // SIGTERM is ignored by the script: SIGKILL after the grace period.
        assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false);
        assert!(!alive, "grandchild {pid} survived");
    }

    #[test]
    fn timeout_kills_and_windows_without_virtio_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let prog = fake(dir.path(), "echo '[   0.0] Setting up'\nexec sleep 300");
        let mut spec = spec_in(dir.path(), 1);
        spec.timeout = Duration::from_millis(300);
        let e = run(&prog, &spec, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        assert!(
            matches!(e, ConvertError::Timeout { .. }) && e.to_string().contains("Setting up"),
            "{e}"
        );

        let prog = fake(
            dir.path(),
            "echo '[  10.0] Inspecting the source'\nprintf 'i_root = /dev/sda2\\ni_type = windows\\ni_product_name = Windows Server 2019 Standard\\n'\nexec sleep 300",
        );
        spec.timeout = Duration::from_secs(60);
        spec.virtio_win = Some(dir.path().join("no-such-virtio-win.iso"));
        let t0 = Instant::now();
        let e = run(&prog, &spec, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ConvertError::NoVirtioWin { .. }), "{msg}");
        assert!(
            msg.contains("[conversion] virtio_win") && msg.contains("does not exist"),
            "{msg}"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn missing_program_and_bad_disks_say_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_in(dir.path(), 1);
        let e = run(
            Path::new("no-such-virt-v2v-in-place"),
            &spec,
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("install the virt-v2v package"), "{e}");
        let prog = fake(dir.path(), "exit 0");
        let mut bad = spec.clone();
        bad.disks.push(dir.path().join("missing.raw"));
        assert!(matches!(
            run(&prog, &bad, &AtomicBool::new(false), &mut |_| {}),
            Err(ConvertError::BadDisk { .. })
        ));
        bad.disks.clear();
        assert!(matches!(
            run(&prog, &bad, &AtomicBool::new(false), &mut |_| {}),
            Err(ConvertError::NoDisks)
        ));
        // Success without an inspection block is an error, not a guess.
        let e = run(&prog, &spec, &AtomicBool::new(false), &mut |_| {}).unwrap_err();
        assert!(matches!(e, ConvertError::NoInspection { .. }), "{e}");
    }
}
