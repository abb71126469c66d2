//! A disk's partition table from its first sectors: the MBR (boot code, active flags,
//! types) and the GPT (header at LBA 1, for 512- and 4096-byte sectors). Read-only; the
//! GPT's CRCs are not checked (a wrong answer only moves the boot index).
use std::io::{self, Read, Seek, SeekFrom};

/// The EFI system partition: C12A7328-F81F-11D2-BA4B-00A0C93EC93B.
const GPT_ESP: [u8; 16] = guid(
    0xC12A7328,
    0xF81F,
    0x11D2,
    [0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9, 0x3B],
);
/// GRUB's BIOS boot partition: 21686148-6449-6E6F-744E-656564454649.
const GPT_BIOS_BOOT: [u8; 16] = guid(
    0x21686148,
    0x6449,
    0x6E6F,
    [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
);
const MBR_ESP: u8 = 0xEF;
const MBR_PROTECTIVE: u8 = 0xEE;
/// GPT attribute bit 2: legacy BIOS bootable (the GPT's "active" flag).
const GPT_LEGACY_BOOTABLE: u64 = 1 << 2;
const MAX_GPT_ENTRIES: u32 = 1024;

/// A GUID as GPT stores it (the first three fields little-endian).
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7],
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Esp,
    BiosBoot,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based, as the table numbers it.
    pub number: usize,
    pub kind: Kind,
    /// MBR status 0x80, or GPT's legacy BIOS bootable attribute.
    pub active: bool,
    pub offset: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The first 440 bytes of sector 0 (where BIOS boot code lives).
    pub boot_code: Vec<u8>,
    /// Sector 0 ends with 55 AA.
    pub mbr_signature: bool,
    pub gpt: bool,
    pub partitions: Vec<Partition>,
}

impl Table {
    pub fn has_boot_code(&self) -> bool {
        self.mbr_signature && self.boot_code.iter().any(|b| *b != 0)
    }
}

/// The partition table at the start of `disk`. A disk without one (blank, a bare
/// filesystem) is a table with no partitions.
pub fn read(disk: &mut (impl Read + Seek)) -> io::Result<Table> {
    let mbr = read_at(disk, 0, 512)?;
    let mbr_signature = mbr[510..512] == [0x55, 0xAA];
    let mut table = Table {
        boot_code: mbr[..440].to_vec(),
        mbr_signature,
        gpt: false,
        partitions: Vec::new(),
    };
    if !mbr_signature {
        return Ok(table);
    }
    let mbr_parts = mbr_partitions(&mbr);
    if mbr_parts.iter().any(|(kind, _)| *kind == MBR_PROTECTIVE) {
        for sector in [512u64, 4096] {
            if let Some(parts) = gpt_partitions(disk, sector)? {
                table.gpt = true;
                table.partitions = parts;
                return Ok(table);
            }
        }
    }
    table.partitions = mbr_parts.into_iter().map(|(_, p)| p).collect();
    Ok(table)
}

/// The four primary entries (extended partitions are not followed: a boot loader's
/// flag and the ESP are on primaries).
fn mbr_partitions(mbr: &[u8]) -> Vec<(u8, Partition)> {
    (0..4)
        .filter_map(|i| {
            let e = &mbr[446 + 16 * i..462 + 16 * i];
            let kind = e[4];
            let start = u32::from_le_bytes(e[8..12].try_into().unwrap()) as u64;
            let sectors = u32::from_le_bytes(e[12..16].try_into().unwrap()) as u64;
            (kind != 0 && sectors != 0).then(|| {
                let p = Partition {
                    number: i + 1,
                    kind: if kind == MBR_ESP { Kind::Esp } else { Kind::Other },
                    active: e[0] & 0x80 != 0,
                    offset: start * 512,
                    size: sectors * 512,
                };
                (kind, p)
            })
        })
        .collect()
}

/// The GPT's partitions when its header is at LBA 1 for this sector size.
fn gpt_partitions(disk: &mut (impl Read + Seek), sector: u64) -> io::Result<Option<Vec<Partition>>> {
    let h = match read_at(disk, sector, 92) {
        Ok(h) => h,
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if &h[..8] != b"EFI PART" {
        return Ok(None);
    }
    let entries_lba = u64::from_le_bytes(h[72..80].try_into().unwrap());
    let count = u32::from_le_bytes(h[80..84].try_into().unwrap()).min(MAX_GPT_ENTRIES) as usize;
    let size = u32::from_le_bytes(h[84..88].try_into().unwrap()) as usize;
    if !(128..=4096).contains(&size) || entries_lba == 0 {
        return Ok(None);
    }
    let Some(at) = entries_lba.checked_mul(sector) else {
        return Ok(None);
    };
    let raw = read_at(disk, at, count * size)?;
    let parts = raw
        .chunks_exact(size)
        .enumerate()
        .filter(|(_, e)| e[..16].iter().any(|b| *b != 0))
        .map(|(i, e)| {
            let first = u64::from_le_bytes(e[32..40].try_into().unwrap());
            let last = u64::from_le_bytes(e[40..48].try_into().unwrap());
            let attrs = u64::from_le_bytes(e[48..56].try_into().unwrap());
            let kind = match &e[..16] {
                t if t == GPT_ESP => Kind::Esp,
                t if t == GPT_BIOS_BOOT => Kind::BiosBoot,
                _ => Kind::Other,
            };
            Partition {
                number: i + 1,
                kind,
                active: attrs & GPT_LEGACY_BOOTABLE != 0,
                offset: first.saturating_mul(sector),
                size: last.saturating_sub(first).saturating_add(1).saturating_mul(sector),
            }
        })
        .collect();
    Ok(Some(parts))
}

pub(super) fn read_at(disk: &mut (impl Read + Seek), offset: u64, len: usize) -> io::Result<Vec<u8>> {
    disk.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0; len];
    disk.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stored_mixed_endian() {
        assert_eq!(&GPT_BIOS_BOOT, b"Hah!IdontNeedEFI");
        assert_eq!(GPT_ESP[..4], [0x28, 0x73, 0x2A, 0xC1]);
    }

    #[test]
    fn a_blank_disk_has_no_table() {
        let t = read(&mut io::Cursor::new(vec![0u8; 4096])).unwrap();
        assert!(!t.mbr_signature && !t.has_boot_code() && t.partitions.is_empty());
    }
}
