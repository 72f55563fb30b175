//! Outcome counters, exposed by Envoy under `/stats` as `idempotency.<name>` (Envoy 1.40 prefixes
//! Wasm-defined metrics with `wasmcustom.`).

/// One counter per outcome (SPEC §8), plus the tier events operators watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Executed,
    Replayed,
    Conflict,
    Mismatch,
    MissingKey,
    InvalidKey,
    TooLarge,
    StoreError,
    FailOpen,
    Released,
    NotCovered,
    Unauthenticated,
    NotReplayable,
}

impl Metric {
    pub const ALL: [Metric; 13] = [
        Metric::Executed,
        Metric::Replayed,
        Metric::Conflict,
        Metric::Mismatch,
        Metric::MissingKey,
        Metric::InvalidKey,
        Metric::TooLarge,
        Metric::StoreError,
        Metric::FailOpen,
        Metric::Released,
        Metric::NotCovered,
        Metric::Unauthenticated,
        Metric::NotReplayable,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Metric::Executed => "idempotency.executed",
            Metric::Replayed => "idempotency.replayed",
            Metric::Conflict => "idempotency.conflict",
            Metric::Mismatch => "idempotency.mismatch",
            Metric::MissingKey => "idempotency.missing_key",
            Metric::InvalidKey => "idempotency.invalid_key",
            Metric::TooLarge => "idempotency.too_large",
            Metric::StoreError => "idempotency.store_error",
            Metric::FailOpen => "idempotency.fail_open",
            Metric::Released => "idempotency.released",
            Metric::NotCovered => "idempotency.not_covered",
            Metric::Unauthenticated => "idempotency.unauthenticated",
            Metric::NotReplayable => "idempotency.not_replayable",
        }
    }

    pub fn index(self) -> usize {
        Metric::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}
