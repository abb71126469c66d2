//! The few libnbd (C) entry points osm uses, declared by hand from <libnbd.h> (1.14+).
//! Everything unsafe about libnbd stays in this file and `handle.rs`.
use std::os::raw::{c_char, c_int, c_void};

#[repr(C)]
pub struct NbdHandle {
    _private: [u8; 0],
}

pub type ExtentFn = unsafe extern "C" fn(
    user_data: *mut c_void,
    metacontext: *const c_char,
    offset: u64,
    entries: *mut u32,
    nr_entries: usize,
    error: *mut c_int,
) -> c_int;

#[repr(C)]
pub struct ExtentCallback {
    pub callback: Option<ExtentFn>,
    pub user_data: *mut c_void,
    pub free: Option<unsafe extern "C" fn(*mut c_void)>,
}

pub const CONTEXT_BASE_ALLOCATION: &[u8] = b"base:allocation\0";
pub const STATE_ZERO: u32 = 2;

#[link(name = "nbd")]
extern "C" {
    pub fn nbd_create() -> *mut NbdHandle;
    pub fn nbd_close(h: *mut NbdHandle);
    pub fn nbd_get_error() -> *const c_char;
    pub fn nbd_get_errno() -> c_int;
    pub fn nbd_set_pread_initialize(h: *mut NbdHandle, request: bool) -> c_int;
    pub fn nbd_add_meta_context(h: *mut NbdHandle, name: *const c_char) -> c_int;
    pub fn nbd_connect_uri(h: *mut NbdHandle, uri: *const c_char) -> c_int;
    pub fn nbd_connect_unix(h: *mut NbdHandle, path: *const c_char) -> c_int;
    pub fn nbd_get_size(h: *mut NbdHandle) -> i64;
    pub fn nbd_can_meta_context(h: *mut NbdHandle, name: *const c_char) -> c_int;
    pub fn nbd_can_multi_conn(h: *mut NbdHandle) -> c_int;
    pub fn nbd_pread(h: *mut NbdHandle, buf: *mut c_void, count: usize, offset: u64, flags: u32) -> c_int;
    pub fn nbd_block_status(h: *mut NbdHandle, count: u64, offset: u64, callback: ExtentCallback, flags: u32) -> c_int;
    pub fn nbd_shutdown(h: *mut NbdHandle, flags: u32) -> c_int;
}
