//! Callers and the key store's token: the same key from two callers never shares a record across
//! gateways, and a filter without the key store's bearer token is refused.

use super::*;

#[tokio::test]
async fn same_key_from_two_callers_never_shares_a_record_across_gateways() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin(None)).keystore(keystore.port);
    let (a, b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let key = new_key();
    let body = r#"{"amount":42}"#;

    let alice = send_payment(&http, &a, "Bearer alice", Some(&key), body).await;
    assert_eq!(alice.status, 201, "{}", alice.describe());
    // Bob, same key and body, on the other gateway: his own execution, never Alice's answer.
    let bob = send_payment(&http, &b, "Bearer bob", Some(&key), body).await;
    assert_eq!(bob.status, 201, "{}", bob.describe());
    assert!(!bob.replayed(), "bob got a replay: {}", bob.describe());
    assert_ne!(id(&alice), id(&bob), "bob got alice's payment");
    // Each replays only their own, on either gateway.
    for gateway in [&a, &b] {
        let again = send_payment(&http, gateway, "Bearer alice", Some(&key), body).await;
        assert_replay(&alice, &again);
        let again = send_payment(&http, gateway, "Bearer bob", Some(&key), body).await;
        assert_replay(&bob, &again);
    }
    // A third caller who never made the request, trying both gateways: executes its own once.
    let carol = send_payment(&http, &b, "Bearer carol", Some(&key), body).await;
    assert_eq!(carol.status, 201, "{}", carol.describe());
    assert!(!carol.replayed());
    let carol_on_a = send_payment(&http, &a, "Bearer carol", Some(&key), body).await;
    assert_replay(&carol, &carol_on_a);
    // No caller at all, and no anonymous scope named: refused, on both gateways.
    for gateway in [&a, &b] {
        let anonymous = send(
            http.post(gateway.url("/payments"))
                .header("content-type", "application/json")
                .header("idempotency-key", &key)
                .body(body),
        )
        .await;
        assert_problem(&anonymous, 401);
    }
    // Callers that differ only in case or whitespace are other callers (the value is hashed as is).
    let alice_upper = send_payment(&http, &b, "Bearer ALICE", Some(&key), body).await;
    assert_eq!(alice_upper.status, 201, "{}", alice_upper.describe());
    assert!(!alice_upper.replayed());

    // Claims are per caller too: while Dave's request is in flight, Erin's runs (no 409).
    let shared = new_key();
    let dave = tokio::spawn(send(
        post_payment(&http, &a, "Bearer dave", Some(&shared), body)
            .header("x-demo-delay-ms", "800"),
    ));
    upstream.wait_post_requests(5).await;
    let erin = send_payment(&http, &b, "Bearer erin", Some(&shared), body).await;
    assert_eq!(erin.status, 201, "{}", erin.describe());
    let dave = dave.await.unwrap();
    assert_eq!(dave.status, 201, "{}", dave.describe());
    assert_ne!(id(&dave), id(&erin));

    let ids: HashSet<String> = [&alice, &bob, &carol, &alice_upper, &dave, &erin]
        .iter()
        .map(|r| id(r).to_string())
        .collect();
    assert_eq!(ids.len(), 6, "every caller got its own payment");
    assert_eq!(upstream.post_requests().await, 6);
}

#[tokio::test]
async fn key_store_requires_its_bearer_token() {
    const TOKEN: &str = "ks-token-5d1f0a";
    let upstream = Upstream::start().await;
    let keystore = Keystore::start_backend("memory", &["--token", TOKEN]).await;

    // Straight at the key store: no token or a wrong one gets 401; the right one works.
    let claim = json!({"key": "ab".repeat(32), "fingerprint": "cd".repeat(32), "lease_ms": 1000});
    let url = format!("http://127.0.0.1:{}/v1/claim", keystore.port);
    let http = client();
    for auth in [None, Some("Bearer wrong"), Some(TOKEN), Some("bearer")] {
        let mut req = http.post(&url).json(&claim);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        assert_eq!(send(req).await.status, 401, "authorization {auth:?}");
    }
    let ok = send(
        http.post(&url)
            .json(&claim)
            .header("authorization", format!("Bearer {TOKEN}")),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.describe());

    let without = EnvoyOptions::with_filter(upstream.port, plugin(None)).keystore(keystore.port);
    let with =
        EnvoyOptions::with_filter(upstream.port, plugin(Some(TOKEN))).keystore(keystore.port);
    let (mut without, mut with) = tokio::join!(Envoy::start(&without), Envoy::start(&with));
    let key = new_key();
    let body = r#"{"amount":7}"#;

    let refused = send_payment(&http, &without, "alice", Some(&key), body).await;
    assert_problem(&refused, 503);
    assert_eq!(upstream.post_requests().await, 0);
    assert_eq!(metric(&without, "store_error").await, 1);
    assert!(
        without
            .wait_for_log("key store answered 401", Duration::from_secs(5))
            .await,
        "no 401 in the log: {}",
        without.log_tail(20)
    );

    let first = send_payment(&http, &with, "alice", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send_payment(&http, &with, "alice", Some(&key), body).await,
    );
    // The tokenless filter still cannot read the record.
    assert_problem(
        &send_payment(&http, &without, "alice", Some(&key), body).await,
        503,
    );
    assert_eq!(upstream.post_requests().await, 1);
    assert_eq!(metric(&with, "store_error").await, 0);

    assert_envoy_healthy(&mut without, "without token").await;
    assert_envoy_healthy(&mut with, "with token").await;
    for (name, log) in [
        ("envoy (no token)", without.full_log()),
        ("envoy (token)", with.full_log()),
        ("key store", keystore.log()),
    ] {
        assert!(!log.contains(TOKEN), "{name} logged the key-store token");
    }
}
