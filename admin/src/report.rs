//! What a record key holds, in words for an operator (and as JSON): the key store's view, the
//! record opened with the filter's codec, and what a retry gets from the filter because of it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotency_filter::config::Secrets;
use idempotency_filter::record::{OpenError, Outcome, Record};
use idempotency_protocol::{EntryKind, RecordState};
use serde::Serialize;

use crate::target::{secret_label, SecretKey};

/// One record key's finding.
#[derive(Debug, Serialize)]
pub struct Finding {
    /// The secret the record key is derived under (0: the current one).
    pub secret: usize,
    pub record_key: String,
    #[serde(flatten)]
    pub state: StateView,
    /// What a retry of the request gets from the filter.
    pub retry: String,
    /// With `--body`: whether that request has the fingerprint the key holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_matches: Option<bool>,
}

/// The key store's state of the key, the record opened.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum StateView {
    Absent,
    InFlight {
        fingerprint: String,
        lease_left_ms: u64,
    },
    Completed {
        fingerprint: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        stored_at_ms: Option<u64>,
        expires_in_ms: u64,
        record: RecordView,
    },
    Expired {
        fingerprint: String,
        was: EntryKind,
        expired_ms_ago: u64,
    },
}

/// A completed record as the filter would read it.
#[derive(Debug, Serialize)]
#[serde(tag = "signature", rename_all = "snake_case")]
pub enum RecordView {
    /// The seal holds under configured secret `secret`.
    Verified {
        secret: usize,
        #[serde(flatten)]
        outcome: OutcomeView,
        created_ms: u64,
        expires_ms: u64,
    },
    /// Not sealed for this key under any configured secret: the filter never replays it.
    DoesNotVerify,
    /// The seal holds but the record does not decode.
    Malformed { error: String },
}

/// How the attempt of the key ended.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum OutcomeView {
    /// The answer is kept and replayed.
    Replayable { status: u16, body_bytes: usize },
    /// The answer was too large to keep.
    NotReplayable,
    /// No complete answer came back; retries wait until `hold_until_ms`, then get 410.
    Unknown { hold_until_ms: u64 },
}

/// The wall clock in Unix ms.
pub fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl Finding {
    /// Reads `state`, found under `key`, with the filter's codec and `secrets`.
    pub fn new(key: &SecretKey, state: RecordState, secrets: &Secrets, now_ms: u64) -> Finding {
        let state = match state {
            RecordState::Absent => StateView::Absent,
            RecordState::InFlight {
                fingerprint,
                lease_left_ms,
            } => StateView::InFlight {
                fingerprint: fingerprint.as_str().to_owned(),
                lease_left_ms,
            },
            RecordState::Expired {
                fingerprint,
                was,
                expired_ms_ago,
            } => StateView::Expired {
                fingerprint: fingerprint.as_str().to_owned(),
                was,
                expired_ms_ago,
            },
            RecordState::Completed {
                fingerprint,
                record,
                stored_at_ms,
                expires_in_ms,
            } => StateView::Completed {
                fingerprint: fingerprint.as_str().to_owned(),
                stored_at_ms,
                expires_in_ms,
                record: open(&record, key, secrets),
            },
        };
        let retry = retry(&state, now_ms);
        Finding {
            secret: key.index,
            record_key: key.key.hex(),
            state,
            retry,
            request_matches: None,
        }
    }

    /// One line: which record key, and what it holds.
    pub fn headline(&self) -> String {
        format!(
            "{}, record key {}: {}",
            secret_label(self.secret),
            self.record_key,
            self.state.summary()
        )
    }

    /// One line for `purge`: what was removed.
    pub fn purged(&self) -> String {
        let what = match self.state {
            StateView::Absent => "nothing to remove".to_owned(),
            _ => format!("removed: {}", self.state.summary()),
        };
        format!(
            "{}, record key {}: {what}",
            secret_label(self.secret),
            self.record_key
        )
    }

    /// The headline and the details, for `show`.
    pub fn lines(&self, now_ms: u64) -> Vec<String> {
        let mut out = vec![self.headline()];
        let mut add = |label: &str, text: String| out.push(format!("  {label:<14}{text}"));
        match &self.state {
            StateView::Absent => {}
            StateView::InFlight {
                fingerprint,
                lease_left_ms,
            } => {
                add("lease left", duration(*lease_left_ms));
                add("fingerprint", fingerprint.clone());
            }
            StateView::Expired {
                fingerprint,
                expired_ms_ago,
                ..
            } => {
                add("expired", format!("{} ago", duration(*expired_ms_ago)));
                add("fingerprint", fingerprint.clone());
            }
            StateView::Completed {
                fingerprint,
                stored_at_ms,
                expires_in_ms,
                record,
            } => {
                match record {
                    RecordView::Verified {
                        secret,
                        outcome,
                        created_ms,
                        ..
                    } => {
                        add(
                            "signature",
                            format!("verifies under {}", secret_label(*secret)),
                        );
                        add("outcome", outcome.describe(now_ms));
                        add(
                            "created",
                            format!(
                                "{} ({} ago)",
                                date(*created_ms),
                                duration(now_ms.saturating_sub(*created_ms))
                            ),
                        );
                    }
                    RecordView::DoesNotVerify => add(
                        "signature",
                        "does not verify under any configured secret".to_owned(),
                    ),
                    RecordView::Malformed { error } => add(
                        "signature",
                        format!("verifies, but the record is malformed: {error}"),
                    ),
                }
                if let Some(stored) = stored_at_ms {
                    add("stored", date(*stored));
                }
                add(
                    "expires",
                    format!(
                        "in {} ({})",
                        duration(*expires_in_ms),
                        date(now_ms.saturating_add(*expires_in_ms))
                    ),
                );
                add("fingerprint", fingerprint.clone());
            }
        }
        out.push(format!("  {:<14}{}", "a retry", self.retry));
        match self.request_matches {
            Some(true) => out.push(format!(
                "  {:<14}{}",
                "this request", "has the stored fingerprint: it is a retry of the first request"
            )),
            Some(false) => out.push(format!(
                "  {:<14}{}",
                "this request",
                "has another fingerprint (method, path and query, body or fingerprint headers differ): 422"
            )),
            None => {}
        }
        out
    }
}

impl StateView {
    /// The fingerprint the key holds, if it holds anything.
    pub fn fingerprint(&self) -> Option<&str> {
        match self {
            StateView::Absent => None,
            StateView::InFlight { fingerprint, .. }
            | StateView::Completed { fingerprint, .. }
            | StateView::Expired { fingerprint, .. } => Some(fingerprint),
        }
    }

    /// The state in a few words.
    pub fn summary(&self) -> String {
        match self {
            StateView::Absent => "absent (nothing stored)".to_owned(),
            StateView::InFlight { lease_left_ms, .. } => {
                format!("in flight (lease left {})", duration(*lease_left_ms))
            }
            StateView::Expired {
                was,
                expired_ms_ago,
                ..
            } => {
                let was = match was {
                    EntryKind::InFlight => "a claim in flight",
                    EntryKind::Completed => "a completed record",
                };
                format!("expired {} ago (was {was})", duration(*expired_ms_ago))
            }
            StateView::Completed { record, .. } => match record {
                RecordView::Verified {
                    outcome: OutcomeView::Replayable { status, .. },
                    ..
                } => format!("completed, status {status}, replayable"),
                RecordView::Verified {
                    outcome: OutcomeView::NotReplayable,
                    ..
                } => "completed, not replayable (the response was too large to keep)".to_owned(),
                RecordView::Verified {
                    outcome: OutcomeView::Unknown { .. },
                    ..
                } => "completed, outcome unknown".to_owned(),
                RecordView::DoesNotVerify => "completed, signature does not verify".to_owned(),
                RecordView::Malformed { .. } => "completed, malformed record".to_owned(),
            },
        }
    }
}

impl OutcomeView {
    fn describe(&self, now_ms: u64) -> String {
        match self {
            OutcomeView::Replayable { status, body_bytes } => {
                format!("replayable: status {status}, {body_bytes} body bytes")
            }
            OutcomeView::NotReplayable => {
                "not replayable: the response was over max_response_bytes".to_owned()
            }
            OutcomeView::Unknown { hold_until_ms } if *hold_until_ms > now_ms => format!(
                "unknown (no complete answer came back); held until {} (in {}), then 410",
                date(*hold_until_ms),
                duration(hold_until_ms - now_ms)
            ),
            OutcomeView::Unknown { hold_until_ms } => format!(
                "unknown (no complete answer came back); held until {} ({} ago), now 410",
                date(*hold_until_ms),
                duration(now_ms.saturating_sub(*hold_until_ms))
            ),
        }
    }
}

/// Opens a record as the filter does, saying which secret verifies it.
fn open(bytes: &[u8], key: &SecretKey, secrets: &Secrets) -> RecordView {
    match Record::open_with_secret(bytes, &key.key, secrets) {
        Ok((record, secret)) => RecordView::Verified {
            secret,
            outcome: match record.outcome {
                Outcome::Replayable(r) => OutcomeView::Replayable {
                    status: r.status,
                    body_bytes: r.body.len(),
                },
                Outcome::NotReplayable => OutcomeView::NotReplayable,
                Outcome::Unknown { hold_until_ms } => OutcomeView::Unknown { hold_until_ms },
            },
            created_ms: record.created_ms,
            expires_ms: record.expires_ms,
        },
        Err(OpenError::Unverified) => RecordView::DoesNotVerify,
        Err(OpenError::Malformed(error)) => RecordView::Malformed { error },
    }
}

/// What the filter answers a retry of the request, given what its key holds.
fn retry(state: &StateView, now_ms: u64) -> String {
    const OTHER: &str = "; with another payload, 422 (key reused)";
    match state {
        StateView::Absent
        | StateView::Expired {
            was: EntryKind::Completed,
            ..
        } => "runs as a first request (the upstream executes)".to_owned(),
        // A claim whose lease ran out without an answer: its holder may have forwarded the
        // request and died.
        StateView::Expired {
            was: EntryKind::InFlight,
            ..
        } => format!(
            "an abandoned claim (its gateway let the lease run out without an answer; the request may have executed): on a route with unknown_outcome: lock (the default), 409 with Retry-After for unknown_hold_ms after the lease ended, then 410 (outcome unknown); with unknown_outcome: release, it runs again (purge it to let the key run again){OTHER}"
        ),
        StateView::InFlight { .. } => format!(
            "409 (request in progress) while the first request runs, or waits for its answer on a route with in_flight: wait{OTHER}"
        ),
        StateView::Completed { record, .. } => match record {
            RecordView::Verified { outcome, .. } => match outcome {
                OutcomeView::Replayable { status, .. } => format!(
                    "gets the stored {status} replayed (Idempotent-Replayed: true), the upstream is not called{OTHER}"
                ),
                OutcomeView::NotReplayable => {
                    format!("410 (response not replayable), the upstream is not called{OTHER}")
                }
                OutcomeView::Unknown { hold_until_ms } if *hold_until_ms > now_ms => format!(
                    "409 with Retry-After until {}, then 410 (outcome unknown) for the retention{OTHER}",
                    date(*hold_until_ms)
                ),
                OutcomeView::Unknown { .. } => {
                    format!("410 (outcome unknown) for the retention{OTHER}")
                }
            },
            RecordView::DoesNotVerify | RecordView::Malformed { .. } => {
                "502 (record-unverifiable) on every route, counted as unverified_record: the filter never replays this record nor runs the request again (purge it to let it run)".to_owned()
            }
        },
    }
}

/// A Unix-ms time as an HTTP date (UTC).
pub fn date(ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A duration for people: `850 ms`, `12.3 s`, `3m12s`, `5h03m`, `2d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{}.{} s", s, (ms % 1000) / 100),
        60_000..=3_599_999 => format!("{}m{:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(192_000), "3m12s");
        assert_eq!(duration(5 * 3_600_000 + 3 * 60_000), "5h03m");
        assert_eq!(duration(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    }
}
