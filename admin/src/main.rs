//! `idempotency-admin`: answers a user's "why did my retry get 409 / 410 / 422?" and clears a
//! stuck key, from the plugin configuration, the request's route, caller and key.
//!
//! Modules: [`cli`] (flags), [`target`] (configuration, route, caller and key to record keys,
//! with the filter's own code), [`client`] (the key store's admin API), [`compare`] (a request's
//! fingerprint against the stored one), [`report`] (what a key holds, in words and JSON).

mod cli;
mod client;
mod compare;
mod report;
mod target;

use std::process::ExitCode;

use clap::Parser as _;
use serde::Serialize;

use cli::{Cli, Command};
use client::AdminClient;
use compare::RequestDigest;
use report::{now_ms, Finding};
use target::{BadInput, Scope, Target};

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // Input that names no record is a usage error, as clap's own.
            if e.is::<BadInput>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `show --json`: what was looked for, and what each record key holds.
#[derive(Serialize)]
struct ShowJson<'a> {
    route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    caller_source: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anonymous_scope: Option<&'a str>,
    key: &'a str,
    records: &'a [Finding],
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Key(request) => {
            let target = Target::resolve(&request)?;
            for line in target.describe() {
                println!("{line}");
            }
            for k in &target.keys {
                println!("{:<22}{}", k.label(), k.key.hex());
            }
        }
        Command::Show {
            request,
            keystore,
            payload,
            json,
        } => {
            let target = Target::resolve(&request)?;
            let digest = RequestDigest::of(
                &target.config,
                &request.method.to_ascii_uppercase(),
                &request.path,
                &payload,
            )?;
            let client = AdminClient::new(&keystore.url, &keystore.admin_token)?;
            let now = now_ms();
            let secrets: Vec<&[u8]> = target.config.secrets.all().collect();
            let mut findings = Vec::new();
            for k in &target.keys {
                let state = client.inspect(&k.key)?;
                let mut finding = Finding::new(k, state, &target.config.secrets, now);
                // The key under secret N holds a fingerprint keyed under secret N.
                if let (Some(digest), Some(fp), Some(secret)) =
                    (&digest, finding.state.fingerprint(), secrets.get(k.index))
                {
                    finding.request_matches = Some(digest.matches(secret, fp));
                }
                findings.push(finding);
            }
            if json {
                let (caller_source, anonymous_scope) = match &target.scope {
                    Scope::Caller { source } => (Some(source.as_str()), None),
                    Scope::Anonymous { scope } => (None, Some(scope.as_str())),
                };
                let out = ShowJson {
                    route: &target.route,
                    caller_source,
                    anonymous_scope,
                    key: &target.key,
                    records: &findings,
                };
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for line in target.describe() {
                    println!("{line}");
                }
                for f in &findings {
                    for line in f.lines(now) {
                        println!("{line}");
                    }
                }
            }
        }
        Command::Purge {
            request,
            keystore,
            yes,
        } => {
            let target = Target::resolve(&request)?;
            if !yes {
                return Err(BadInput(
                    "purge deletes what the key holds in the key store (the next request with it runs again): add --yes to confirm"
                        .to_owned(),
                )
                .into());
            }
            let client = AdminClient::new(&keystore.url, &keystore.admin_token)?;
            for line in target.describe() {
                println!("{line}");
            }
            let now = now_ms();
            for k in &target.keys {
                let removed = Finding::new(k, client.purge(&k.key)?, &target.config.secrets, now);
                println!("{}", removed.purged());
            }
        }
    }
    Ok(())
}
