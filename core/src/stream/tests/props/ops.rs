//! The operations a run is made of (requests, bodies, callout answers and their faults, upstream
//! and Envoy answers, resets, frozen root contexts, time) and how proptest generates them.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fault {
    None,
    /// The key store (or Envoy for it) answered 503.
    Unavailable,
    /// The callout was reset: no headers.
    Reset,
    /// 200 with a body that is not the protocol.
    Garbage,
    /// The key store applied the call, but the reply was lost (timeout: 504).
    LostReply,
    /// The root context could not send the callout (its streams' callouts are always sent).
    NotSent,
}

impl Fault {
    /// The key store saw the call.
    pub(super) fn applied(self) -> bool {
        matches!(self, Fault::None | Fault::LostReply)
    }
}

/// The fault of the `n`th root-context callout of an `Advance`, read from its fault pattern:
/// three bits per callout (0 to 2: none).
pub(super) fn fault_at(pattern: u64, n: usize) -> Fault {
    match (pattern >> (3 * (n % 21))) & 7 {
        3 => Fault::NotSent,
        4 => Fault::Unavailable,
        5 => Fault::Reset,
        6 => Fault::Garbage,
        7 => Fault::LostReply,
        _ => Fault::None,
    }
}

/// A fault pattern where every root-context callout gets a 503: the key store is down.
pub(super) fn key_store_down() -> u64 {
    (0..21).fold(0u64, |acc, n| acc | 4 << (3 * n))
}

/// Envoy answers in the upstream's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvoyAnswer {
    /// 504 when the route timeout fires while the upstream works (UT): it may have executed.
    RouteTimeout,
    /// 503 after the upstream reset the stream (UR), a connection failure retried before it (UF
    /// too): it may have executed.
    UpstreamReset,
    /// 503, no connection to the upstream (UF): the request never left.
    ConnectionFailure,
    /// 503, no healthy upstream (UH): the request never left.
    NoHealthyUpstream,
    /// 503, circuit breaker overflow (UO): the request never left.
    Overflow,
    /// 408, the request timed out while the filter waited for its claim: never forwarded.
    RequestTimeout,
}

impl EnvoyAnswer {
    pub(super) fn status_and_flags(self) -> (u16, u64) {
        match self {
            EnvoyAnswer::RouteTimeout => (504, UPSTREAM_REQUEST_TIMEOUT),
            EnvoyAnswer::UpstreamReset => {
                (503, UPSTREAM_REMOTE_RESET | UPSTREAM_CONNECTION_FAILURE)
            }
            EnvoyAnswer::ConnectionFailure => (503, UPSTREAM_CONNECTION_FAILURE),
            EnvoyAnswer::NoHealthyUpstream => (503, NO_HEALTHY_UPSTREAM),
            EnvoyAnswer::Overflow => (503, UPSTREAM_OVERFLOW),
            EnvoyAnswer::RequestTimeout => (408, 0),
        }
    }

    pub(super) fn may_have_executed(self) -> bool {
        matches!(self, EnvoyAnswer::RouteTimeout | EnvoyAnswer::UpstreamReset)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Op {
    /// A request arrives on an Envoy (ignored with one Envoy); `trailers`: its body ends with
    /// trailers (HTTP/2); `cas_fail`: CAS writes that fail when the request is decided.
    Start {
        envoy: usize,
        caller: usize,
        key: usize,
        body: usize,
        trailers: bool,
        cas_fail: usize,
    },
    /// A client retries: a request with the caller, key and body of an earlier one arrives.
    Retry {
        envoy: usize,
        of: usize,
        trailers: bool,
        cas_fail: usize,
    },
    /// The rest of the request arrives.
    Body { s: usize, cas_fail: usize },
    /// The stream's pending callout is answered.
    Answer { s: usize, fault: Fault },
    /// The upstream answers: its headers and whole body, or (`whole` false) its headers and half
    /// of its body. On a response being received, the rest of its body.
    Respond { s: usize, status: u16, whole: bool },
    /// Envoy answers in the upstream's place (the request timeout: while the claim is pending).
    Envoy { s: usize, answer: EnvoyAnswer },
    /// The stream ends early (reset or client gone). With a key store: `pending_applied` says
    /// whether its pending callout (claim or write) reached the key store anyway; `delivered`
    /// whether the root context ticks at once and sends what the stream handed over (if not, the
    /// next ticks do, with the faults of their `Advance`).
    Reset {
        s: usize,
        pending_applied: bool,
        delivered: bool,
    },
    /// An Envoy's root context stops ticking (or ticks again): its leases are no longer renewed.
    Freeze { envoy: usize },
    /// Time passes tick by tick; `faults`: the pattern of faults of the root context's callouts.
    Advance { ms: u64, faults: u64 },
}

pub(super) fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::Unavailable),
        1 => Just(Fault::Reset),
        1 => Just(Fault::Garbage),
        1 => Just(Fault::LostReply),
    ]
}

pub(super) fn cas_fail() -> impl Strategy<Value = usize> {
    prop_oneof![8 => Just(0usize), 1 => 1usize..4, 1 => 16usize..20]
}

pub(super) fn envoy_answer() -> impl Strategy<Value = EnvoyAnswer> {
    prop_oneof![
        2 => Just(EnvoyAnswer::RouteTimeout),
        1 => Just(EnvoyAnswer::UpstreamReset),
        2 => Just(EnvoyAnswer::ConnectionFailure),
        1 => Just(EnvoyAnswer::NoHealthyUpstream),
        1 => Just(EnvoyAnswer::Overflow),
        2 => Just(EnvoyAnswer::RequestTimeout),
    ]
}

pub(super) fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 0..2usize, 0..3usize, 0..3usize, any::<bool>(), cas_fail()).prop_map(
            |(envoy, caller, key, body, trailers, cas_fail)| Op::Start {
                envoy,
                caller,
                key,
                body,
                trailers,
                cas_fail
            }
        ),
        3 => (0..2usize, any::<usize>(), any::<bool>(), cas_fail()).prop_map(
            |(envoy, of, trailers, cas_fail)| Op::Retry {
                envoy,
                of,
                trailers,
                cas_fail
            }
        ),
        2 => (any::<usize>(), cas_fail()).prop_map(|(s, cas_fail)| Op::Body { s, cas_fail }),
        3 => (any::<usize>(), fault()).prop_map(|(s, fault)| Op::Answer { s, fault }),
        3 => (
            any::<usize>(),
            prop_oneof![3 => Just(201u16), 1 => Just(200), 1 => Just(500), 1 => Just(503), 1 => Just(429)],
            prop::bool::weighted(0.7),
        )
            .prop_map(|(s, status, whole)| Op::Respond { s, status, whole }),
        1 => (any::<usize>(), envoy_answer()).prop_map(|(s, answer)| Op::Envoy { s, answer }),
        1 => (any::<usize>(), any::<bool>(), any::<bool>()).prop_map(
            |(s, pending_applied, delivered)| Op::Reset {
                s,
                pending_applied,
                delivered
            }
        ),
        2 => (0..2usize).prop_map(|envoy| Op::Freeze { envoy }),
        3 => (
            prop_oneof![
                3 => Just(1u64),
                3 => Just(TICK_MS),
                2 => Just(LEASE_MS / 2),
                2 => Just(LEASE_MS + 1),
                1 => Just(HOLD_MS),
                1 => Just(RETENTION_MS + 1)
            ],
            prop_oneof![6 => Just(0u64), 1 => any::<u64>(), 1 => Just(key_store_down())],
        )
            .prop_map(|(ms, faults)| Op::Advance { ms, faults }),
    ]
}
