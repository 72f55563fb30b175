//! The filter's side of the key-store protocol (README, "Key-store API"): callout requests, and
//! replies parsed strictly, so an unexpected answer becomes a counted store error, never a panic.
//! The bodies are the shared wire types of [`idempotency_protocol`], the ones the key store parses,
//! sent in the configured format (compact by default); replies are read in whichever format they
//! come in, by their first byte, so the reply's headers are never read beyond `:status`.
//! Records go out sealed and come back opened ([`Record::seal`], [`Record::open`]): a record the
//! key store returns that does not open is [`ClaimError::Unverified`], never a replay.

use crate::config::KeystoreConfig;
use crate::fingerprint::Fingerprint;
use crate::found::Found;
use crate::host::Callout;
use crate::record::{OpenError, Record};
use crate::scope::RecordKey;
use idempotency_protocol::{
    body, ClaimAnswer, ClaimRequest, ClaimResponse, Compact, CompleteRequest, FencedResponse,
    Hex64, LookupRequest, LookupResponse, ReleaseRequest, RenewBatchRequest, RenewBatchResponse,
    RenewOutcome, RenewRequest, Request,
};

pub use idempotency_protocol::AbandonedPolicy;

/// What the key store said to complete or release, or to one renewal of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckReply {
    Done,
    /// The token is no longer the current claim's: someone took the key over.
    Stale,
}

/// Why a claim reply cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// The key store returned a record that does not open under any configured secret for this
    /// record key: forged or altered in the store.
    Unverified,
    /// Any other failure: status, transport, unparsable reply.
    Failed(String),
}

impl From<String> for ClaimError {
    fn from(e: String) -> ClaimError {
        ClaimError::Failed(e)
    }
}

fn callout(cfg: &KeystoreConfig, op: &str, body: &(impl Request + Compact)) -> Callout {
    let mut headers = vec![
        (":method".to_string(), "POST".to_string()),
        (":path".to_string(), format!("{}/{op}", cfg.path_prefix)),
        (":authority".to_string(), cfg.authority.clone()),
        (
            "content-type".to_string(),
            cfg.body_format.content_type().to_string(),
        ),
    ];
    if let Some(token) = &cfg.token {
        headers.push(("authorization".to_string(), format!("Bearer {token}")));
    }
    Callout {
        cluster: cfg.cluster.clone(),
        headers,
        body: cfg.body_format.encode(body),
        timeout_ms: cfg.timeout_ms,
        forwarded: None,
    }
}

fn key_hex(key: &RecordKey) -> Hex64 {
    Hex64::from_bytes(&key.0)
}

/// Whether a reply came with the 200 it needs; else why not, as a store error.
fn expect_200(op: &str, status: Option<u16>) -> Result<(), ClaimError> {
    match status {
        Some(200) => Ok(()),
        Some(s) => Err(format!("key store answered {s} to {op}").into()),
        None => Err("key store callout failed without a response"
            .to_string()
            .into()),
    }
}

/// Opens a record the key store returned for `key`.
fn open(cfg: &KeystoreConfig, key: &RecordKey, bytes: &[u8]) -> Result<Record, ClaimError> {
    match Record::open(bytes, key, &cfg.secrets) {
        Ok(record) => Ok(record),
        Err(OpenError::Unverified) => Err(ClaimError::Unverified),
        Err(OpenError::Malformed(e)) => Err(ClaimError::Failed(e)),
    }
}

/// What a claim asks for besides its key: how long its lease runs, how long it may wait for a key
/// in flight, and what the key store does with a key whose holder let its lease run out without
/// an answer (an abandoned claim: the holder may have forwarded the request and died).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimTerms {
    pub lease_ms: u64,
    pub wait_ms: u64,
    /// `report` (the key answers as an unknown outcome) or `take_over` (the claim wins the key).
    pub abandoned: AbandonedPolicy,
    /// How long the key store keeps this claim, abandoned, after its lease ends: the route's
    /// retention, as long as a record of it would be kept.
    pub retention_ms: u64,
}

/// Claims `key` with the fencing token `token` (the filter's own, so that it can release a claim
/// whose answer it never read). With `terms.wait_ms`, a key in flight with this fingerprint holds
/// the call until its record lands (or the wait ends); the callout's timeout covers the wait.
pub fn claim(
    cfg: &KeystoreConfig,
    key: &RecordKey,
    fp: &Fingerprint,
    token: &str,
    terms: &ClaimTerms,
) -> Callout {
    let body = ClaimRequest {
        key: key_hex(key),
        fingerprint: Hex64::from_bytes(fp),
        lease_ms: terms.lease_ms,
        wait_ms: terms.wait_ms,
        token: Some(token.to_string()),
        abandoned: Some(terms.abandoned),
        retention_ms: Some(terms.retention_ms),
    };
    let mut c = callout(cfg, "claim", &body);
    c.timeout_ms = c.timeout_ms.saturating_add(terms.wait_ms);
    c
}

/// Whether the key store held a waiting claim before answering (its `waited` flag).
pub fn claim_waited(body: &[u8]) -> bool {
    body::decode::<ClaimAnswer>(body).is_ok_and(|a| a.waited)
}

/// Asks what `key` holds, claiming nothing: how a key stored under a previous secret is found.
/// It names `report`, so an abandoned claim reads as [`Found::Abandoned`].
pub fn lookup(cfg: &KeystoreConfig, key: &RecordKey, fp: &Fingerprint) -> Callout {
    let body = LookupRequest {
        key: key_hex(key),
        fingerprint: Hex64::from_bytes(fp),
        abandoned: Some(AbandonedPolicy::Report),
    };
    callout(cfg, "lookup", &body)
}

/// Parses the reply to a lookup of `key`; a record in it must open for `key`.
pub fn parse_lookup(
    cfg: &KeystoreConfig,
    key: &RecordKey,
    status: Option<u16>,
    body: &[u8],
) -> Result<Found, ClaimError> {
    expect_200("lookup", status)?;
    let reply: LookupResponse =
        body::decode(body).map_err(|e| format!("unparsable lookup reply: {e}"))?;
    Ok(match reply {
        LookupResponse::Absent => Found::Absent,
        LookupResponse::InFlight { retry_after_ms } => Found::InFlight { retry_after_ms },
        LookupResponse::Mismatch => Found::Mismatch,
        LookupResponse::Completed { record } => Found::Completed(open(cfg, key, &record)?),
        LookupResponse::Abandoned { lease_ended_ms_ago } => Found::Abandoned { lease_ended_ms_ago },
    })
}

/// Stores `record`, sealed under the current secret, as the outcome of the claim `token` holds.
pub fn complete(
    cfg: &KeystoreConfig,
    key: &RecordKey,
    token: &str,
    record: &Record,
    retention_ms: u64,
) -> Callout {
    let body = CompleteRequest {
        key: key_hex(key),
        token: token.to_string(),
        record: record.seal(key, cfg.secrets.current()),
        retention_ms,
    };
    callout(cfg, "complete", &body)
}

/// Gives up the claim `token` holds, so that the key is free at once.
pub fn release(cfg: &KeystoreConfig, key: &RecordKey, token: &str) -> Callout {
    let body = ReleaseRequest {
        key: key_hex(key),
        token: token.to_string(),
    };
    callout(cfg, "release", &body)
}

/// Extends the leases of several claims (each a key and the token its claim holds) in one call,
/// while their upstreams are still working. The caller keeps a batch within
/// [`idempotency_protocol::MAX_RENEW_BATCH`] renewals.
pub fn renew_batch(cfg: &KeystoreConfig, claims: &[(RecordKey, String)], lease_ms: u64) -> Callout {
    let body = RenewBatchRequest {
        renewals: claims
            .iter()
            .map(|(key, token)| RenewRequest {
                key: key_hex(key),
                token: token.clone(),
                lease_ms,
            })
            .collect(),
    };
    callout(cfg, "renew-batch", &body)
}

/// Parses the reply to a batch of `count` renewals: each one's answer, in the batch's order.
pub fn parse_renew_batch(
    status: Option<u16>,
    body: &[u8],
    count: usize,
) -> Result<Vec<AckReply>, String> {
    match status {
        Some(200) => {}
        Some(s) => return Err(format!("key store answered {s} to renew-batch")),
        None => return Err("key store callout failed without a response".to_string()),
    }
    let reply: RenewBatchResponse =
        body::decode(body).map_err(|e| format!("unparsable renew-batch reply: {e}"))?;
    if reply.outcomes.len() != count {
        return Err(format!(
            "renew-batch reply has {} outcomes for {count} renewals",
            reply.outcomes.len()
        ));
    }
    Ok(reply
        .outcomes
        .into_iter()
        .map(|o| match o {
            RenewOutcome::Renewed => AckReply::Done,
            RenewOutcome::Stale => AckReply::Stale,
        })
        .collect())
}

/// Parses the reply to a claim of `key`. `status` is `None` when the callout was reset (no
/// headers). A record in it must open under one of `cfg.secrets` for `key`.
pub fn parse_claim(
    cfg: &KeystoreConfig,
    key: &RecordKey,
    status: Option<u16>,
    body: &[u8],
) -> Result<Found, ClaimError> {
    expect_200("claim", status)?;
    let answer: ClaimAnswer =
        body::decode(body).map_err(|e| format!("unparsable claim reply: {e}"))?;
    Ok(match answer.response {
        ClaimResponse::Claimed { token } if !token.is_empty() => {
            Found::Claimed { token: Some(token) }
        }
        ClaimResponse::Claimed { .. } => {
            return Err("claim reply has an empty token".to_string().into())
        }
        ClaimResponse::InFlight { retry_after_ms } => Found::InFlight { retry_after_ms },
        ClaimResponse::Completed { record } => Found::Completed(open(cfg, key, &record)?),
        ClaimResponse::Mismatch => Found::Mismatch,
        ClaimResponse::Abandoned { lease_ended_ms_ago } => Found::Abandoned { lease_ended_ms_ago },
    })
}

/// Parses a complete or release reply.
pub fn parse_ack(status: Option<u16>, body: &[u8]) -> Result<AckReply, String> {
    match status {
        Some(200 | 409) => {}
        Some(s) => return Err(format!("key store answered {s}")),
        None => return Err("key store callout failed without a response".to_string()),
    }
    match body::decode::<FencedResponse>(body) {
        Ok(FencedResponse::Stored | FencedResponse::Released | FencedResponse::Renewed) => {
            Ok(AckReply::Done)
        }
        Ok(FencedResponse::Stale) => Ok(AckReply::Stale),
        Err(e) => Err(format!("unparsable key store reply: {e}")),
    }
}

#[cfg(test)]
mod tests;
