//! Routed replays (README, "Routed replays"): the names the outer filter and the replay
//! listener's filter agree on, and the ticket that proves a replay request comes from the outer
//! filter of the same Envoy.
//!
//! Envoy sends any local reply to a gRPC call trailers-only, so a stored gRPC answer (message,
//! initial and trailing metadata) cannot be a local reply (docs/design.md, "gRPC"). The outer filter
//! instead routes the retry, by filter state it sets, to a replay listener of the same Envoy; its
//! request there is not gRPC (`content-type` changed), so the listener's filter answers with a
//! local reply that keeps its body and takes trailers, and the outer listener passes that on as an
//! upstream answer. The listener's filter reads the record from L1 (shared data of the same VM
//! id), by the record key the ticket names.
//!
//! A ticket is `<record key hex>.<issued ms>.<MAC hex>`, the MAC an HMAC-SHA-256 under the
//! current secret over the record key and the time. The listener answers only a ticket that holds
//! and is at most [`TICKET_TTL_MS`] old: a process that can reach a loopback listener still cannot
//! read records, and a ticket seen once cannot be used for long.

use crate::scope::RecordKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The filter state the outer filter sets (Envoy names it `wasm.idempotency_replay`), matched by
/// the route to the replay listener. A client can send any header but cannot set filter state.
pub const FILTER_STATE: &str = "idempotency_replay";
/// The value of [`FILTER_STATE`] (the route matches it exactly).
pub const FILTER_STATE_VALUE: &[u8] = b"routed";
/// A routed replay's `:path`: one no service serves, so that a request the routes do not send to
/// the replay listener (a configuration without that route) cannot run the call again.
pub const PATH: &str = "/.well-known/idempotency-replay";
/// The request header that carries the ticket.
pub const TICKET_HEADER: &str = "x-idempotency-replay";
/// The request's own `content-type`, kept while the request travels as [`CONTENT_TYPE`].
pub const CONTENT_TYPE_HEADER: &str = "x-idempotency-replay-content-type";
/// What a routed replay's `content-type` becomes: not gRPC, so that the listener's local reply
/// keeps its body and trailers.
pub const CONTENT_TYPE: &[u8] = b"application/x-idempotency-replay";
/// How long a ticket is honoured. Both filters run in one process with one clock; this only
/// bounds the use of a ticket seen on the loopback.
pub const TICKET_TTL_MS: u64 = 60_000;

/// Why a replay request is refused by the listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TicketError {
    Missing,
    Malformed,
    /// The MAC does not hold under the current secret.
    Forged,
    /// Older than [`TICKET_TTL_MS`], or issued in the future.
    Stale,
}

impl TicketError {
    pub fn reason(self) -> &'static str {
        match self {
            TicketError::Missing => "the request carries no replay ticket",
            TicketError::Malformed => "the replay ticket is malformed",
            TicketError::Forged => "the replay ticket does not verify",
            TicketError::Stale => "the replay ticket has expired",
        }
    }
}

fn mac(secret: &[u8], key: &RecordKey, issued_ms: u64) -> Option<Hmac<Sha256>> {
    let mut mac = crate::mac::keyed(secret)?;
    mac.update(b"idempotency-replay-ticket-v1");
    mac.update(&key.0);
    mac.update(&issued_ms.to_be_bytes());
    Some(mac)
}

/// The ticket for replaying `key`'s record, issued at `now_ms` under `secret` (the current one).
pub fn ticket(secret: &[u8], key: &RecordKey, now_ms: u64) -> String {
    let tag = mac(secret, key, now_ms)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{}.{now_ms}.{tag}", key.hex())
}

/// The record key a ticket names, if it holds under `secret` at `now_ms`.
pub fn check(secret: &[u8], ticket: Option<&[u8]>, now_ms: u64) -> Result<RecordKey, TicketError> {
    let ticket = ticket.ok_or(TicketError::Missing)?;
    let text = std::str::from_utf8(ticket).map_err(|_| TicketError::Malformed)?;
    let mut parts = text.split('.');
    let (Some(key), Some(issued), Some(tag), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TicketError::Malformed);
    };
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(key, &mut bytes).map_err(|_| TicketError::Malformed)?;
    let key = RecordKey(bytes);
    let issued_ms: u64 = issued.parse().map_err(|_| TicketError::Malformed)?;
    let tag = hex::decode(tag).map_err(|_| TicketError::Malformed)?;
    let holds = mac(secret, &key, issued_ms).is_some_and(|m| m.verify_slice(&tag).is_ok());
    if !holds {
        return Err(TicketError::Forged);
    }
    if issued_ms > now_ms || now_ms - issued_ms > TICKET_TTL_MS {
        return Err(TicketError::Stale);
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"replay-ticket-test-secret-0123456789";

    #[test]
    fn a_ticket_names_its_key_and_holds_only_as_issued() {
        let key = RecordKey([7; 32]);
        let t = ticket(SECRET, &key, 1_000);
        assert_eq!(check(SECRET, Some(t.as_bytes()), 1_000), Ok(key));
        assert_eq!(check(SECRET, Some(t.as_bytes()), 61_000), Ok(key));
        assert_eq!(
            check(SECRET, Some(t.as_bytes()), 61_001),
            Err(TicketError::Stale)
        );
        assert_eq!(
            check(SECRET, Some(t.as_bytes()), 999),
            Err(TicketError::Stale)
        );
        let other = b"another-secret-of-enough-length-0123456";
        assert_eq!(
            check(other, Some(t.as_bytes()), 1_000),
            Err(TicketError::Forged)
        );
        // The MAC covers the key and the time: neither can be changed.
        let moved = t.replacen(&key.hex(), &RecordKey([8; 32]).hex(), 1);
        assert_eq!(
            check(SECRET, Some(moved.as_bytes()), 1_000),
            Err(TicketError::Forged)
        );
        let later = t.replacen(".1000.", ".2000.", 1);
        assert_eq!(
            check(SECRET, Some(later.as_bytes()), 2_000),
            Err(TicketError::Forged)
        );
        assert_eq!(check(SECRET, None, 0), Err(TicketError::Missing));
        for bad in ["", "x.y.z", "ab.1.cd.ef", &format!("{}.1.zz", key.hex())] {
            assert_eq!(
                check(SECRET, Some(bad.as_bytes()), 1),
                Err(TicketError::Malformed),
                "{bad}"
            );
        }
    }
}
