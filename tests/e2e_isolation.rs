//! Isolation and secrets, end to end:
//! - the same key from two callers never shares a record, through two Envoys sharing one key
//!   store, a caller who did not make a request can never obtain its replayed response, and a
//!   request without a caller is refused (no anonymous scope is named);
//! - the key store requires its bearer token when configured (a filter without it gets 401,
//!   counted as `store_error`, and answers 503 under `fail_closed`);
//! - keys and caller values leave Envoy only as keyed hashes: every request the filter sends to
//!   the key store is recorded, and with the Redis backend every Redis key and value is scanned
//!   for the raw key, the caller credential and the request body's marker;
//! - none of them appears in any log line of a run (Envoy with the filter's debug lines, the key
//!   store's stderr).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod hardening;
mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use hardening::*;
use idempotency_filter::scope::{Caller, RecordKey};
use idempotency_testkit::redis::RedisServer;
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "isolation-secret-0123456789abcdef0123";

fn plugin(token: Option<&str>) -> String {
    Plugin::payments(SECRET)
        .caller_header("authorization")
        .set("failure_mode", "fail_closed")
        .keystore(1000, token)
        .json()
}

fn id(resp: &Resp) -> Value {
    resp.json()["id"].clone()
}

#[tokio::test]
async fn same_key_from_two_callers_never_shares_a_record_across_gateways() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin(None)).keystore(keystore.port);
    let (a, b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let key = new_key();
    let body = r#"{"amount":42}"#;

    let alice = send(post_payment(&http, &a, "Bearer alice", Some(&key), body)).await;
    assert_eq!(alice.status, 201, "{}", alice.describe());
    // Bob, same key and body, on the other gateway: his own execution, never Alice's answer.
    let bob = send(post_payment(&http, &b, "Bearer bob", Some(&key), body)).await;
    assert_eq!(bob.status, 201, "{}", bob.describe());
    assert!(!bob.replayed(), "bob got a replay: {}", bob.describe());
    assert_ne!(id(&alice), id(&bob), "bob got alice's payment");
    // Each replays only their own, on either gateway.
    for gateway in [&a, &b] {
        let again = send(post_payment(
            &http,
            gateway,
            "Bearer alice",
            Some(&key),
            body,
        ))
        .await;
        assert_replay(&alice, &again);
        let again = send(post_payment(&http, gateway, "Bearer bob", Some(&key), body)).await;
        assert_replay(&bob, &again);
    }
    // A third caller who never made the request, trying both gateways: executes its own once.
    let carol = send(post_payment(&http, &b, "Bearer carol", Some(&key), body)).await;
    assert_eq!(carol.status, 201, "{}", carol.describe());
    assert!(!carol.replayed());
    let carol_on_a = send(post_payment(&http, &a, "Bearer carol", Some(&key), body)).await;
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
    let alice_upper = send(post_payment(&http, &b, "Bearer ALICE", Some(&key), body)).await;
    assert_eq!(alice_upper.status, 201, "{}", alice_upper.describe());
    assert!(!alice_upper.replayed());

    // Claims are per caller too: while Dave's request is in flight, Erin's runs (no 409).
    let shared = new_key();
    let dave = tokio::spawn(send(
        post_payment(&http, &a, "Bearer dave", Some(&shared), body)
            .header("x-demo-delay-ms", "800"),
    ));
    upstream.wait_post_requests(5).await;
    let erin = send(post_payment(&http, &b, "Bearer erin", Some(&shared), body)).await;
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
    let keystore = Keystore::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "memory",
        "--token",
        TOKEN,
    ])
    .await;

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

    let refused = send(post_payment(&http, &without, "alice", Some(&key), body)).await;
    assert_problem(&refused, 503);
    assert_eq!(upstream.post_requests().await, 0);
    assert_eq!(metric(&without, "store_error").await, 1);
    // Envoy flushes its log every 100 ms.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !without.full_log().contains("key store answered 401") {
        assert!(
            std::time::Instant::now() < deadline,
            "no 401 in the log: {}",
            without.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let first = send(post_payment(&http, &with, "alice", Some(&key), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send(post_payment(&http, &with, "alice", Some(&key), body)).await,
    );
    // The tokenless filter still cannot read the record.
    assert_problem(
        &send(post_payment(&http, &without, "alice", Some(&key), body)).await,
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

/// The secrets of one run: none may leave Envoy in the clear (the plugin's HMAC secret included).
struct Secrets {
    key: String,
    caller: String,
    marker: String,
    hmac: String,
}

impl Secrets {
    fn new() -> Secrets {
        let run = new_key();
        Secrets {
            key: format!("rawkey-{run}"),
            caller: format!("Bearer credential-{}", new_key()),
            marker: format!("bodymarker-{}", new_key()),
            hmac: SECRET.to_owned(),
        }
    }

    fn all(&self) -> [&str; 4] {
        [&self.key, &self.caller, &self.marker, &self.hmac]
    }

    /// Asserts none of the secrets (nor their distinctive UUID parts) occurs in `bytes`.
    fn assert_absent(&self, what: &str, bytes: &[u8]) {
        for secret in self.all() {
            let uuid = &secret[secret.len() - 36.min(secret.len())..];
            for needle in [secret, uuid] {
                assert!(
                    !contains(bytes, needle),
                    "{what} contains {needle:?}: {:?}",
                    String::from_utf8_lossy(bytes)
                );
            }
        }
    }
}

#[tokio::test]
async fn callouts_carry_only_keyed_hashes() {
    // A recording stand-in for the key store: every request the filter sends it is kept.
    let fake = FakeKeystore::start().await;
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(
        &EnvoyOptions::with_filter(upstream.port, plugin(Some("ks-token"))).keystore(fake.port),
    )
    .await;
    let http = client();
    let secrets = Secrets::new();
    let body = format!(r#"{{"memo":"{}"}}"#, secrets.marker);

    let first = send(post_payment(
        &http,
        &envoy,
        &secrets.caller,
        Some(&secrets.key),
        &body,
    ))
    .await;
    assert_eq!(first.status, 201, "{}", first.describe());
    let failed = send(
        post_payment(&http, &envoy, &secrets.caller, Some(&new_key()), &body)
            .header("x-demo-status", "503"),
    )
    .await;
    assert_eq!(failed.status, 503);

    let recorded = fake.recorded();
    let paths: Vec<&str> = recorded.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/v1/claim", "/v1/complete", "/v1/claim", "/v1/release"],
        "the calls the filter made"
    );
    let expected = RecordKey::derive(
        SECRET.as_bytes(),
        "exact:/payments",
        &Caller::Source {
            source: "header:authorization",
            value: secrets.caller.as_bytes(),
        },
        &secrets.key,
    )
    .hex();
    for request in &recorded {
        // Headers: nothing of the client's request, only the key store's own token.
        for (name, value) in &request.headers {
            secrets.assert_absent(&format!("callout header {name}"), value);
            assert!(
                name != "idempotency-key" && name != "x-demo-status",
                "a client header went to the key store: {name}"
            );
        }
        let auth = request
            .headers
            .iter()
            .find(|(n, _)| n == "authorization")
            .map(|(_, v)| v.as_slice());
        assert_eq!(auth, Some(&b"Bearer ks-token"[..]));
        let json: Value = serde_json::from_slice(&request.body).unwrap();
        for field in ["key", "fingerprint"] {
            if let Some(value) = json[field].as_str() {
                assert!(
                    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()),
                    "{field} is not a 64-hex hash: {value}"
                );
            }
        }
        if request.path == "/v1/complete" {
            // The record holds the response (which echoes the body: expected); nothing else.
            continue;
        }
        secrets.assert_absent(&format!("callout body {}", request.path), &request.body);
    }
    assert_eq!(
        recorded[0].body_json()["key"],
        expected.as_str(),
        "the record key is the keyed hash of (scope, caller, key)"
    );
}

trait BodyJson {
    fn body_json(&self) -> Value;
}

impl BodyJson for Recorded {
    fn body_json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Every Redis key and its hash fields and values (raw bytes), via `redis-cli`.
fn redis_dump(port: u16) -> Vec<(String, Vec<u8>)> {
    let port = port.to_string();
    let scan = Command::new("redis-cli")
        .args(["-p", &port, "--scan"])
        .output()
        .expect("redis-cli --scan");
    assert!(scan.status.success(), "redis-cli --scan failed");
    String::from_utf8(scan.stdout)
        .unwrap()
        .lines()
        .filter(|k| !k.is_empty())
        .map(|key| {
            let out = Command::new("redis-cli")
                .args(["-p", &port, "--raw", "HGETALL", key])
                .output()
                .expect("redis-cli HGETALL");
            assert!(out.status.success(), "HGETALL {key} failed");
            (key.to_owned(), out.stdout)
        })
        .collect()
}

#[tokio::test]
async fn redis_holds_only_keyed_hashes_and_no_log_line_holds_a_secret() {
    let redis = RedisServer::durable();
    let upstream = Upstream::start().await;
    let keystore = Keystore::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "redis",
        "--redis-url",
        &redis.url(),
    ])
    .await;
    keystore.wait_ready().await;
    // The filter's own debug lines on; the rest of Envoy at info (Envoy's own debug lines dump
    // request headers, which is Envoy's business, not the filter's).
    let mut envoy = Envoy::start(
        &EnvoyOptions::with_filter(upstream.port, plugin(None))
            .keystore(keystore.port)
            .envoy_arg("--component-log-level")
            .envoy_arg("wasm:debug"),
    )
    .await;
    let http = client();
    let s = Secrets::new();
    // Bodies carry the marker; answers forced with x-demo-status do not echo the body, so the
    // stored response cannot carry the marker either (a stored 201 would echo it: expected).
    let body = format!(r#"{{"memo":"{}"}}"#, s.marker);
    let post = |key: &str, body: &str| {
        post_payment(&http, &envoy, &s.caller, Some(key), body).header("x-demo-status", "400")
    };

    let first = send(post(&s.key, &body)).await;
    assert_eq!(first.status, 400, "{}", first.describe());
    assert_replay(&first, &send(post(&s.key, &body)).await);
    let other = format!(r#"{{"memo":"{}","n":2}}"#, s.marker);
    assert_problem(&send(post(&s.key, &other)).await, 422);
    // A request in flight: its claim is in Redis while it runs.
    let in_flight_key = format!("{}-b", s.key);
    let slow = tokio::spawn(send(
        post(&in_flight_key, &body).header("x-demo-delay-ms", "700"),
    ));
    upstream.wait_post_requests(2).await;
    let during = redis_dump(redis.port);
    assert!(
        during.iter().any(|(_, v)| contains(v, "\nf\n")),
        "no in-flight record in Redis: {during:?}"
    );
    assert_eq!(slow.await.unwrap().status, 400);
    // A 5xx (released), an invalid key that carries the secret, a missing key.
    let released = send(
        post_payment(
            &http,
            &envoy,
            &s.caller,
            Some(&format!("{}-c", s.key)),
            &body,
        )
        .header("x-demo-status", "503"),
    )
    .await;
    assert_eq!(released.status, 503);
    let broken = format!("\"{}", s.key);
    assert_problem(&send(post(&broken, &body)).await, 400);
    assert_problem(
        &send(
            http.post(envoy.url("/payments"))
                .header("authorization", &s.caller)
                .body(body.clone()),
        )
        .await,
        400,
    );

    // Redis: keys are `idem:{<64 hex>}`, one of them the keyed hash of the first request; no
    // key, field or value holds a secret; the stored response is there (so values are read).
    let after = redis_dump(redis.port);
    let expected = RecordKey::derive(
        SECRET.as_bytes(),
        "exact:/payments",
        &Caller::Source {
            source: "header:authorization",
            value: s.caller.as_bytes(),
        },
        &s.key,
    )
    .hex();
    assert!(
        after
            .iter()
            .any(|(k, _)| *k == format!("idem:{{{expected}}}")),
        "the first request's record is not under its keyed hash: {:?}",
        after.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    assert_eq!(after.len(), 2, "two completed records: {after:?}");
    for (key, value) in during.iter().chain(&after) {
        let hex = key
            .strip_prefix("idem:{")
            .and_then(|k| k.strip_suffix('}'))
            .unwrap_or_else(|| panic!("unexpected Redis key {key}"));
        assert!(hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
        s.assert_absent(&format!("Redis key {key}"), key.as_bytes());
        s.assert_absent(&format!("Redis value of {key}"), value);
    }
    assert!(
        after
            .iter()
            .any(|(_, v)| contains(v, "status forced by x-demo-status")),
        "the stored response is not in Redis: {after:?}"
    );

    // Logs: the filter logged, and no line holds a secret.
    assert_envoy_healthy(&mut envoy, "secrets run").await;
    tokio::time::sleep(Duration::from_millis(300)).await; // Envoy flushes its log every 100 ms
    let envoy_log = envoy.full_log();
    // (The filter caps its own level at info: `set_log_level(Info)`, so its debug lines never
    // reach Envoy; the info and warning lines are what a production log holds.)
    for line in ["configured:", "upstream answered 503; releasing the claim"] {
        assert!(
            envoy_log.contains(line),
            "the filter's `{line}` line is missing; log:\n{}",
            envoy.log_tail(40)
        );
    }
    s.assert_absent("Envoy's log", envoy_log.as_bytes());
    s.assert_absent("the key store's log", keystore.log().as_bytes());
}
