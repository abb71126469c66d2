//! Just enough FAT (12, 16, 32) to tell an EFI system partition that holds a boot loader:
//! an `.EFI` file under `EFI/<dir>/` or `EFI/<dir>/<dir>/` (`EFI/BOOT/BOOTX64.EFI`,
//! `EFI/debian/grubx64.efi`, `EFI/Microsoft/Boot/bootmgfw.efi`). Short (8.3) names only,
//! read-only, bounded reads (a corrupt FAT cannot loop).
use std::io::{self, Read, Seek};

use super::partitions::read_at;

/// No directory this small check reads is larger.
const MAX_DIR_BYTES: usize = 1 << 20;
const ATTR_DIR: u8 = 0x10;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LONG_NAME: u8 = 0x0F;

struct Fat {
    cluster_bytes: u64,
    fat_offset: u64,
    data_offset: u64,
    clusters: u32,
    bits: u8,
    /// FAT12/16: the fixed root directory (offset, bytes); FAT32: None.
    fixed_root: Option<(u64, usize)>,
    root_cluster: u32,
}

struct Entry {
    name: String,
    dir: bool,
    cluster: u32,
}

/// The path of a boot loader in the FAT filesystem at `offset`; None when it is not FAT
/// or holds none.
pub fn efi_loader(disk: &mut (impl Read + Seek), offset: u64) -> io::Result<Option<String>> {
    let Some(fat) = Fat::open(disk, offset)? else {
        return Ok(None);
    };
    let root = fat.root(disk)?;
    let Some(efi) = root.iter().find(|e| e.dir && e.name == "EFI") else {
        return Ok(None);
    };
    for vendor in fat.subdirs(disk, efi.cluster)? {
        let inside = fat.list(disk, vendor.cluster)?;
        if let Some(f) = inside.iter().find(|e| is_efi_file(e)) {
            return Ok(Some(format!("EFI/{}/{}", vendor.name, f.name)));
        }
        for sub in inside.iter().filter(|e| is_subdir(e)) {
            if let Some(f) = fat.list(disk, sub.cluster)?.iter().find(|e| is_efi_file(e)) {
                return Ok(Some(format!("EFI/{}/{}/{}", vendor.name, sub.name, f.name)));
            }
        }
    }
    Ok(None)
}

fn is_efi_file(e: &Entry) -> bool {
    !e.dir && e.name.ends_with(".EFI")
}

fn is_subdir(e: &Entry) -> bool {
    e.dir && e.name != "." && e.name != ".."
}

fn u16_at(b: &[u8], i: usize) -> u64 {
    u16::from_le_bytes([b[i], b[i + 1]]) as u64
}

fn u32_at(b: &[u8], i: usize) -> u64 {
    u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64
}

impl Fat {
    /// The BIOS parameter block at `base`, when it is a plausible FAT one.
    fn open(disk: &mut (impl Read + Seek), base: u64) -> io::Result<Option<Fat>> {
        let b = read_at(disk, base, 512)?;
        let (bps, spc) = (u16_at(&b, 11), b[13] as u64);
        let (reserved, fats, root_entries) = (u16_at(&b, 14), b[16] as u64, u16_at(&b, 17));
        let total = match u16_at(&b, 19) {
            0 => u32_at(&b, 32),
            n => n,
        };
        let fat_sectors = match u16_at(&b, 22) {
            0 => u32_at(&b, 36),
            n => n,
        };
        let plausible = b[510..512] == [0x55, 0xAA]
            && matches!(bps, 512 | 1024 | 2048 | 4096)
            && spc.is_power_of_two()
            && reserved > 0
            && (1..=4).contains(&fats)
            && fat_sectors > 0;
        if !plausible {
            return Ok(None);
        }
        let root_sectors = (root_entries * 32).div_ceil(bps);
        let first_data = reserved + fats * fat_sectors + root_sectors;
        let Some(data_sectors) = total.checked_sub(first_data) else {
            return Ok(None);
        };
        let clusters = (data_sectors / spc) as u32;
        let bits = match clusters {
            0..4085 => 12,
            4085..65525 => 16,
            _ => 32,
        };
        let fixed_root = (bits != 32).then(|| {
            (
                base + (reserved + fats * fat_sectors) * bps,
                (root_sectors * bps) as usize,
            )
        });
        Ok(Some(Fat {
            cluster_bytes: spc * bps,
            fat_offset: base + reserved * bps,
            data_offset: base + first_data * bps,
            clusters,
            bits,
            fixed_root,
            root_cluster: u32_at(&b, 44) as u32,
        }))
    }

    fn root(&self, disk: &mut (impl Read + Seek)) -> io::Result<Vec<Entry>> {
        match self.fixed_root {
            Some((at, len)) => Ok(entries(&read_at(disk, at, len.min(MAX_DIR_BYTES))?)),
            None => self.list(disk, self.root_cluster),
        }
    }

    fn subdirs(&self, disk: &mut (impl Read + Seek), cluster: u32) -> io::Result<Vec<Entry>> {
        Ok(self.list(disk, cluster)?.into_iter().filter(is_subdir).collect())
    }

    /// The directory whose chain starts at `cluster`.
    fn list(&self, disk: &mut (impl Read + Seek), cluster: u32) -> io::Result<Vec<Entry>> {
        let mut raw = Vec::new();
        let mut c = if self.bits == 32 { cluster } else { cluster & 0xFFFF };
        while self.valid(c) && raw.len() < MAX_DIR_BYTES {
            let at = self.data_offset + (c as u64 - 2) * self.cluster_bytes;
            raw.extend(read_at(disk, at, self.cluster_bytes as usize)?);
            c = self.next(disk, c)?;
        }
        Ok(entries(&raw))
    }

    fn valid(&self, c: u32) -> bool {
        (2..self.clusters.saturating_add(2)).contains(&c)
    }

    /// The cluster after `c` in its chain (an end mark is not a valid cluster).
    fn next(&self, disk: &mut (impl Read + Seek), c: u32) -> io::Result<u32> {
        let c64 = c as u64;
        Ok(match self.bits {
            12 => {
                let v = u16_at(&read_at(disk, self.fat_offset + c64 + c64 / 2, 2)?, 0) as u32;
                if c % 2 == 1 {
                    v >> 4
                } else {
                    v & 0xFFF
                }
            }
            16 => u16_at(&read_at(disk, self.fat_offset + 2 * c64, 2)?, 0) as u32,
            _ => u32_at(&read_at(disk, self.fat_offset + 4 * c64, 4)?, 0) as u32 & 0x0FFF_FFFF,
        })
    }
}

/// The live short-name entries of a directory's bytes, names upper-case `NAME.EXT`.
fn entries(raw: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    for e in raw.chunks_exact(32) {
        match e[0] {
            0x00 => break,
            0xE5 => continue,
            _ => {}
        }
        let attr = e[11];
        if attr & ATTR_LONG_NAME == ATTR_LONG_NAME || attr & ATTR_VOLUME != 0 {
            continue;
        }
        let mut base = e[..8].to_vec();
        if base[0] == 0x05 {
            base[0] = 0xE5;
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).trim_end().to_ascii_uppercase();
        let (base, ext) = (text(&base), text(&e[8..11]));
        out.push(Entry {
            name: if ext.is_empty() { base } else { format!("{base}.{ext}") },
            dir: attr & ATTR_DIR != 0,
            cluster: ((u16_at(e, 20) << 16) | u16_at(e, 26)) as u32,
        });
    }
    out
}
