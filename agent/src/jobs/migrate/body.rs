//! The journey of one VM.
use crate::jobs::copy_job::JobError;
use crate::jobs::engine::Engine;

pub async fn execute(_engine: &Engine, _id: u64) -> Result<(), JobError> {
    Err(JobError::Step {
        step: "checks".into(),
        message: "not implemented yet".into(),
    })
}
