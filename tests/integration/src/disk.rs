//! Disk images with known content, loop devices, hashes, nbdkit servers.
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};

/// Deterministic non-zero pseudo-random bytes (xorshift), fast enough for GiBs.
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x | 0x0101_0101_0101_0101).to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A sparse file of `size` with pseudo-random data written at each (offset, len).
pub fn image(path: &Path, size: u64, data: &[(u64, u64)], seed: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    let mut buf = vec![0u8; 4 << 20];
    for (i, &(off, len)) in data.iter().enumerate() {
        let mut pos = off;
        while pos < off + len {
            let n = ((off + len - pos) as usize).min(buf.len());
            fill(&mut buf[..n], seed ^ (i as u64 * 7919 + pos));
            f.write_all_at(&buf[..n], pos).unwrap();
            pos += n as u64;
        }
    }
    f.sync_all().unwrap();
}

/// SHA-256 of the first `len` bytes of a file or device.
pub fn sha256(path: &Path, len: u64) -> String {
    sha256_range(path, 0, len)
}

pub fn sha256_range(path: &Path, offset: u64, len: u64) -> String {
    let mut f = File::open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut left = len;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.read_exact(&mut buf[..n]).unwrap();
        h.update(&buf[..n]);
        left -= n as u64;
    }
    format!("{:x}", h.finalize())
}

/// A loop device over a backing file; detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    pub fn new(backing: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop {
            dev: PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Fill a file (or device) with one byte value, densely.
pub fn paint(path: &Path, size: u64, byte: u8) {
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let buf = vec![byte; 4 << 20];
    let mut left = size;
    while left > 0 {
        let n = (left as usize).min(buf.len());
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.sync_all().unwrap();
}

/// An nbdkit the test runs itself (file plugin, optional stats filter), killed on drop.
pub struct Nbdkit {
    child: Child,
    pub socket: PathBuf,
}

impl Nbdkit {
    pub fn file(socket: &Path, file: &Path, statsfile: Option<&Path>) -> Nbdkit {
        let _ = std::fs::remove_file(socket);
        let mut c = Command::new("nbdkit");
        c.args(["--foreground", "--readonly", "--unix"]).arg(socket);
        if statsfile.is_some() {
            c.arg("--filter=stats");
        }
        c.arg("file").arg(format!("file={}", file.display()));
        if let Some(s) = statsfile {
            c.arg(format!("statsfile={}", s.display()));
        }
        let child = c.stdin(Stdio::null()).spawn().unwrap();
        crate::wait_for(20, "nbdkit socket", || socket.exists().then_some(()));
        Nbdkit {
            child,
            socket: socket.to_path_buf(),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }

    /// SIGTERM and wait, so the stats filter writes its file.
    pub fn stop(mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes read according to nbdkit's stats filter file
/// ("read: 40 ops, 0.003964 s, 10.00 MiB, …"); 0 when nothing was read.
pub fn stats_bytes_read(statsfile: &Path) -> u64 {
    let text = std::fs::read_to_string(statsfile).unwrap();
    let Some(line) = text.lines().map(str::trim).find(|l| l.starts_with("read:")) else {
        return 0;
    };
    let field = line.split(',').nth(2).expect("size field").trim();
    let (num, unit) = field.split_once(' ').expect("value and unit");
    let mult: u64 = match unit {
        "bytes" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => panic!("unknown unit {other} in {line}"),
    };
    (num.parse::<f64>().unwrap() * mult as f64) as u64
}
