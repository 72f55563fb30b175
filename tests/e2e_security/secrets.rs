//! Secrets from the Wasm VM's environment, and a rotation: records of the previous secret still
//! replay.

use super::*;

#[tokio::test]
async fn secrets_come_from_the_wasm_vm_environment() {
    let upstream = Upstream::start().await;
    let ks = keystore().await;
    let env_secret = "secret-from-the-vm-environment-0123456789";
    let from_env = plugin(json!({
        "hmac_secret": {"env": "IDEMPOTENCY_HMAC_SECRET"},
        "keystore": {"cluster": "keystore", "timeout_ms": 1000, "token": {"env": "IDEMPOTENCY_KEYSTORE_TOKEN"}},
    }));
    let options = EnvoyOptions::with_filter(upstream.port, from_env.clone())
        .keystore(ks.port)
        .vm_env("IDEMPOTENCY_HMAC_SECRET", env_secret)
        .vm_env("IDEMPOTENCY_KEYSTORE_TOKEN", TOKEN);
    // The same secret inline: it finds what the first one stored, so the VM's value was used.
    let inline =
        EnvoyOptions::with_filter(upstream.port, plugin(json!({"hmac_secret": env_secret})))
            .keystore(ks.port);
    let (mut envoy, inline) = tokio::join!(Envoy::start(&options), Envoy::start(&inline));
    let http = client();
    let (key, body) = (new_key(), r#"{"amount":3}"#);
    let first = send_payment(&http, &envoy, "Bearer carol", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send_payment(&http, &inline, "Bearer carol", Some(&key), body).await,
    );
    assert_eq!(
        metric(&envoy, "store_error").await,
        0,
        "the token from the VM was accepted"
    );

    // Without the variable in the VM, the configuration is refused, naming the field.
    let missing = EnvoyOptions::with_filter(upstream.port, from_env).keystore(ks.port);
    match Envoy::try_start(&missing, Duration::from_secs(20)).await {
        Ok(_) => panic!("Envoy accepted a secret from a variable the VM does not have"),
        Err(e) => assert!(e.log.contains("hmac_secret.env"), "{}", e.log),
    }
    assert_envoy_healthy(&mut envoy, "secrets from the environment").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (what, log) in [("Envoy", envoy.full_log()), ("key store", ks.log())] {
        assert!(!log.contains(env_secret), "{what} logged the secret");
        assert!(!log.contains(TOKEN), "{what} logged the token");
    }
}

#[tokio::test]
async fn after_a_rotation_records_of_the_previous_secret_still_replay() {
    let upstream = Upstream::start().await;
    let ks = keystore().await;
    let old = EnvoyOptions::with_filter(upstream.port, plugin(json!({"hmac_secret": OLD_SECRET})))
        .keystore(ks.port);
    let rotated = EnvoyOptions::with_filter(
        upstream.port,
        plugin(json!({"hmac_secret": null, "hmac_secrets": [SECRET, OLD_SECRET]})),
    )
    .keystore(ks.port);
    let (old, rotated) = tokio::join!(Envoy::start(&old), Envoy::start(&rotated));
    let http = client();
    let body = r#"{"amount":9}"#;

    // Written under the old secret, replayed by a gateway that signs with the new one.
    let key = new_key();
    let first = send_payment(&http, &old, "Bearer dave", Some(&key), body).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send_payment(&http, &rotated, "Bearer dave", Some(&key), body).await,
    );
    // The same key with another payload is still a reuse.
    assert_problem(
        &send_payment(
            &http,
            &rotated,
            "Bearer dave",
            Some(&key),
            r#"{"amount":10}"#,
        )
        .await,
        422,
    );
    // In flight under the old secret: the rotated gateway answers 409.
    let slow_key = new_key();
    let slow = tokio::spawn(send(
        post_payment(&http, &old, "Bearer dave", Some(&slow_key), body)
            .header("x-demo-delay-ms", "1500"),
    ));
    upstream.wait_post_requests(2).await;
    assert_problem(
        &send_payment(&http, &rotated, "Bearer dave", Some(&slow_key), body).await,
        409,
    );
    assert_eq!(slow.await.unwrap().status, 201);
    // New keys go under the new secret and replay there.
    let fresh = new_key();
    let new_first = send_payment(&http, &rotated, "Bearer dave", Some(&fresh), body).await;
    assert_eq!(new_first.status, 201);
    assert_replay(
        &new_first,
        &send_payment(&http, &rotated, "Bearer dave", Some(&fresh), body).await,
    );
    assert_eq!(upstream.post_requests().await, 3, "each key ran once");
    assert_eq!(metric(&rotated, "executed").await, 1);
}
