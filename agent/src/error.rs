//! The agent's API-facing error, mapped to stable wire codes by an exhaustive match.
use osm_api::{ApiError, ErrorCode};

use crate::jobs::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("there is no job {0}; `osmctl status` lists the jobs")]
    NoSuchJob(u64),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidState(String),
    #[error("the agent is shutting down; retry once it is back")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vsphere(#[from] crate::cloud::vsphere::Error),
}

impl From<&Error> for ApiError {
    fn from(e: &Error) -> ApiError {
        let code = match e {
            Error::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Error::NoSuchJob(_) => ErrorCode::NotFound,
            Error::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Error::InvalidState(_) | Error::ShuttingDown => ErrorCode::InvalidState,
            Error::Store(_) => ErrorCode::Internal,
            Error::Vsphere(v) => vsphere_code(v),
        };
        ApiError {
            code,
            message: e.to_string(),
        }
    }
}

fn vsphere_code(e: &crate::cloud::vsphere::Error) -> ErrorCode {
    use crate::cloud::vsphere::Error as V;
    match e {
        V::NotConfigured => ErrorCode::InvalidState,
        V::Config(_) | V::PasswordFile { .. } => ErrorCode::InvalidArgument,
        V::Unreachable { .. } | V::Timeout { .. } => ErrorCode::VsphereUnreachable,
        V::Tls { .. } => ErrorCode::VsphereTls,
        V::InvalidLogin { .. } | V::NotAuthenticated(_) => ErrorCode::VsphereAuth,
        V::NoPermission { .. } => ErrorCode::PermissionDenied,
        V::ManagedObjectNotFound { .. } | V::VmNotFound(_) | V::FolderNotFound(_) | V::VmGone { .. } => {
            ErrorCode::NotFound
        }
        V::AmbiguousVm { .. } => ErrorCode::InvalidArgument,
        V::TaskInProgress { .. } | V::InvalidState(_) | V::FileLocked(_) => ErrorCode::InvalidState,
        V::TaskFailed { .. } | V::Fault(_) | V::Protocol { .. } => ErrorCode::VsphereFault,
    }
}
