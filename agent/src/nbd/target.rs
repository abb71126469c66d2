//! The copy target: a block device or regular file written with aligned O_DIRECT
//! buffers where offsets allow, through the page cache elsewhere, synced on demand.
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const ALIGN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot open target {path}: {source}; check that it exists (or its folder does) and that osm-agent may write it")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("target {path} is not a block device (it is missing or another kind of file); a migration writes only to its volume's device: is the volume still attached to this host?")]
    NotADevice { path: PathBuf },
    #[error("target {path} is {have} bytes but the source is {need} bytes; use a target at least as large")]
    TooSmall { path: PathBuf, have: u64, need: u64 },
    #[error("writing {len} bytes at offset {offset} of {path}: {source}")]
    Write {
        path: PathBuf,
        offset: u64,
        len: usize,
        source: std::io::Error,
    },
    #[error("flushing {path}: {source}")]
    Sync { path: PathBuf, source: std::io::Error },
}

pub struct Target {
    path: PathBuf,
    direct: Option<File>,
    buffered: File,
    is_block: bool,
    size: u64,
    /// True when this open created the file: it reads as zeroes.
    pub created: bool,
}

impl Target {
    /// Open (or create, as a sparse file of `need` bytes) the target and check its size.
    /// With `device_only`, the target must be an existing block device: nothing is
    /// created in place of a device that vanished.
    pub fn open(path: &Path, need: u64, device_only: bool) -> Result<Target, TargetError> {
        let open_err = |source| TargetError::Open {
            path: path.to_path_buf(),
            source,
        };
        if device_only && !std::fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device()) {
            return Err(TargetError::NotADevice {
                path: path.to_path_buf(),
            });
        }
        let created = !path.exists();
        let buffered = OpenOptions::new()
            .read(true)
            .write(true)
            .create(created)
            .mode(0o600)
            .open(path)
            .map_err(open_err)?;
        let meta = buffered.metadata().map_err(open_err)?;
        let is_block = meta.file_type().is_block_device();
        if created {
            buffered.set_len(need).map_err(open_err)?;
        }
        let size = if is_block {
            (&buffered).seek(SeekFrom::End(0)).map_err(open_err)?
        } else {
            buffered.metadata().map_err(open_err)?.len()
        };
        if size < need {
            return Err(TargetError::TooSmall {
                path: path.to_path_buf(),
                have: size,
                need,
            });
        }
        // O_DIRECT is refused by some file systems (tmpfs): then the page cache it is.
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Target {
            path: path.to_path_buf(),
            direct,
            buffered,
            is_block,
            size,
            created,
        })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write `buf` at `offset`; O_DIRECT when the buffer, length and offset are aligned.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<(), TargetError> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(ALIGN)
            && buf.len().is_multiple_of(ALIGN)
            && offset.is_multiple_of(ALIGN as u64);
        let f = match (&self.direct, aligned) {
            (Some(d), true) => d,
            _ => &self.buffered,
        };
        f.write_all_at(buf, offset)
            .map_err(|source| self.write_err(offset, buf.len(), source))
    }

    /// Make `[offset, offset+len)` read as zeroes without sending zero bytes where the
    /// kernel can: first punch a hole (files: a hole; block devices: zeroing that may
    /// unmap, so thin volumes stay thin), then BLKZEROOUT on block devices, then writes.
    pub fn zero(&self, offset: u64, len: u64) -> Result<(), TargetError> {
        let fd = self.buffered.as_raw_fd();
        let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: plain fallocate on an fd we own.
        let ok = unsafe { libc::fallocate(fd, punch, offset as i64, len as i64) == 0 }
            || (self.is_block && offset.is_multiple_of(512) && len.is_multiple_of(512) && {
                let range = [offset, len];
                // SAFETY: BLKZEROOUT reads a [u64; 2] (start, length) from the pointer.
                unsafe { libc::ioctl(fd, BLKZEROOUT, range.as_ptr()) == 0 }
            });
        if ok {
            return Ok(());
        }
        let zeroes = vec![0u8; (len.min(1 << 20)) as usize];
        let mut pos = offset;
        while pos < offset + len {
            let n = ((offset + len - pos) as usize).min(zeroes.len());
            self.buffered
                .write_all_at(&zeroes[..n], pos)
                .map_err(|source| self.write_err(pos, n, source))?;
            pos += n as u64;
        }
        Ok(())
    }

    /// fdatasync: everything written so far is durable when this returns.
    pub fn sync(&self) -> Result<(), TargetError> {
        self.buffered.sync_data().map_err(|source| TargetError::Sync {
            path: self.path.clone(),
            source,
        })
    }

    fn write_err(&self, offset: u64, len: usize, source: std::io::Error) -> TargetError {
        TargetError::Write {
            path: self.path.clone(),
            offset,
            len,
            source,
        }
    }
}

/// _IO(0x12, 127)
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(len.max(ALIGN), ALIGN).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf {
            ptr,
            len: len.max(ALIGN),
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, ALIGN).expect("valid layout");
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}

/// True when every byte is zero.
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u8 -> u128 reinterpretation of the aligned middle is sound for any bytes.
    let (head, mid, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}
