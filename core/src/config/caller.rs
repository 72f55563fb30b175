//! Who the caller is: the ordered sources of its identity, and the scope of callers none of them
//! names.

use super::checks::is_token;
use super::raw::{Anonymous, RawCaller};
use super::{err, ConfigError};

/// One place the caller identity may come from. The sources are tried in order; the first that
/// gives a non-empty value names the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallerSource {
    /// A request header's value (e.g. `authorization`, `cookie`, `x-api-key`).
    Header(String),
    /// An Envoy property path (e.g. the JWT filter's subject in dynamic metadata, or the mTLS
    /// peer's identity `["connection","uri_san_peer_certificate"]`).
    Property(Vec<String>),
}

impl CallerSource {
    /// A label that goes into the record key with the value, so the same bytes from two sources
    /// (a header and a certificate SAN) are two callers.
    pub fn label(&self) -> String {
        match self {
            CallerSource::Header(h) => format!("header:{h}"),
            // Segments as a JSON array: no two different paths give one label.
            CallerSource::Property(p) => {
                format!("property:{}", serde_json::to_string(p).unwrap_or_default())
            }
        }
    }
}

pub(super) fn validate_callers(raw: Option<RawCaller>) -> Result<Vec<CallerSource>, ConfigError> {
    let one = |field: &str, header: Option<String>, property: Option<Vec<String>>| match (
        header, property,
    ) {
        (Some(h), None) => {
            let h = h.to_ascii_lowercase();
            if !is_token(&h) {
                return Err(err(
                    format!("{field}.header"),
                    "must be a non-empty HTTP header name",
                ));
            }
            Ok(CallerSource::Header(h))
        }
        (None, Some(p)) => {
            if p.is_empty() || p.iter().any(|s| s.is_empty()) {
                return Err(err(
                    format!("{field}.property"),
                    "must be a non-empty list of non-empty path segments",
                ));
            }
            Ok(CallerSource::Property(p))
        }
        _ => Err(err(field, "needs exactly one of `header` or `property`")),
    };
    match raw {
        None => Ok(vec![CallerSource::Header("authorization".to_string())]),
        Some(RawCaller {
            header: None,
            property: None,
            sources: Some(sources),
        }) => {
            if sources.is_empty() {
                return Err(err("caller.sources", "must list at least one source"));
            }
            sources
                .into_iter()
                .enumerate()
                .map(|(i, s)| one(&format!("caller.sources[{i}]"), s.header, s.property))
                .collect()
        }
        Some(RawCaller {
            sources: None,
            header,
            property,
        }) => {
            // The single-source form: `caller.header` or `caller.property`.
            let source = one("caller", header, property)
                .map_err(|e| err(e.field, format!("{}; or give `sources`, a list", e.reason)))?;
            Ok(vec![source])
        }
        Some(_) => Err(err(
            "caller",
            "needs exactly one of `sources`, `header` or `property`",
        )),
    }
}

/// The scope of callers without credentials: `None` (they get 401) unless `anonymous_scope` names
/// one; the former `anonymous: "allow"` is refused with the way forward.
pub(super) fn validate_anonymous_scope(
    anonymous: Option<Anonymous>,
    scope: Option<String>,
) -> Result<Option<String>, ConfigError> {
    match (anonymous, scope) {
        (Some(Anonymous::Allow), _) => Err(err(
            "anonymous",
            "`allow` is no longer accepted: callers without credentials no longer share a scope by default; name their scope with `anonymous_scope` (they then share it), or remove `anonymous` to refuse them with 401",
        )),
        (Some(Anonymous::Reject), Some(_)) => Err(err(
            "anonymous_scope",
            "contradicts `anonymous: \"reject\"`; keep one of them",
        )),
        (_, Some(name)) => {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(err("anonymous_scope", "must be non-empty printable ASCII"));
            }
            Ok(Some(name))
        }
        (_, None) => Ok(None),
    }
}
