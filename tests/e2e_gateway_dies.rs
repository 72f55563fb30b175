//! A gateway that dies (SIGKILL) while its request is at the upstream: the request may have
//! executed, and no gateway knows. Two real Envoys share a real key store (memory), in front of an
//! upstream that takes 4 s and, as real servers do, finishes its work when its caller goes away.
//! Under the default `unknown_outcome: "lock"`, the claim the dead gateway held is abandoned when
//! its lease (2 s) runs out, and a retry through the other gateway gets what a stored "outcome
//! unknown" record gets: 409 with `Retry-After` for `unknown_hold_ms` after the lease ended, then
//! the terminal 410; the upstream executed once. Inline and detached routes alike. And a holder
//! that was only cut off from the key store (not dead) still lands its record late: retries then
//! replay the real answer (README, "When a gateway dies").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::mesh::{Mesh, MeshOptions};
use support::*;

const TOKEN: &str = "gateway-dies-e2e-token";
const LEASE_MS: u64 = 2000;
const HOLD_MS: u64 = 3000;
/// How long the upstream works on the request.
const WORK_MS: u64 = 4000;

/// The demo's route, inline or detached, on a 2 s lease and a hold of `hold_ms`.
fn plugin(detached: bool, hold_ms: u64) -> String {
    let mut rule = json!({"exact": "/payments", "methods": ["POST"], "required": true});
    if detached {
        rule = merged(
            rule,
            &json!({"execution": "detached", "upstream_cluster": "payments", "upstream_timeout_ms": 10_000}),
        );
    }
    Plugin::signed("gateway-dies-e2e-secret-0123456789abcdef0123456789abcdef")
        .set("routes", json!([rule]))
        .set("lock_lease_ms", LEASE_MS)
        .set("unknown_hold_ms", hold_ms)
        .keystore(1000, Some(TOKEN))
        .json()
}

async fn mesh(detached: bool, hold_ms: u64, link: bool) -> Mesh {
    Mesh::start(
        &plugin(detached, hold_ms),
        MeshOptions {
            token: Some(TOKEN.into()),
            a_keystore_delay: link.then_some(Duration::ZERO),
            ..MeshOptions::default()
        },
    )
    .await
}

/// Starts the first attempt through gateway A (the upstream works 4 s on it) and waits until the
/// upstream has it.
async fn first_attempt(
    mesh: &Mesh,
    key: &str,
    body: &str,
) -> tokio::task::JoinHandle<Result<reqwest::Response, reqwest::Error>> {
    let request = post_payment(&client(), &mesh.a, "Bearer alice", Some(key), body)
        .header("x-demo-delay-ms", WORK_MS.to_string());
    let first = tokio::spawn(request.send());
    mesh.upstream.wait_post_requests(1).await;
    first
}

/// The seconds of a 409's `Retry-After` (asserted present and a number).
fn retry_after(resp: &Resp) -> u64 {
    assert_problem(resp, 409);
    resp.header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a 409 without Retry-After: {}", resp.describe()))
}

async fn gateway_killed_mid_request(detached: bool) {
    let mut mesh = mesh(detached, HOLD_MS, false).await;
    let http = client();
    let (key, body) = (new_key(), r#"{"amount":221}"#);
    let started = Instant::now();
    let first = first_attempt(&mesh, &key, body).await;
    tokio::time::sleep(Duration::from_millis(1000).saturating_sub(started.elapsed())).await;
    mesh.a.sigkill();
    assert!(
        first.await.unwrap().is_err(),
        "the client of the killed gateway gets no answer"
    );

    // Retry through B until the terminal answer: 409s (with Retry-After) and nothing else first.
    let (mut conflicts, mut after_the_lease) = (0, 0);
    let terminal = loop {
        let resp = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
        let at = started.elapsed();
        if resp.status != 409 {
            break (resp, at);
        }
        let wait_s = retry_after(&resp);
        conflicts += 1;
        // The lease (renewed until the kill, 1 s in) has surely ended 3.1 s in: the key is
        // abandoned, and held for what is left of the 3 s hold.
        if at > Duration::from_millis(3100) {
            after_the_lease += 1;
            assert!((1..=3).contains(&wait_s), "{wait_s}: {}", resp.describe());
        }
        assert!(at < Duration::from_secs(20), "no terminal answer in 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (resp, at) = terminal;
    let problem = assert_problem(&resp, 410);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("outcome-unknown")),
        "{problem}"
    );
    // Not before the lease (at least 2 s after the claim) and the hold after it.
    assert!(
        at >= Duration::from_millis(LEASE_MS + HOLD_MS),
        "410 after {at:?}, before lease + hold"
    );
    assert!(
        after_the_lease >= 2,
        "{conflicts} conflicts, {after_the_lease} after the lease"
    );
    assert_eq!(mesh.b.counter("unknown_outcome_answered").await, 1);

    // The upstream finished the killed attempt's work, and nothing ran it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while mesh.upstream.payment_count().await < 1 {
        assert!(Instant::now() < deadline, "the upstream never finished");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
    assert_problem(&again, 410);
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");
    assert_eq!(mesh.b.counter("executed").await, 0);
    eprintln!(
        "{} killed: {conflicts} x 409 ({after_the_lease} after the lease), 410 after {at:?}",
        if detached { "detached" } else { "inline" }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_gateway_killed_mid_request_its_key_is_held_then_outcome_unknown() {
    gateway_killed_mid_request(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_gateway_killed_mid_request_its_key_is_held_then_outcome_unknown() {
    gateway_killed_mid_request(true).await;
}

async fn holder_cut_off_lands_its_answer_late(detached: bool) {
    // A hold long enough that the late record lands before the terminal answer would.
    let mesh = mesh(detached, 20_000, true).await;
    let link = mesh.link.as_ref().unwrap();
    let http = client();
    let (key, body) = (new_key(), r#"{"amount":222}"#);
    let started = Instant::now();
    let first = first_attempt(&mesh, &key, body).await;
    // A cannot reach the key store any more: its renewals fail, the lease runs out.
    link.cut(true);
    let first = first.await.unwrap().unwrap();
    let first = Resp {
        status: first.status().as_u16(),
        headers: first.headers().clone(),
        body: first.bytes().await.unwrap(),
    };
    assert_eq!(first.status, 201, "{}", first.describe());
    assert!(started.elapsed() > Duration::from_millis(WORK_MS));
    // Cut off for longer than a lease after the record was made, so that the record lands only
    // if A keeps retrying past the lease. Meanwhile B finds the key abandoned (409).
    tokio::time::sleep(Duration::from_millis(LEASE_MS + 1000)).await;
    let held = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
    assert!(retry_after(&held) > 5, "{}", held.describe());
    // A reaches the key store again: its root context's retry of the record lands, late.
    link.cut(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    let replay = loop {
        let resp = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
        if resp.status != 409 {
            break resp;
        }
        assert!(Instant::now() < deadline, "the late record never landed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_replay(&first, &replay);
    let replay_on_a = send_payment(&http, &mesh.a, "Bearer alice", Some(&key), body).await;
    assert_replay(&first, &replay_on_a);
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
    assert_eq!(mesh.b.counter("unknown_outcome_answered").await, 0);
    eprintln!(
        "{} cut off: the late record replayed {:?} in",
        if detached { "detached" } else { "inline" },
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_holder_cut_off_from_the_key_store_lands_its_record_late_and_retries_replay_it() {
    holder_cut_off_lands_its_answer_late(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detached_holder_cut_off_from_the_key_store_lands_its_record_late_and_retries_replay_it() {
    holder_cut_off_lands_its_answer_late(true).await;
}
