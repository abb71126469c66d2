//! Thin adapters: decode a request, call the engine, encode the reply. No logic here.
pub mod dbus;
pub mod socket;
pub mod vsphere;
