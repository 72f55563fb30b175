//! Field checks every part of the configuration uses.

use super::{err, ConfigError};

pub(super) fn to_usize(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

pub(super) fn check_range(field: &str, v: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if v < min || v > max {
        return Err(err(
            field,
            format!("must be between {min} and {max}, got {v}"),
        ));
    }
    Ok(())
}

/// RFC 9110 token characters: what header names and methods are made of.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
