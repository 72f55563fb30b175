//! One gateway's request whose outcome is unknown: the client or the route times out, the upstream
//! resets or cuts its answer, or was never reached.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_then_retries_get_409_then_outcome_unknown_and_it_runs_once() {
    let mesh = mesh(plugin(json!({}))).await;
    let (key, body) = (new_key(), r#"{"amount":100}"#);
    abandon_payment(
        &mesh.a,
        "Bearer alice",
        &key,
        body,
        2500,
        Duration::from_secs(1),
    )
    .await;
    let conflicts = retries_until_outcome_unknown(&mesh, &key, body).await;
    assert!(
        conflicts >= 2,
        "retries during the hold get 409 ({conflicts})"
    );
    settled(&mesh.upstream, 1).await;
    assert_eq!(mesh.upstream.post_requests().await, 1, "executions");
    assert_eq!(mesh.upstream.payment_count().await, 1);
    assert_eq!(mesh.a.counter("unknown_outcome").await, 1);
    assert!(
        mesh.a.counter("unknown_outcome_answered").await
            + mesh.b.counter("unknown_outcome_answered").await
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_under_the_release_policy_executes_again() {
    // At least once, as documented for `unknown_outcome: "release"`.
    let mesh = mesh(plugin(json!({"unknown_outcome": "release"}))).await;
    let (key, body) = (new_key(), r#"{"amount":101}"#);
    abandon_payment(
        &mesh.a,
        "Bearer alice",
        &key,
        body,
        1500,
        Duration::from_millis(500),
    )
    .await;
    let http = client();
    let (again, _) = until_201(Duration::from_secs(10), || {
        send(post_payment(
            &http,
            &mesh.b,
            "Bearer alice",
            Some(&key),
            body,
        ))
    })
    .await;
    assert!(!again.replayed(), "{}", again.describe());
    settled(&mesh.upstream, 2).await;
    assert_eq!(
        mesh.upstream.payment_count().await,
        2,
        "released: executed twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_504_then_retries_and_it_runs_once() {
    let mesh = Mesh::start(
        &plugin(json!({})),
        MeshOptions {
            route_timeout: Some(Duration::from_secs(1)),
            ..options()
        },
    )
    .await;
    let (key, body) = (new_key(), r#"{"amount":102}"#);
    let http = client();
    let first = send(
        post_payment(&http, &mesh.a, "Bearer alice", Some(&key), body)
            .header("x-demo-delay-ms", "2500"),
    )
    .await;
    assert_eq!(
        first.status,
        504,
        "Envoy's route timeout: {}",
        first.describe()
    );
    retries_until_outcome_unknown(&mesh, &key, body).await;
    settled(&mesh.upstream, 1).await;
    assert_eq!(mesh.upstream.post_requests().await, 1);
    assert_eq!(mesh.upstream.payment_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_or_cut_body_after_the_work_runs_once() {
    let mesh = mesh(plugin(json!({}))).await;
    let http = client();
    for (n, (knob, value)) in [("x-demo-reset", "after-work"), ("x-demo-body-cut", "5")]
        .into_iter()
        .enumerate()
    {
        let (key, body) = (new_key(), format!(r#"{{"amount":{}}}"#, 103 + n));
        let first = post_payment(&http, &mesh.a, "Bearer alice", Some(&key), &body)
            .header(knob, value)
            .send()
            .await;
        match first {
            // A reset before the response: Envoy answers for the upstream.
            Ok(resp) if knob == "x-demo-reset" => {
                assert!(resp.status().is_server_error(), "{knob}: {}", resp.status())
            }
            // A cut body: the head arrived, the body fails.
            Ok(resp) => assert!(
                resp.bytes().await.is_err(),
                "{knob}: the body should be cut"
            ),
            Err(_) => {}
        }
        retries_until_outcome_unknown(&mesh, &key, &body).await;
        assert_eq!(mesh.upstream.post_requests().await, n as u64 + 1, "{knob}");
        assert_eq!(mesh.upstream.payment_count().await, n as u64 + 1, "{knob}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_never_reached_is_released_and_the_retry_runs_once() {
    let port = closed_port();
    let keystore = KeystoreProcess::start(StoreBackend::Memory, Some(TOKEN)).await;
    let options = EnvoyOptions::with_filter(port, plugin(json!({}))).keystore(keystore.port);
    let envoy = Envoy::start(&options).await;
    let (key, body) = (new_key(), r#"{"amount":110}"#);
    let http = client();
    let refused = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    assert_eq!(
        refused.status,
        503,
        "connection refused: {}",
        refused.describe()
    );
    assert_eq!(envoy.counter("released").await, 1);
    assert_eq!(envoy.counter("unknown_outcome").await, 0);
    // The upstream comes up where the gateway points: the retry executes, once.
    let upstream = Upstream::start_at(port).await;
    let done = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    assert_eq!(done.status, 201, "{}", done.describe());
    assert!(!done.replayed());
    let replay = send_payment(&http, &envoy, "Bearer alice", Some(&key), body).await;
    assert_replay(&done, &replay);
    assert_eq!(upstream.payment_count().await, 1);
}
