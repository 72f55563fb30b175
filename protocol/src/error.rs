//! A malformed message.

use std::fmt;

/// A malformed message: which field (or `body`, for the message as a whole) and what is wrong
/// with it. Displayed as `field: problem`, the key store's 400 message, which the filter logs
/// when it misbehaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// The field's name, `body` when the message as a whole is wrong.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl ProtocolError {
    /// A problem with the field `field`.
    pub fn field(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// A problem with the message as a whole.
    pub fn body(problem: impl Into<String>) -> Self {
        Self::field("body", problem)
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for ProtocolError {}
