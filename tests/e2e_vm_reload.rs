//! A VM that fails comes back: the filter built with the test-only `fault-injection` feature (a
//! request carrying `x-idempotency-fault-trap` makes the VM trap) runs on a real Envoy with one
//! worker and `failure_policy: FAIL_RELOAD`, 1 s backoff, as the shipped configs. After the trap,
//! Envoy answers 503 until it reloads the VM on a later request (at most once per backoff), then
//! serves again: a new key executes (201), `wasm.idempotency.vm_reload_success` went up by one,
//! and a key completed before the trap still replays, because the near cache (L1) is Envoy's
//! shared data, which outlives the VM (README "Memory, and a VM that fails").

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::time::{Duration, Instant};

use support::process::POLL;
use support::*;

const SECRET: &str = "vm-reload-e2e-secret-0123456789abcdef0123456789abcdef";
const BODY: &str = r#"{"amount":7}"#;
/// Envoy's backoff is 1 s (jittered up to 1.5 s): the recovery must come well within this.
const RECOVERY_BOUND: Duration = Duration::from_secs(15);

/// Envoy's counter of VM reloads that succeeded for the plugin named `idempotency`.
async fn reloads(envoy: &Envoy) -> u64 {
    envoy
        .stats_matching("vm_reload_success")
        .await
        .get("wasm.idempotency.vm_reload_success")
        .copied()
        .unwrap_or_else(|| panic!("no wasm.idempotency.vm_reload_success in Envoy's stats"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapped_vm_is_reloaded_and_keeps_the_near_cache() {
    let wasm = fault_injection_wasm();
    let upstream = Upstream::start().await;
    let config = Plugin::payments(SECRET)
        .caller_header("authorization")
        .json();
    let options = EnvoyOptions::with_filter(upstream.port, config)
        .workers(1)
        .fail_reload()
        .wasm(wasm);
    let envoy = Envoy::start(&options).await;
    let http = client();

    // A key completed before the failure: executed once, replayed from L1.
    let done_key = new_key();
    let original = send_payment(&http, &envoy, "Bearer a", Some(&done_key), BODY).await;
    assert_eq!(original.status, 201, "{}", original.describe());
    let replay = send_payment(&http, &envoy, "Bearer a", Some(&done_key), BODY).await;
    assert_replay(&original, &replay);
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(reloads(&envoy).await, 0, "no reload before the trap");

    // The trap: the VM fails in proxy_on_request_headers; Envoy answers that request itself.
    let trapped = send(
        post_payment(&http, &envoy, "Bearer a", Some(&new_key()), BODY)
            .header("x-idempotency-fault-trap", "1"),
    )
    .await;
    assert_eq!(
        trapped.status,
        503,
        "the trapping request: {}",
        trapped.describe()
    );
    assert_eq!(
        upstream.post_requests().await,
        1,
        "the trapping request never ran"
    );
    assert!(
        envoy
            .wait_for_log("RuntimeError: unreachable", Duration::from_secs(10))
            .await,
        "no VM trap in Envoy's log:\n{}",
        envoy.log_tail(40)
    );

    // Until the backoff has passed Envoy answers 503 without the filter (the VM is failed); the
    // first request after it reloads the VM and is served. One key throughout: a 503 from the
    // failed VM never reached the filter, so the key is still unused.
    let started = Instant::now();
    let fresh_key = new_key();
    let mut refused = 0u32;
    let created = loop {
        let resp = send_payment(&http, &envoy, "Bearer a", Some(&fresh_key), BODY).await;
        match resp.status {
            201 => break resp,
            503 => refused += 1,
            _ => panic!("while the VM is failed: {}", resp.describe()),
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "no 201 within {RECOVERY_BOUND:?} of the trap ({refused} answers 503); log:\n{}",
            envoy.log_tail(40)
        );
        // A paced poll of the condition itself (the reload happens on a request), not a wait.
        tokio::time::sleep(POLL).await;
    };
    let recovered_in = started.elapsed();
    assert!(!created.replayed(), "{}", created.describe());
    assert_eq!(
        upstream.post_requests().await,
        2,
        "the new key executed once"
    );
    assert_eq!(reloads(&envoy).await, 1, "Envoy reloaded the VM once");

    // L1 outlived the VM: the key completed before the trap replays, without the upstream.
    let after = send_payment(&http, &envoy, "Bearer a", Some(&done_key), BODY).await;
    assert_replay(&original, &after);
    assert_eq!(
        upstream.post_requests().await,
        2,
        "the replay did not run upstream"
    );
    println!(
        "VM_RELOAD|trap in proxy_on_request_headers, FAIL_RELOAD 1 s|201 again after {:.2} s ({refused}× 503 before)|vm_reload_success 1; a key completed before the trap replayed from L1|",
        recovered_in.as_secs_f64()
    );
}
