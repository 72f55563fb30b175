//! The HMAC secrets: read inline or from the Wasm VM's environment, refused when short or a
//! shipped placeholder, and kept redacted in debug output.

use std::fmt;

use super::{err, ConfigError};

/// Secrets shorter than this are refused: 32 bytes is the HMAC-SHA-256 output size.
pub const MIN_SECRET_BYTES: usize = 32;

/// Values that shipped in this repository's examples as placeholders; refused as secrets.
pub const PLACEHOLDER_SECRETS: [&str; 5] = [
    "change-me",
    "demo-secret-change-me",
    "replace-with-a-long-random-secret",
    "replace-with-the-keystore-token",
    "replace-me-with-32-or-more-random-bytes",
];

/// The HMAC secrets, newest first: the first derives record keys and fingerprints and signs
/// records; every one of them verifies records and finds those stored before a rotation.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets(Vec<Vec<u8>>);

impl Secrets {
    /// The secret that scopes and signs what is written now.
    pub fn current(&self) -> &[u8] {
        self.0.first().map_or(&[], Vec::as_slice)
    }

    /// Every secret, the current one first.
    pub fn all(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().map(Vec::as_slice)
    }

    /// The secrets of an earlier rotation, still accepted.
    pub fn previous(&self) -> impl Iterator<Item = &[u8]> {
        self.0.iter().skip(1).map(Vec::as_slice)
    }

    /// For tests and tools: secrets given as bytes, unchecked.
    pub fn from_bytes(secrets: Vec<Vec<u8>>) -> Secrets {
        Secrets(secrets)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

/// Reads one secret: an inline string, `{"value": "..."}`, or `{"env": "NAME"}` (the Wasm VM's
/// environment). Envoy gives a Wasm VM no file system, so there is no file source.
pub(super) fn read_secret(
    field: &str,
    v: serde_json::Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<u8>, ConfigError> {
    use serde_json::Value;
    match v {
        Value::String(s) => Ok(s.into_bytes()),
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).collect();
            match (keys.as_slice(), map.get("env"), map.get("value")) {
                (["env"], Some(Value::String(name)), _) => {
                    if name.is_empty() {
                        return Err(err(format!("{field}.env"), "must name a variable"));
                    }
                    env(name).map(String::into_bytes).ok_or_else(|| {
                        err(
                            format!("{field}.env"),
                            format!("the environment variable `{name}` is not set in the Wasm VM (Envoy: `vm_config.environment_variables`; Istio: `vmConfig.env`)"),
                        )
                    })
                }
                (["value"], _, Some(Value::String(s))) => Ok(s.clone().into_bytes()),
                (["file"], _, _) => Err(err(
                    format!("{field}.file"),
                    "Envoy gives a Wasm VM no file system; pass the secret through the VM's environment and use `env`",
                )),
                _ => Err(err(
                    field,
                    "must be a string, {\"env\": \"NAME\"} or {\"value\": \"...\"}",
                )),
            }
        }
        _ => Err(err(
            field,
            "must be a string, {\"env\": \"NAME\"} or {\"value\": \"...\"}",
        )),
    }
}

pub(super) fn check_secret(field: &str, secret: &[u8]) -> Result<(), ConfigError> {
    if PLACEHOLDER_SECRETS.iter().any(|p| p.as_bytes() == secret) {
        return Err(err(
            field,
            "is a placeholder shipped in the examples; generate a secret (e.g. `openssl rand -hex 32`)",
        ));
    }
    if secret.len() < MIN_SECRET_BYTES {
        return Err(err(
            field,
            format!(
                "is {} bytes; a secret needs at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        ));
    }
    Ok(())
}

pub(super) fn validate_secrets(
    one: Option<serde_json::Value>,
    list: Option<Vec<serde_json::Value>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secrets, ConfigError> {
    let secrets = match (one, list) {
        (Some(v), None) => {
            let s = read_secret("hmac_secret", v, env)?;
            check_secret("hmac_secret", &s)?;
            vec![s]
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(err(
                    "hmac_secrets",
                    "must list at least one secret (the first signs)",
                ));
            }
            let mut out: Vec<Vec<u8>> = Vec::with_capacity(list.len());
            for (i, v) in list.into_iter().enumerate() {
                let field = format!("hmac_secrets[{i}]");
                let s = read_secret(&field, v, env)?;
                check_secret(&field, &s)?;
                if out.contains(&s) {
                    return Err(err(field, "repeats an earlier secret"));
                }
                out.push(s);
            }
            out
        }
        (None, None) => {
            return Err(err(
                "hmac_secret",
                "is required: the secret that scopes record keys and signs records (at least 32 bytes; `{\"env\": \"NAME\"}` reads it from the VM's environment)",
            ))
        }
        (Some(_), Some(_)) => {
            return Err(err(
                "hmac_secrets",
                "give either `hmac_secret` or `hmac_secrets`, not both",
            ))
        }
    };
    Ok(Secrets(secrets))
}
