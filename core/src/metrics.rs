//! Outcome counters, exposed by Envoy under `/stats` as `idempotency.<name>` (Envoy 1.40 prefixes
//! Wasm-defined metrics with `wasmcustom.`).

/// One counter per outcome, plus the tier events operators watch.
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
    /// An attempt that may have executed ended without a complete answer (its key is locked).
    UnknownOutcome,
    /// A retry answered with the terminal "outcome unknown" problem.
    UnknownOutcomeAnswered,
    /// A lease renewal the key store refused: another gateway took the key over.
    RenewalRefused,
    /// A first request sent upstream by the plugin itself (`execution: "detached"`).
    DetachedExecuted,
    /// A duplicate that waited for the first request's record (`in_flight: "wait"`).
    Waited,
    /// A wait that ended with the replay of the record.
    WaitReplayed,
    /// A wait that ran past `max_wait_ms` (answered 409).
    WaitTimedOut,
    /// A record from the key store that failed verification (forged or altered in the store):
    /// never replayed; answered as a store error.
    UnverifiedRecord,
    /// A request refused before it ran: the worker's memory budget (`memory_budget_bytes`) had no
    /// room for what the filter would hold for it.
    OverBudget,
    /// A covered gRPC call whose request body held more than one message (a client or
    /// bidirectional stream): passed through untouched, no key claimed.
    GrpcStreaming,
    /// A callout of the root context carrying streams' key-store calls gathered while others
    /// travelled (group commit, `keystore.batch_max_entries`); a batch of one included.
    KeystoreBatches,
    /// The calls those batches carried: over `keystore_batches`, the mean batch size.
    KeystoreBatchEntries,
}

impl Metric {
    pub const ALL: [Metric; 25] = [
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
        Metric::UnknownOutcome,
        Metric::UnknownOutcomeAnswered,
        Metric::RenewalRefused,
        Metric::DetachedExecuted,
        Metric::Waited,
        Metric::WaitReplayed,
        Metric::WaitTimedOut,
        Metric::UnverifiedRecord,
        Metric::OverBudget,
        Metric::GrpcStreaming,
        Metric::KeystoreBatches,
        Metric::KeystoreBatchEntries,
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
            Metric::UnknownOutcome => "idempotency.unknown_outcome",
            Metric::UnknownOutcomeAnswered => "idempotency.unknown_outcome_answered",
            Metric::RenewalRefused => "idempotency.renewal_refused",
            Metric::DetachedExecuted => "idempotency.detached_executed",
            Metric::Waited => "idempotency.waited",
            Metric::WaitReplayed => "idempotency.wait_replayed",
            Metric::WaitTimedOut => "idempotency.wait_timed_out",
            Metric::UnverifiedRecord => "idempotency.unverified_record",
            Metric::OverBudget => "idempotency.over_budget",
            Metric::GrpcStreaming => "idempotency.grpc_streaming",
            Metric::KeystoreBatches => "idempotency.keystore_batches",
            Metric::KeystoreBatchEntries => "idempotency.keystore_batch_entries",
        }
    }

    /// The counter of what enforce mode would have done, for rules in observe mode.
    pub fn observed_name(self) -> String {
        self.name()
            .replacen("idempotency.", "idempotency.observe.", 1)
    }

    pub fn index(self) -> usize {
        Metric::ALL.iter().position(|m| *m == self).unwrap_or(0)
    }
}
