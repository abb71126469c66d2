//! Which disk the guest boots from: the one holding its boot loader, which need not be
//! the one holding `/` (GRUB in disk 0's MBR with `/boot` there, `/` on disk 1). Read
//! from each attached volume's first sectors, read-only:
//! - BIOS: boot code in the MBR, with GRUB's signature, a GPT BIOS boot partition, or an
//!   active partition (a data disk's MBR has no code, or code and no active partition);
//! - UEFI: an EFI system partition (GPT type or MBR 0xEF) whose FAT holds an `.EFI` file
//!   under `EFI/<dir>/`.
//!
//! When several disks qualify the inspected root disk wins, else the first; when none
//! does the root disk boots (with a warning).
mod fat;
mod partitions;

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};

use crate::exec::virt_v2v::Firmware;
use partitions::Kind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// Index (in disk order) of the boot disk.
    pub disk: usize,
    /// What was found there; None: nothing on any disk, the root disk by default.
    pub loader: Option<String>,
    /// Every disk with a boot loader.
    pub candidates: Vec<usize>,
}

/// The boot disk among `disks` (in the VM's order) for `firmware`; `root_disk` is the
/// disk holding `/` (inspected, or assumed).
pub fn choose(disks: &[PathBuf], firmware: Firmware, root_disk: usize) -> Choice {
    let root_disk = root_disk.min(disks.len().saturating_sub(1));
    let mut found = Vec::new();
    for (i, path) in disks.iter().enumerate() {
        match loader_on(path, firmware) {
            Ok(Some(what)) => found.push((i, what)),
            Ok(None) => {}
            Err(e) => tracing::warn!("disk {i} ({}): cannot read its partition table: {e}", path.display()),
        }
    }
    let candidates = found.iter().map(|(i, _)| *i).collect();
    let pick = found.iter().find(|(i, _)| *i == root_disk).or(found.first()).cloned();
    match pick {
        Some((disk, what)) => Choice {
            disk,
            loader: Some(what),
            candidates,
        },
        None => Choice {
            disk: root_disk,
            loader: None,
            candidates,
        },
    }
}

/// The boot loader on one disk (a device or an image file), described; None: none.
pub fn loader_on(path: &Path, firmware: Firmware) -> io::Result<Option<String>> {
    let mut disk = File::open(path)?;
    loader_in(&mut disk, firmware)
}

fn loader_in(disk: &mut (impl Read + Seek), firmware: Firmware) -> io::Result<Option<String>> {
    let table = match partitions::read(disk) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None), // tiny disk
        t => t?,
    };
    if firmware == Firmware::Uefi {
        for p in table.partitions.iter().filter(|p| p.kind == Kind::Esp) {
            if let Some(file) = fat::efi_loader(disk, p.offset)? {
                return Ok(Some(format!("EFI system partition {} with {file}", p.number)));
            }
        }
        return Ok(None);
    }
    if !table.has_boot_code() {
        return Ok(None);
    }
    let label = if table.gpt { "GPT" } else { "MBR" };
    let grub = table.boot_code.windows(4).any(|w| w == b"GRUB");
    if grub {
        return Ok(Some(format!("GRUB in the MBR ({label})")));
    }
    if let Some(p) = table.partitions.iter().find(|p| p.kind == Kind::BiosBoot) {
        return Ok(Some(format!(
            "boot code in the MBR and BIOS boot partition {}",
            p.number
        )));
    }
    if let Some(p) = table.partitions.iter().find(|p| p.active) {
        return Ok(Some(format!(
            "boot code in the MBR and active partition {} ({label})",
            p.number
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
