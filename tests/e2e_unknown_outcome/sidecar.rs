//! An inline route whose upstream is another proxy (a sidecar Envoy in front of the service):
//! when the service resets after doing the work, the sidecar answers `503` with Envoy's text
//! "upstream connect error or disconnect/reset before headers. reset reason: connection
//! termination". The gateway's router sees a plain `503` from its upstream (no response flags),
//! so the filter reads that text, as it reads a detached callout's answer: the outcome is
//! unknown, not the service's `5xx`, and a retry must not execute a second time.

use super::*;

/// The service, a sidecar Envoy without the filter in front of it, a key store, and a gateway
/// with the filter (`extra` merged into its settings) whose route goes to the sidecar.
async fn behind_a_sidecar(extra: Value) -> (Upstream, Envoy, KeystoreProcess, Envoy) {
    let (upstream, keystore) = tokio::join!(
        Upstream::start(),
        KeystoreProcess::start(StoreBackend::Memory, Some(TOKEN))
    );
    let sidecar = Envoy::start(&EnvoyOptions {
        plugin: None,
        ..EnvoyOptions::with_filter(upstream.port, String::new())
    })
    .await;
    let gateway = Envoy::start(
        &EnvoyOptions::with_filter(sidecar.port, plugin(extra)).keystore(keystore.port),
    )
    .await;
    (upstream, sidecar, keystore, gateway)
}

/// The first request: the service creates the payment, then resets; the sidecar writes the 503.
async fn reset_after_work(gateway: &Envoy, key: &str, body: &str) {
    let first = post_payment(&client(), gateway, "Bearer alice", Some(key), body)
        .header("x-demo-reset", "after-work")
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 503);
    let text = first.text().await.unwrap();
    assert!(
        text.ends_with("reset reason: connection termination"),
        "the sidecar's text: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecars_reset_text_locks_the_key_and_the_retry_does_not_execute() {
    let (upstream, _sidecar, _keystore, gateway) = behind_a_sidecar(json!({})).await;
    let (key, body) = (new_key(), r#"{"amount":120}"#);
    reset_after_work(&gateway, &key, body).await;
    settled(&upstream, 1).await;
    assert_eq!(gateway.counter("unknown_outcome").await, 1);
    assert_eq!(gateway.counter("released").await, 0);
    let http = client();
    let retry = send_payment(&http, &gateway, "Bearer alice", Some(&key), body).await;
    assert!(
        retry.status == 409 || retry.status == 410,
        "the retry must not execute: {}",
        retry.describe()
    );
    assert_eq!(upstream.post_requests().await, 1, "executions");
    assert_eq!(upstream.payment_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecars_reset_text_under_the_release_policy_frees_the_key() {
    let (upstream, _sidecar, _keystore, gateway) =
        behind_a_sidecar(json!({"unknown_outcome": "release"})).await;
    let (key, body) = (new_key(), r#"{"amount":121}"#);
    reset_after_work(&gateway, &key, body).await;
    settled(&upstream, 1).await;
    assert_eq!(gateway.counter("unknown_outcome").await, 1);
    assert_eq!(gateway.counter("released").await, 1);
    let http = client();
    let retry = send_payment(&http, &gateway, "Bearer alice", Some(&key), body).await;
    assert_eq!(retry.status, 201, "{}", retry.describe());
    assert_eq!(
        upstream.payment_count().await,
        2,
        "the policy lets it run again"
    );
}
