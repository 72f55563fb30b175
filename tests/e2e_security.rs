//! The security model, end to end (real Envoy, the release `.wasm`, the real key store):
//! - a request without credentials is refused (401) unless an anonymous scope is named, and a
//!   named anonymous scope never meets a caller that has credentials;
//! - two callers with the same key and body never get each other's response, and no replay
//!   carries a `Set-Cookie`;
//! - a record altered in Redis (status, header, body, fingerprint, moved from another key,
//!   unsealed, sealed under a guessed secret) is never replayed: each is a store error
//!   (`fail_closed`: 503), counted as `unverified_record`, logged without its data;
//! - the secret and the key-store token come from the Wasm VM's environment;
//! - after a rotation (a new secret first, the old one second), records written under the old
//!   secret replay, and a claim in flight under it still answers 409;
//! - `//payments` and `/payments/../payments` are covered through the shipped
//!   `envoy/single-gateway.yaml` (it normalizes paths and merges slashes).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod hardening;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use hardening::*;
use idempotency_filter::config::Secrets;
use idempotency_filter::record::{Outcome, Record};
use idempotency_filter::scope::RecordKey;
use idempotency_testkit::redis::RedisServer;
use serde_json::{json, Value};
use support::*;

const SECRET: &str = "security-e2e-secret-0123456789abcdef0123";
const OLD_SECRET: &str = "security-e2e-old-secret-0123456789abcdef";
const TOKEN: &str = "security-e2e-keystore-token-7c1d";

fn plugin(extra: Value) -> String {
    Plugin::payments(SECRET)
        .set("failure_mode", "fail_closed")
        .keystore(1000, Some(TOKEN))
        .merge(&extra)
        .json()
}

async fn keystore() -> Keystore {
    Keystore::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "memory",
        "--token",
        TOKEN,
    ])
    .await
}

fn anonymous(
    http: &reqwest::Client,
    envoy: &Envoy,
    key: &str,
    body: &str,
) -> reqwest::RequestBuilder {
    http.post(envoy.url("/payments"))
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_owned())
}

#[tokio::test]
async fn callers_without_credentials_are_refused_unless_an_anonymous_scope_is_named() {
    let upstream = Upstream::start().await;
    let ks = keystore().await;
    let strict = EnvoyOptions::with_filter(upstream.port, plugin(json!({}))).keystore(ks.port);
    let public = EnvoyOptions::with_filter(
        upstream.port,
        plugin(json!({
            "caller": {"sources": [{"header": "x-api-key"}, {"header": "authorization"}]},
            "anonymous_scope": "public",
        })),
    )
    .keystore(ks.port);
    let (strict, public) = tokio::join!(Envoy::start(&strict), Envoy::start(&public));
    let http = client();
    let (key, body) = (new_key(), r#"{"amount":5}"#);

    // No anonymous scope: two callers without credentials, same key and body: both refused.
    for _ in 0..2 {
        assert_problem(&send(anonymous(&http, &strict, &key, body)).await, 401);
    }
    assert_eq!(upstream.post_requests().await, 0);
    assert_eq!(metric(&strict, "unauthenticated").await, 2);

    // A named anonymous scope: the first anonymous caller executes, and its answer sets a cookie.
    let first =
        send(anonymous(&http, &public, &key, body).header("x-demo-set-cookie", "session=anon-1"))
            .await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_eq!(first.header("set-cookie"), Some("session=anon-1"));
    // Callers with credentials never meet the anonymous scope, whatever the source: Alice by
    // authorization, and an API key holding the same bytes (another source, another caller).
    let alice = send(post_payment(
        &http,
        &public,
        "Bearer alice",
        Some(&key),
        body,
    ))
    .await;
    assert_eq!(alice.status, 201, "{}", alice.describe());
    assert!(!alice.replayed(), "alice got the anonymous answer");
    let api_key =
        send(anonymous(&http, &public, &key, body).header("x-api-key", "Bearer alice")).await;
    assert_eq!(api_key.status, 201, "{}", api_key.describe());
    assert!(
        !api_key.replayed(),
        "an API key caller got someone else's answer"
    );
    let ids: std::collections::HashSet<String> = [&first, &alice, &api_key]
        .iter()
        .map(|r| r.json()["id"].to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    // A second anonymous caller shares the named scope (that is what naming it means), and the
    // replay carries no cookie of the first.
    let second = send(anonymous(&http, &public, &key, body)).await;
    assert!(second.replayed(), "{}", second.describe());
    assert_eq!(second.body, first.body);
    assert!(
        second.header("set-cookie").is_none(),
        "{}",
        second.describe()
    );
    assert_eq!(upstream.post_requests().await, 3);
}

#[tokio::test]
async fn the_same_key_and_body_never_cross_callers_and_replays_carry_no_cookie() {
    let upstream = Upstream::start().await;
    let ks = keystore().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin(json!({}))).keystore(ks.port);
    let (a, b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let (key, body) = (new_key(), r#"{"amount":77}"#);

    let mut originals = Vec::new();
    for (caller, gateway) in [("Bearer alice", &a), ("Bearer bob", &b)] {
        let cookie = format!("session={}", caller.replace(' ', "-"));
        let resp = send(
            post_payment(&http, gateway, caller, Some(&key), body)
                .header("x-demo-set-cookie", &cookie),
        )
        .await;
        assert_eq!(resp.status, 201, "{}", resp.describe());
        assert!(
            !resp.replayed(),
            "{caller} got a replay: {}",
            resp.describe()
        );
        assert_eq!(resp.header("set-cookie"), Some(cookie.as_str()));
        originals.push((caller, resp));
    }
    assert_ne!(originals[0].1.json()["id"], originals[1].1.json()["id"]);
    for (caller, original) in &originals {
        for gateway in [&a, &b] {
            let again = send(post_payment(&http, gateway, caller, Some(&key), body)).await;
            assert!(again.replayed(), "{}", again.describe());
            assert_eq!(
                again.body, original.body,
                "{caller} got another caller's answer"
            );
            assert_eq!(again.header("location"), original.header("location"));
            assert!(
                again.header("set-cookie").is_none(),
                "a replay carried a cookie: {}",
                again.describe()
            );
        }
    }
    assert_eq!(upstream.post_requests().await, 2);
}

/// One Redis command with binary-safe arguments (RESP), its raw reply.
fn resp(port: u16, args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(&out).unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).unwrap();
        reply.extend_from_slice(&buf[..n]);
        if complete_reply(&reply) {
            return reply;
        }
    }
}

fn complete_reply(r: &[u8]) -> bool {
    match r.first() {
        Some(b'$') => {
            let Some(end) = r.windows(2).position(|w| w == b"\r\n") else {
                return false;
            };
            let len: i64 = std::str::from_utf8(&r[1..end]).unwrap().parse().unwrap();
            len < 0 || r.len() >= end + 2 + len as usize + 2
        }
        Some(_) => r.ends_with(b"\r\n"),
        None => false,
    }
}

/// `HGET key field` as bytes.
fn hget(port: u16, key: &str, field: &str) -> Vec<u8> {
    let r = resp(port, &[b"HGET", key.as_bytes(), field.as_bytes()]);
    let end = r.windows(2).position(|w| w == b"\r\n").unwrap();
    r[end + 2..r.len() - 2].to_vec()
}

fn hset(port: u16, key: &str, field: &str, value: &[u8]) {
    let r = resp(port, &[b"HSET", key.as_bytes(), field.as_bytes(), value]);
    assert!(r.starts_with(b":"), "{}", String::from_utf8_lossy(&r));
}

fn redis_key(caller: &str, key: &str) -> (RecordKey, String) {
    let rk = RecordKey::derive(
        SECRET.as_bytes(),
        "exact:/payments",
        &idempotency_filter::scope::Caller::Source {
            source: "header:authorization",
            value: caller.as_bytes(),
        },
        key,
    );
    let name = format!("idem:{{{}}}", rk.hex());
    (rk, name)
}

#[tokio::test]
async fn records_altered_in_redis_are_never_replayed() {
    let redis = RedisServer::durable();
    let upstream = Upstream::start().await;
    let ks = Keystore::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "redis",
        "--redis-url",
        &redis.url(),
        "--token",
        TOKEN,
    ])
    .await;
    ks.wait_ready().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin(json!({}))).keystore(ks.port);
    // A executes; B never saw the key, so every retry on B reads the record from Redis.
    let (a, mut b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let (caller, key, body) = ("Bearer alice", new_key(), r#"{"amount":1}"#);
    let original = send(post_payment(&http, &a, caller, Some(&key), body)).await;
    assert_eq!(original.status, 201, "{}", original.describe());
    // Another record, of another key: a valid seal, for the wrong key.
    let other_key = new_key();
    let other = send(post_payment(&http, &a, caller, Some(&other_key), body)).await;
    assert_eq!(other.status, 201);

    let (rk, name) = redis_key(caller, &key);
    let (_, other_name) = redis_key(caller, &other_key);
    let sealed = hget(redis.port, &name, "rec");
    let fp = hget(redis.port, &name, "fp");
    let secrets = Secrets::from_bytes(vec![SECRET.as_bytes().to_vec()]);
    let record = Record::open(&sealed, &rk, &secrets).expect("the stored record opens");
    let mac = sealed[sealed.len() - 32..].to_vec();
    let guessed = b"attacker-guess-0123456789abcdef0123456789";
    // What an attacker who can write to Redis, but does not hold the secret, can put there.
    let altered = |change: &dyn Fn(&mut Record)| {
        let mut r = record.clone();
        change(&mut r);
        let mut forged = r.seal(&rk, guessed);
        let n = forged.len();
        forged[n - 32..].copy_from_slice(&mac); // keep the original seal
        forged
    };
    let response = |r: &mut Record| match &mut r.outcome {
        Outcome::Replayable(resp) => resp.clone(),
        _ => panic!("not replayable"),
    };
    let forgeries: Vec<(&str, Vec<u8>)> = vec![
        (
            "status changed",
            altered(&|r| {
                let mut resp = response(r);
                resp.status = 200;
                r.outcome = Outcome::Replayable(resp);
            }),
        ),
        (
            "header added",
            altered(&|r| {
                let mut resp = response(r);
                resp.headers
                    .push(("set-cookie".into(), b"session=attacker".to_vec()));
                r.outcome = Outcome::Replayable(resp);
            }),
        ),
        (
            "body replaced",
            altered(&|r| {
                let mut resp = response(r);
                resp.body = br#"{"id":"pay_forged-by-attacker"}"#.to_vec();
                r.outcome = Outcome::Replayable(resp);
            }),
        ),
        (
            "fingerprint inside the record changed",
            altered(&|r| r.fingerprint[0] ^= 1),
        ),
        ("expiry extended", altered(&|r| r.expires_ms += 1_000_000)),
        (
            "the record of another key",
            hget(redis.port, &other_name, "rec"),
        ),
        ("unsealed (the earlier codec)", record.encode()),
        ("body replaced, sealed under a guessed secret", {
            let mut r = record.clone();
            let mut resp = response(&mut r);
            resp.body = br#"{"id":"pay_forged-by-attacker"}"#.to_vec();
            r.outcome = Outcome::Replayable(resp);
            r.seal(&rk, guessed)
        }),
        ("seal cut short", sealed[..sealed.len() - 1].to_vec()),
        ("empty", Vec::new()),
    ];
    let before = metrics(&b).await;
    for (what, forged) in &forgeries {
        hset(redis.port, &name, "rec", forged);
        let resp = send(post_payment(&http, &b, caller, Some(&key), body)).await;
        assert_problem(&resp, 503);
        assert!(!resp.replayed(), "{what}: replayed");
        assert!(!contains(&resp.body, "forged-by-attacker"), "{what}");
        println!("FORGED|{what}|{}|", resp.status);
    }
    let after = metrics(&b).await;
    let n = forgeries.len() as u64;
    assert_eq!(after["unverified_record"] - before["unverified_record"], n);
    assert_eq!(after["store_error"] - before["store_error"], n);
    assert_eq!(after["replayed"], before["replayed"]);

    // The fingerprint the key store compares, changed in Redis: a mismatch (422), no replay.
    hset(redis.port, &name, "rec", &sealed);
    hset(redis.port, &name, "fp", &[b'0'; 64]);
    assert_problem(
        &send(post_payment(&http, &b, caller, Some(&key), body)).await,
        422,
    );
    // Put back as stored: B replays it, byte for byte; the upstream ran each key once.
    hset(redis.port, &name, "fp", &fp);
    assert_replay(
        &original,
        &send(post_payment(&http, &b, caller, Some(&key), body)).await,
    );
    assert_eq!(upstream.post_requests().await, 2);

    assert_envoy_healthy(&mut b, "forged records").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = b.full_log();
    assert!(log.contains("fails verification"), "{}", b.log_tail(30));
    for secret in [
        SECRET,
        TOKEN,
        "forged-by-attacker",
        "session=attacker",
        caller,
        key.as_str(),
    ] {
        assert!(!log.contains(secret), "Envoy's log holds {secret:?}");
        assert!(
            !ks.log().contains(secret),
            "the key store's log holds {secret:?}"
        );
    }
}

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
    let first = send(post_payment(
        &http,
        &envoy,
        "Bearer carol",
        Some(&key),
        body,
    ))
    .await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send(post_payment(
            &http,
            &inline,
            "Bearer carol",
            Some(&key),
            body,
        ))
        .await,
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
    let first = send(post_payment(&http, &old, "Bearer dave", Some(&key), body)).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    assert_replay(
        &first,
        &send(post_payment(
            &http,
            &rotated,
            "Bearer dave",
            Some(&key),
            body,
        ))
        .await,
    );
    // The same key with another payload is still a reuse.
    assert_problem(
        &send(post_payment(
            &http,
            &rotated,
            "Bearer dave",
            Some(&key),
            r#"{"amount":10}"#,
        ))
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
        &send(post_payment(
            &http,
            &rotated,
            "Bearer dave",
            Some(&slow_key),
            body,
        ))
        .await,
        409,
    );
    assert_eq!(slow.await.unwrap().status, 201);
    // New keys go under the new secret and replay there.
    let fresh = new_key();
    let new_first = send(post_payment(
        &http,
        &rotated,
        "Bearer dave",
        Some(&fresh),
        body,
    ))
    .await;
    assert_eq!(new_first.status, 201);
    assert_replay(
        &new_first,
        &send(post_payment(
            &http,
            &rotated,
            "Bearer dave",
            Some(&fresh),
            body,
        ))
        .await,
    );
    assert_eq!(upstream.post_requests().await, 3, "each key ran once");
    assert_eq!(metric(&rotated, "executed").await, 1);
}

#[tokio::test]
async fn look_alike_paths_are_covered_through_the_shipped_single_gateway_config() {
    let upstream = Upstream::start().await;
    let shipped = std::fs::read_to_string(repo_root().join("envoy/single-gateway.yaml")).unwrap();
    let bootstrap = shipped
        .replace("port_value: 9901", "port_value: 0")
        .replace("port_value: 10000", "port_value: 0")
        .replace(
            "port_value: 8080",
            &format!("port_value: {}", upstream.port),
        )
        .replace(
            "filename: target/wasm32-wasip1/release/idempotency_filter.wasm",
            &format!("filename: {}", wasm_path().display()),
        );
    assert!(
        bootstrap.contains("normalize_path: true") && bootstrap.contains("merge_slashes: true")
    );
    let options = EnvoyOptions {
        bootstrap: Some(bootstrap),
        ..EnvoyOptions::with_filter(upstream.port, "")
    };
    let mut envoy = Envoy::start(&options).await;
    let http = client();
    let post = |path: &str, key: Option<&str>| {
        let mut req = http
            .post(envoy.url(path))
            .header("content-type", "application/json")
            .header("authorization", "Bearer erin")
            .body(r#"{"amount":4}"#);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        req
    };
    // Covered, so the key is required: without it, 400 on every spelling of the path.
    for path in [
        "/payments",
        "//payments",
        "/payments/../payments",
        "/x/../payments",
        "/./payments",
    ] {
        let resp = send(post(path, None)).await;
        let problem = assert_problem(&resp, 400);
        assert!(
            problem["type"].as_str().unwrap().ends_with("missing-key"),
            "{path}: {problem}"
        );
    }
    // With a key, the look-alike spellings are one request: executed once, then replayed.
    let key = new_key();
    let first = send(post("//payments", Some(&key))).await;
    assert_eq!(first.status, 201, "{}", first.describe());
    for path in ["/payments/../payments", "/payments", "//payments"] {
        assert_replay(&first, &send(post(path, Some(&key))).await);
    }
    assert_eq!(upstream.post_requests().await, 1);
    assert_envoy_healthy(&mut envoy, "shipped single gateway").await;
}
