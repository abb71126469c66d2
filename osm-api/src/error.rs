use serde::{Deserialize, Serialize};

/// Stable error codes on both wire formats. Never renumber or rename; only add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or names something impossible.
    InvalidArgument,
    /// The named job (or other object) does not exist.
    NotFound,
    /// The caller is neither root nor in the agent's admin group.
    PermissionDenied,
    /// The NBD source could not be reached or read.
    SourceUnreachable,
    /// The target is smaller than the source.
    TargetTooSmall,
    /// The target cannot be opened or written.
    TargetNotWritable,
    /// The job is in a state that does not allow this.
    InvalidState,
    /// A fault inside the agent (store, runtime); the message says what.
    Internal,
    /// vCenter refused the login (wrong user or password) or the session.
    VsphereAuth,
    /// vCenter cannot be reached (DNS, TCP, timeout).
    VsphereUnreachable,
    /// vCenter's certificate failed verification (CA or thumbprint).
    VsphereTls,
    /// vCenter answered with a fault (permission, state, locked file, failed task…).
    VsphereFault,
}

impl ErrorCode {
    /// The D-Bus error name suffix, e.g. `NotFound`.
    pub fn dbus_name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::PermissionDenied => "PermissionDenied",
            ErrorCode::SourceUnreachable => "SourceUnreachable",
            ErrorCode::TargetTooSmall => "TargetTooSmall",
            ErrorCode::TargetNotWritable => "TargetNotWritable",
            ErrorCode::InvalidState => "InvalidState",
            ErrorCode::Internal => "Internal",
            ErrorCode::VsphereAuth => "VsphereAuth",
            ErrorCode::VsphereUnreachable => "VsphereUnreachable",
            ErrorCode::VsphereTls => "VsphereTls",
            ErrorCode::VsphereFault => "VsphereFault",
        }
    }

    pub fn from_dbus_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.dbus_name() == name)
    }

    /// Every code; a new code goes here too (the test below checks the names round-trip).
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::PermissionDenied,
        ErrorCode::SourceUnreachable,
        ErrorCode::TargetTooSmall,
        ErrorCode::TargetNotWritable,
        ErrorCode::InvalidState,
        ErrorCode::Internal,
        ErrorCode::VsphereAuth,
        ErrorCode::VsphereUnreachable,
        ErrorCode::VsphereTls,
        ErrorCode::VsphereFault,
    ];
}

/// An error as it crosses the wire: `{"code":"not_found","message":"…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dbus_names_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_dbus_name(c.dbus_name()), Some(c));
        }
    }
}
