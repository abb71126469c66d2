//! osm-agent: the conversion-host daemon. See docs/ and ../shared/design/ARCHITECTURE.md.
pub mod api;
pub mod blockdev;
pub mod bootdisk;
pub mod cloud;
pub mod config;
pub mod daemon;
pub mod error;
pub mod exec;
pub mod jobs;
pub mod nbd;
pub mod plan;
pub mod unattended;

pub use daemon::run;
