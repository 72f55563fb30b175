//! The normalisation (one, for every gateway) and the comparison of two sends, as a set of
//! difference tokens:
//! - client side: `status`, `interim` (the `1xx` before the answer), `+name` (a field only the
//!   compared side has), `-name` (only the reference has), `~name` (same fields, another value),
//!   `order` (the fields both sides have, in another order), `body`, `trailers`, `framing`
//!   (content-length, chunked, close), `timing` (a body part came more than [`LATE`] after the
//!   reference's), `answers` (another number of answers);
//! - upstream side: the same with an `up:` prefix, plus `up:line` (request line) and `up:count`
//!   (another number of requests reached the upstream), `up:cut` (a request ended before its body did).
//!
//! Normalised, because Envoy sets them per request whatever the filter does: the values (not the
//! presence, nor the position) of `date` and `x-envoy-upstream-service-time` at the client and of
//! `x-request-id` at the upstream. A replay is compared with its gateway's first answer without
//! its `idempotent-replayed` field, the filter's documented mark.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use crate::recorder::Recorded;
use crate::wire::{Answer, Fields};
use crate::Seen;

/// How much later than the reference a body part may arrive before it counts as `timing`.
pub const LATE: Duration = Duration::from_millis(50);

fn normalise(fields: &Fields, drop_replay_mark: bool) -> Fields {
    fields
        .iter()
        .filter(|(name, _)| !(drop_replay_mark && name == b"idempotent-replayed"))
        .map(|(name, value)| {
            let value = match name.as_slice() {
                b"date" => b"<date>".to_vec(),
                b"x-envoy-upstream-service-time" => b"<ms>".to_vec(),
                b"x-request-id" => b"<id>".to_vec(),
                _ => value.clone(),
            };
            (name.clone(), value)
        })
        .collect()
}

fn diff_fields(prefix: &str, reference: &Fields, other: &Fields, out: &mut BTreeSet<String>) {
    let names = |f: &Fields| -> Vec<Vec<u8>> { f.iter().map(|(n, _)| n.clone()).collect() };
    let (ref_names, other_names) = (names(reference), names(other));
    let mut field_diff = false;
    for name in &other_names {
        if !ref_names.contains(name) {
            out.insert(format!("{prefix}+{}", String::from_utf8_lossy(name)));
            field_diff = true;
        }
    }
    for name in &ref_names {
        if !other_names.contains(name) {
            out.insert(format!("{prefix}-{}", String::from_utf8_lossy(name)));
            field_diff = true;
        }
    }
    let values = |f: &Fields, name: &[u8]| -> Vec<Vec<u8>> {
        f.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    for name in &ref_names {
        if other_names.contains(name) && values(reference, name) != values(other, name) {
            out.insert(format!("{prefix}~{}", String::from_utf8_lossy(name)));
            field_diff = true;
        }
    }
    // The order of the fields both sides have, so that a missing or added field does not hide
    // a move.
    let common = |a: &Fields, b: &[Vec<u8>]| -> Vec<Vec<u8>> {
        a.iter()
            .filter(|(n, _)| b.contains(n))
            .map(|(n, _)| n.clone())
            .collect()
    };
    if !field_diff && reference != other
        || common(reference, &other_names) != common(other, &ref_names)
    {
        out.insert(format!("{prefix}order"));
    }
}

fn diff_answer(reference: &Answer, other: &Answer, timed: bool, replay: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if reference.interim != other.interim {
        out.insert("interim".to_owned());
    }
    if reference.status != other.status {
        out.insert("status".to_owned());
    }
    diff_fields(
        "",
        &normalise(&reference.headers, false),
        &normalise(&other.headers, replay),
        &mut out,
    );
    if reference.body != other.body {
        out.insert("body".to_owned());
    }
    if reference.trailers != other.trailers {
        out.insert("trailers".to_owned());
    }
    if reference.framing != other.framing {
        out.insert("framing".to_owned());
    }
    if timed {
        for (at, len) in &reference.arrivals {
            if *len == 0 {
                continue;
            }
            let theirs = other.arrival_of(*len).unwrap_or(Duration::MAX);
            if theirs > *at + LATE {
                out.insert("timing".to_owned());
            }
        }
    }
    out
}

fn diff_recorded(reference: &Recorded, other: &Recorded, out: &mut BTreeSet<String>) {
    if reference.line != other.line {
        out.insert("up:line".to_owned());
    }
    diff_fields(
        "up:",
        &normalise(&reference.headers, false),
        &normalise(&other.headers, false),
        out,
    );
    if reference.body != other.body {
        out.insert("up:body".to_owned());
    }
    if reference.trailers != other.trailers {
        out.insert("up:trailers".to_owned());
    }
    if reference.complete != other.complete {
        out.insert("up:cut".to_owned());
    }
}

/// The differences of `other` from `reference`. `timed`: compare arrival times; `replay`:
/// `other` is a replay of `reference` (its mark is dropped; the upstream must see nothing).
pub fn diff(reference: &Seen, other: &Seen, timed: bool, replay: bool) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if reference.answers.len() != other.answers.len() {
        out.insert("answers".to_owned());
    }
    for (a, b) in reference.answers.iter().zip(&other.answers) {
        out.extend(diff_answer(a, b, timed, replay));
    }
    if replay {
        if !other.upstream.is_empty() {
            out.insert("up:count".to_owned());
        }
        return out;
    }
    if reference.upstream.len() != other.upstream.len() {
        out.insert("up:count".to_owned());
    }
    for (a, b) in reference.upstream.iter().zip(&other.upstream) {
        diff_recorded(a, b, &mut out);
    }
    out
}

/// A send, printed with its fields as text (for `FIDELITY_DUMP=1`).
pub struct Printable<'a>(pub &'a Seen);

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let fields = |fs: &Fields| -> Vec<String> {
            fs.iter()
                .map(|(n, v)| format!("{}: {}", text(n), text(v)))
                .collect()
        };
        for answer in &self.0.answers {
            writeln!(
                f,
                "client {:?} {} {:?} body {:?} trailers {:?} {} arrivals {:?}",
                answer.interim,
                answer.status,
                fields(&answer.headers),
                text(&answer.body),
                fields(&answer.trailers),
                answer.framing,
                answer.arrivals
            )?;
        }
        for seen in &self.0.upstream {
            writeln!(
                f,
                "upstream {}{} {:?} body {:?} trailers {:?}",
                if seen.complete { "" } else { "(cut) " },
                text(&seen.line),
                fields(&seen.headers),
                text(&seen.body),
                fields(&seen.trailers)
            )?;
        }
        Ok(())
    }
}
