//! The in-band expiry header: the same value on the first answer and every replay (also through a
//! second gateway and the key store), and off by configuration.

use super::*;

/// The expiry a response advertises, as a time (panics with the response if absent or not an
/// HTTP-date).
fn advertised_expiry(resp: &Resp) -> SystemTime {
    let value = resp
        .header("idempotency-expires")
        .unwrap_or_else(|| panic!("no idempotency-expires: {}", resp.describe()));
    httpdate::parse_http_date(value)
        .unwrap_or_else(|e| panic!("idempotency-expires {value:?} is no HTTP-date ({e})"))
}

#[tokio::test]
async fn the_first_answer_and_a_replay_on_another_gateway_advertise_the_same_expiry() {
    let retention = Duration::from_secs(600);
    let plugin = plugin(json!({
        "retention_s": retention.as_secs(),
        "keystore": {"cluster": "keystore", "timeout_ms": 1000},
    }));
    let mesh = Mesh::start(&plugin, MeshOptions::default()).await;
    let http = client();
    let key = new_key();
    let body = r#"{"amount":7}"#;

    let before = SystemTime::now();
    let first = send_payment(&http, &mesh.a, "Bearer alice", Some(&key), body).await;
    let after = SystemTime::now();
    assert_eq!(first.status, 201, "{}", first.describe());
    let expires = advertised_expiry(&first);
    // Whole seconds, rounded down: up to one second before the record's own expiry.
    assert!(
        expires + Duration::from_secs(1) >= before + retention && expires <= after + retention,
        "{expires:?} is not {retention:?} after the request: {}",
        first.describe()
    );

    // The other gateway replays from the key store: the same instant, not one counted anew.
    let replay = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), body).await;
    assert_replay(&first, &replay);
    assert_eq!(
        replay.header("idempotency-expires"),
        first.header("idempotency-expires")
    );
    assert_eq!(mesh.upstream.post_requests().await, 1);

    // Problem answers carry none: another payload under the key is 422.
    let other = send_payment(&http, &mesh.b, "Bearer alice", Some(&key), "{}").await;
    assert_eq!(other.status, 422, "{}", other.describe());
    assert_eq!(other.header("idempotency-expires"), None);
}

#[tokio::test]
async fn the_expiry_header_can_be_turned_off() {
    let (upstream, envoy) = gateway(&plugin(json!({"expires_header": false}))).await;
    let http = client();
    let key = new_key();
    let first = send_payment(&http, &envoy, "Bearer alice", Some(&key), "{}").await;
    let replay = send_payment(&http, &envoy, "Bearer alice", Some(&key), "{}").await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(&first, &replay);
    for resp in [&first, &replay] {
        assert_eq!(
            resp.header("idempotency-expires"),
            None,
            "{}",
            resp.describe()
        );
    }
    assert_eq!(upstream.post_requests().await, 1);
}
