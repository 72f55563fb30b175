//! Fidelity: is the filter invisible where it does not answer a duplicate? Five gateways side by
//! side (no filter, filter inline, filter detached, filter inline with routed replays, filter
//! detached with routed replays; `gateways`), each in front of its own raw
//! recording upstream (`recorder`), get the same request bytes for every row of `rows`. The
//! suite compares, after one normalisation applied to all of them (`compare`), what the client got
//! (interim statuses, status, header fields with their order and repeats, body, trailers,
//! framing, and for streams when each event arrived) and what the upstream got (request line,
//! fields, body, trailers), then sends every row again to the filter gateways and compares the
//! replay with that gateway's first answer.
//!
//! Every (row, path) pair either is exact or is listed, once, in `known::KNOWN` with the
//! differences it shows and why. The test fails when an exact pair differs and when a listed
//! pair no longer differs exactly that way, so a fix has to update the table (and
//! docs/fidelity.md, which is the same table in prose). `--nocapture` prints a `FIDELITY|` line
//! per pair.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod compare;
mod expect;
mod gateways;
mod known;
mod recorder;
mod rows;
mod streaming;
#[path = "../support/mod.rs"]
mod support;
mod wire;

use std::collections::{BTreeSet, HashMap};

use gateways::{Gateway, Kind};
use recorder::Recorded;
use rows::{Row, Send};
use wire::{h2_exchange, Answer, H1};

/// What one send of a row gave: the answers at the client and the requests at the upstream.
struct Seen {
    answers: Vec<Answer>,
    upstream: Vec<Recorded>,
}

async fn send(gateway: &Gateway, row: &Row) -> Seen {
    let port = if row.proxied_100 {
        gateway.proxied_100_port
    } else {
        gateway.envoy.port
    };
    let answers = match &row.send {
        Send::H1 { bytes, answers } => {
            let mut conn = H1::connect(port).await;
            conn.write(bytes).await;
            let mut got = Vec::new();
            for _ in 0..*answers {
                got.push(conn.answer(false).await);
            }
            got
        }
        Send::H1Expect { head, body } => {
            let mut conn = H1::connect(port).await;
            conn.write(head).await;
            // A client that waits for `100 Continue` a while (curl: 1 s) before sending anyway.
            let interim = conn
                .interim_within(std::time::Duration::from_millis(1000))
                .await;
            conn.write(body).await;
            let mut answer = conn.answer(false).await;
            if !interim {
                answer.interim.insert(0, 0); // marks "no interim before the body was sent"
            }
            vec![answer]
        }
        Send::H2 {
            method,
            headers,
            body,
            trailers,
        } => {
            let headers: Vec<(&str, &[u8])> =
                headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            vec![h2_exchange(port, method, &row.path(), &headers, body, trailers).await]
        }
    };
    // The upstream has finished reading whatever it got before the client had its answer.
    Seen {
        answers,
        upstream: gateway.upstream.take(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_is_invisible_except_where_listed() {
    let rows = rows::rows();
    let scripts: HashMap<_, _> = rows
        .iter()
        .map(|row| (row.path(), row.script.clone()))
        .collect();
    let gateways = gateways::start(&scripts).await;
    let mut failures = Vec::new();
    let mut listed = BTreeSet::new();
    for row in &rows {
        let baseline = send(&gateways[0], row).await;
        for gateway in &gateways[1..] {
            let first = send(gateway, row).await;
            let replay = send(gateway, row).await;
            let name = match gateway.kind {
                Kind::Inline => "inline",
                Kind::Detached => "detached",
                Kind::Routed => "routed",
                Kind::DetachedRouted => "detached-routed",
                Kind::None => unreachable!("the baseline is not compared with itself"),
            };
            let first_diff = compare::diff(&baseline, &first, row.timed, false);
            let replay_diff = compare::diff(&first, &replay, false, true);
            for (path, diff) in [
                (name.to_owned(), first_diff),
                (format!("{name}-replay"), replay_diff),
            ] {
                if known::listed(row.name, &path) {
                    listed.insert((row.name, path.clone()));
                }
                let expected = known::expected(row.name, &path);
                let status = if diff == expected { "ok" } else { "FAIL" };
                println!(
                    "FIDELITY|{}|{}|{}|{:?}",
                    row.name,
                    path,
                    status,
                    diff.iter().collect::<Vec<_>>()
                );
                if diff != expected {
                    failures.push(format!(
                        "{} via {path}: differs by {diff:?}, the table says {expected:?} ({:?})",
                        row.name,
                        known::reasons(row.name, &path)
                    ));
                }
            }
            if std::env::var_os("FIDELITY_DUMP").is_some() {
                eprintln!(
                    "--- {} {name}\nbaseline {:#?}\nfirst {:#?}\nreplay {:#?}",
                    row.name,
                    compare::Printable(&baseline),
                    compare::Printable(&first),
                    compare::Printable(&replay)
                );
            }
        }
    }
    for entry in known::KNOWN.iter().filter(|k| k.row != "*") {
        assert!(
            listed.contains(&(entry.row, entry.path.to_owned())),
            "the table lists {} via {}, which no row ran",
            entry.row,
            entry.path
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
