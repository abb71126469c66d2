//! Jobs: the engine that owns all state, the persistent store, and the job bodies.
pub mod caller;
pub(crate) mod copy_job;
pub mod engine;
pub mod migrate;
pub mod store;

pub use caller::Caller;
pub use engine::{Engine, Event};
