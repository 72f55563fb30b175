//! From what the operator knows (the configuration, the request's route, caller and key) to the
//! record keys the filter stores under: the filter's own configuration parser, route matching,
//! key parser and key derivation, so the tool finds exactly what the filter wrote.

use std::fmt;

use idempotency_filter::config::Config;
use idempotency_filter::key::parse_key;
use idempotency_filter::scope::{Caller, RecordKey};

use crate::cli::Request;

/// Input that cannot name a record: the message says which flag or field is wrong.
#[derive(Debug)]
pub struct BadInput(pub String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn bad(message: impl Into<String>) -> anyhow::Error {
    BadInput(message.into()).into()
}

/// Who the request was scoped to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// A caller named by a configured source.
    Caller { source: String },
    /// The configuration's anonymous scope.
    Anonymous { scope: String },
}

/// The record key under one configured secret.
#[derive(Debug, Clone)]
pub struct SecretKey {
    /// Position in the configuration's secrets: 0 is the current one, which scopes and signs
    /// what is written now; the others are previous ones, still read.
    pub index: usize,
    pub key: RecordKey,
}

impl SecretKey {
    /// `secret 0 (current)`, `secret 1 (previous)`.
    pub fn label(&self) -> String {
        secret_label(self.index)
    }
}

/// `secret N (current|previous)`.
pub fn secret_label(index: usize) -> String {
    let role = if index == 0 { "current" } else { "previous" };
    format!("secret {index} ({role})")
}

/// Everything the tool derived from its input.
pub struct Target {
    pub config: Config,
    /// The matching rule's scope label (`prefix:/payments`).
    pub route: String,
    pub scope: Scope,
    /// The key as the filter reads it (unquoted).
    pub key: String,
    /// One record key per configured secret, the current one first.
    pub keys: Vec<SecretKey>,
}

impl Target {
    /// Reads the configuration and derives the record keys, or says what is wrong with the input.
    pub fn resolve(req: &Request) -> anyhow::Result<Target> {
        let bytes = std::fs::read(&req.config)
            .map_err(|e| bad(format!("--config {}: {e}", req.config.display())))?;
        let config = Config::parse(&bytes).map_err(|e| {
            // The filter's message speaks of the Wasm VM; here the environment is this process's.
            let hint = if e.field.ends_with(".env") {
                " (this tool reads `env` secrets from its own environment: export the variable)"
            } else {
                ""
            };
            bad(format!("--config {}: {e}{hint}", req.config.display()))
        })?;
        let method = req.method.to_ascii_uppercase();
        let rule = config.route_for(&method, &req.path).ok_or_else(|| {
            let rules: Vec<String> = config
                .routes
                .iter()
                .map(|r| format!("{} {}", r.methods.join("|"), r.path.scope()))
                .collect();
            bad(format!(
                "--method {method} --path {}: no rule of the configuration covers this request, so the filter stores nothing for it (rules: {})",
                req.path,
                rules.join(", ")
            ))
        })?;
        let route = rule.path.scope();
        let key = parse_key(req.key.as_bytes())
            .map_err(|e| bad(format!("--key {}: {e} (the filter answers 400)", req.key)))?;
        let scope = match (&req.caller, req.anonymous) {
            (_, true) => match &config.anonymous_scope {
                Some(scope) => Scope::Anonymous {
                    scope: scope.clone(),
                },
                None => {
                    return Err(bad(
                        "--anonymous: the configuration names no `anonymous_scope`, so the filter answers 401 to a request without a caller and stores nothing",
                    ))
                }
            },
            (Some(value), false) => {
                if value.is_empty() {
                    return Err(bad("--caller is empty; the filter takes the next source, or the anonymous scope (--anonymous)"));
                }
                let labels: Vec<String> = config.callers.iter().map(|c| c.label()).collect();
                let source = match &req.caller_source {
                    None => labels.first().cloned().unwrap_or_default(),
                    Some(given) if labels.contains(given) => given.clone(),
                    Some(given) => {
                        return Err(bad(format!(
                            "--caller-source {given} is not a caller source of the configuration (configured: {})",
                            labels.join(", ")
                        )))
                    }
                };
                Scope::Caller { source }
            }
            (None, false) => return Err(bad("give --caller (with --caller-source) or --anonymous")),
        };
        let caller_value = req.caller.clone().unwrap_or_default();
        let caller = match &scope {
            Scope::Caller { source } => Caller::Source {
                source,
                value: caller_value.as_bytes(),
            },
            Scope::Anonymous { scope } => Caller::Anonymous { scope },
        };
        let keys = config
            .secrets
            .all()
            .enumerate()
            .map(|(index, secret)| SecretKey {
                index,
                key: RecordKey::derive(secret, &route, &caller, key.as_str()),
            })
            .collect();
        Ok(Target {
            route,
            scope,
            key: key.as_str().to_owned(),
            keys,
            config,
        })
    }

    /// The lines that say what was looked for.
    pub fn describe(&self) -> Vec<String> {
        let scope = match &self.scope {
            Scope::Caller { source } => format!("caller    {source} (value not shown)"),
            Scope::Anonymous { scope } => format!("caller    anonymous scope {scope:?}"),
        };
        vec![
            format!("route     {}", self.route),
            scope,
            format!("key       {:?}", self.key),
        ]
    }
}
