//! NBD: a thin safe binding of libnbd and the copy engine built on it.
pub mod copy;
mod ffi;
pub mod handle;
pub mod target;

pub use handle::{Endpoint, Nbd, NbdError};
