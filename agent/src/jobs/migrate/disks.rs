//! Disks: volumes per disk, attach, copy rounds.
