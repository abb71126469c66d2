//! Jobs: the engine that owns all state, the persistent store, and the job bodies.
pub mod caller;
mod copy_job;
pub mod engine;
pub mod store;

pub use caller::Caller;
pub use engine::{Engine, Event};
