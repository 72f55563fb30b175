//! Command line: what to look for (the plugin configuration, the request's route, its caller and
//! its key) and where (the key store's admin API).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Finds, reads and purges the key store's record of one client's Idempotency-Key: why a retry got
/// 409, 410 or 422, and how to clear a stuck key.
#[derive(Debug, Parser)]
#[command(name = "idempotency-admin", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints the record key (hex) under each configured secret, current and previous.
    Key(Request),
    /// Asks the key store what the key holds and prints it in words.
    Show {
        #[command(flatten)]
        request: Request,
        #[command(flatten)]
        keystore: Keystore,
        #[command(flatten)]
        payload: Payload,
        /// Prints JSON instead of words.
        #[arg(long)]
        json: bool,
    },
    /// Deletes whatever the key holds in the key store (a claim in flight, a record), under each
    /// configured secret, and prints what was removed. The next request with the key runs again.
    Purge {
        #[command(flatten)]
        request: Request,
        #[command(flatten)]
        keystore: Keystore,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
    },
}

/// The request whose key is looked for, as the filter saw it.
#[derive(Debug, Args)]
pub struct Request {
    /// The plugin configuration: the JSON the filter gets (`{"env": ...}` secrets are read from
    /// this process's environment).
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// The request's method.
    #[arg(long, default_value = "POST")]
    pub method: String,
    /// The request's path (a query is ignored, as the filter ignores it to match a rule).
    #[arg(long)]
    pub path: String,
    /// Which configured caller source named the caller, by its label (`header:authorization`,
    /// `property:["connection","uri_san_peer_certificate"]`); default: the first configured one.
    #[arg(long, value_name = "LABEL")]
    pub caller_source: Option<String>,
    /// The caller's value from that source, as the request carried it (`Bearer ...`).
    #[arg(
        long,
        env = "IDEMPOTENCY_ADMIN_CALLER",
        hide_env_values = true,
        required_unless_present = "anonymous",
        conflicts_with = "anonymous"
    )]
    pub caller: Option<String>,
    /// The request had no caller and ran in the configuration's `anonymous_scope`.
    #[arg(long)]
    pub anonymous: bool,
    /// The Idempotency-Key header's value as the client sent it (`"8e2..."` or a bare token).
    #[arg(long, allow_hyphen_values = true)]
    pub key: String,
}

/// Where the key store's admin API is.
#[derive(Debug, Args)]
pub struct Keystore {
    /// The key store's base URL.
    #[arg(
        long = "keystore",
        env = "IDEMPOTENCY_KEYSTORE_URL",
        default_value = "http://127.0.0.1:8081"
    )]
    pub url: String,
    /// The key store's admin token (its `--admin-token`), not the filter's `/v1` token.
    #[arg(long, env = "KEYSTORE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
}

/// A request to compare with what the key holds: the same fingerprint means a retry of the first
/// request, another one means 422.
#[derive(Debug, Args)]
pub struct Payload {
    /// The request body, from a file (`-`: standard input); with it, `show` says whether this
    /// request has the stored fingerprint. `--path` must then carry the query as sent.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// A request header as sent (`name: value`), repeatable; only the configuration's
    /// `fingerprint_headers` count.
    #[arg(long = "header", value_name = "NAME: VALUE", requires = "body")]
    pub headers: Vec<String>,
}
