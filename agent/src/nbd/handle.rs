//! A safe, blocking wrapper over one libnbd handle (one NBD connection).
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;

use super::ffi;

/// An error reported by libnbd, with its message and errno.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct NbdError {
    pub message: String,
    pub errno: i32,
}

impl NbdError {
    fn last(what: &str) -> Self {
        // SAFETY: libnbd keeps the last error per thread; the pointer is valid until the
        // next libnbd call on this thread, and we copy it out at once.
        let (msg, errno) = unsafe {
            let p = ffi::nbd_get_error();
            let m = if p.is_null() {
                "unknown libnbd error".into()
            } else {
                CStr::from_ptr(p).to_string_lossy().into_owned()
            };
            (m, ffi::nbd_get_errno())
        };
        NbdError {
            message: format!("{what}: {msg}"),
            errno,
        }
    }
}

/// Where to connect: an NBD URI or a Unix socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Uri(String),
    Unix(std::path::PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Uri(u) => f.write_str(u),
            Endpoint::Unix(p) => write!(f, "nbd+unix:///?socket={}", p.display()),
        }
    }
}

/// One connected NBD client. Not shared between threads; open one per worker.
pub struct Nbd {
    h: *mut ffi::NbdHandle,
    has_allocation: bool,
}

// SAFETY: a libnbd handle may be used from any thread as long as calls are not
// concurrent; `Nbd` methods take `&mut self`, so one thread at a time uses it.
unsafe impl Send for Nbd {}

/// One run from block status: `len` bytes at `offset`, and whether they read as zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub offset: u64,
    pub len: u64,
    pub zero: bool,
}

impl Nbd {
    /// Connect (handshake included) and ask for base:allocation.
    pub fn connect(ep: &Endpoint) -> Result<Self, NbdError> {
        // SAFETY: nbd_create has no preconditions; a null return is handled.
        let h = unsafe { ffi::nbd_create() };
        if h.is_null() {
            return Err(NbdError::last("nbd_create"));
        }
        let mut nbd = Nbd {
            h,
            has_allocation: false,
        };
        let ctx = ffi::CONTEXT_BASE_ALLOCATION.as_ptr() as *const c_char;
        // SAFETY: h is valid; ctx is a NUL-terminated static string.
        unsafe {
            ffi::nbd_set_pread_initialize(h, false);
            if ffi::nbd_add_meta_context(h, ctx) == -1 {
                return Err(NbdError::last("nbd_add_meta_context"));
            }
        }
        let rc = match ep {
            Endpoint::Uri(u) => {
                let c = cstring(u)?;
                // SAFETY: h valid, c NUL-terminated and outlives the call.
                unsafe { ffi::nbd_connect_uri(h, c.as_ptr()) }
            }
            Endpoint::Unix(p) => {
                let c = cstring(&p.to_string_lossy())?;
                // SAFETY: as above.
                unsafe { ffi::nbd_connect_unix(h, c.as_ptr()) }
            }
        };
        if rc == -1 {
            return Err(NbdError::last(&format!("connecting to {ep}")));
        }
        // SAFETY: h is connected.
        nbd.has_allocation = unsafe { ffi::nbd_can_meta_context(h, ctx) } == 1;
        Ok(nbd)
    }

    pub fn size(&mut self) -> Result<u64, NbdError> {
        // SAFETY: h valid and connected.
        let s = unsafe { ffi::nbd_get_size(self.h) };
        if s < 0 {
            return Err(NbdError::last("nbd_get_size"));
        }
        Ok(s as u64)
    }

    pub fn can_multi_conn(&mut self) -> bool {
        // SAFETY: h valid and connected.
        unsafe { ffi::nbd_can_multi_conn(self.h) == 1 }
    }

    /// Read exactly `buf.len()` bytes at `offset`.
    pub fn pread(&mut self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        // SAFETY: buf is valid for writes of buf.len() bytes for the call's duration.
        let rc = unsafe { ffi::nbd_pread(self.h, buf.as_mut_ptr() as *mut c_void, buf.len(), offset, 0) };
        if rc == -1 {
            return Err(NbdError::last(&format!("reading {} bytes at {offset}", buf.len())));
        }
        Ok(())
    }

    /// Allocation map of `[offset, offset+len)`: contiguous runs covering the range.
    /// Without base:allocation the whole range is one data run.
    pub fn block_status(&mut self, offset: u64, len: u64) -> Result<Vec<Run>, NbdError> {
        if !self.has_allocation {
            return Ok(vec![Run {
                offset,
                len,
                zero: false,
            }]);
        }
        let end = offset + len;
        let mut runs: Vec<Run> = Vec::new();
        let mut pos = offset;
        while pos < end {
            let mut got: Vec<(u64, u32)> = Vec::new();
            let cb = ffi::ExtentCallback {
                callback: Some(extent_cb),
                user_data: &mut got as *mut Vec<(u64, u32)> as *mut c_void,
                free: None,
            };
            // SAFETY: `got` outlives the synchronous call; the callback only pushes into it.
            let rc = unsafe { ffi::nbd_block_status(self.h, end - pos, pos, cb, 0) };
            if rc == -1 {
                return Err(NbdError::last(&format!("block status at {pos}")));
            }
            if got.is_empty() {
                // A server that answers nothing: treat the rest as data.
                push_run(
                    &mut runs,
                    Run {
                        offset: pos,
                        len: end - pos,
                        zero: false,
                    },
                );
                break;
            }
            for (l, flags) in got {
                if pos >= end {
                    break;
                }
                let l = l.min(end - pos);
                push_run(
                    &mut runs,
                    Run {
                        offset: pos,
                        len: l,
                        zero: flags & ffi::STATE_ZERO != 0,
                    },
                );
                pos += l;
            }
        }
        Ok(runs)
    }
}

fn push_run(runs: &mut Vec<Run>, r: Run) {
    if r.len == 0 {
        return;
    }
    if let Some(last) = runs.last_mut() {
        if last.zero == r.zero && last.offset + last.len == r.offset {
            last.len += r.len;
            return;
        }
    }
    runs.push(r);
}

unsafe extern "C" fn extent_cb(
    user_data: *mut c_void,
    metacontext: *const c_char,
    _offset: u64,
    entries: *mut u32,
    nr_entries: usize,
    _error: *mut c_int,
) -> c_int {
    // SAFETY: libnbd passes a valid NUL-terminated context name and `nr_entries` u32s
    // (pairs of length, flags); user_data is the &mut Vec we passed in `block_status`.
    unsafe {
        if CStr::from_ptr(metacontext).to_bytes() != &ffi::CONTEXT_BASE_ALLOCATION[..15] {
            return 0;
        }
        let got = &mut *(user_data as *mut Vec<(u64, u32)>);
        let e = std::slice::from_raw_parts(entries, nr_entries);
        for pair in e.chunks_exact(2) {
            got.push((pair[0] as u64, pair[1]));
        }
    }
    0
}

impl Drop for Nbd {
    fn drop(&mut self) {
        // SAFETY: h is valid and dropped once; shutdown errors are irrelevant here.
        unsafe {
            ffi::nbd_shutdown(self.h, 0);
            ffi::nbd_close(self.h);
        }
    }
}

fn cstring(s: &str) -> Result<CString, NbdError> {
    CString::new(s).map_err(|_| NbdError {
        message: format!("{s:?} contains a NUL byte"),
        errno: libc::EINVAL,
    })
}

/// True when `path` is a Unix socket that completes an NBD handshake now.
pub fn handshake_ok(path: &Path) -> bool {
    Nbd::connect(&Endpoint::Unix(path.to_path_buf())).is_ok()
}
