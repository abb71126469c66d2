//! Where a disk's bytes are read from: VDDK, HTTPS /folder, or a local datastore mount.
