//! Keys, callers and bodies leave Envoy only as keyed hashes: in the callouts, in Redis, and in no
//! log line.

use super::*;

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
        &EnvoyOptions::with_filter(upstream.port, plugin(Some("ks-token")))
            .keystore(fake.port)
            .keystore_over_http1(),
    )
    .await;
    let http = client();
    let secrets = Secrets::new();
    let body = format!(r#"{{"memo":"{}"}}"#, secrets.marker);

    let first = send_payment(&http, &envoy, &secrets.caller, Some(&secrets.key), &body).await;
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
        let json = request.body_json();
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
    /// The callout's body as JSON, whichever format the filter sent it in.
    fn body_json(&self) -> Value {
        let endpoint = self.path.rsplit('/').next().unwrap_or_default();
        let text = idempotency_protocol::body::request_as_json(endpoint, &self.body).unwrap();
        serde_json::from_slice(&text).unwrap()
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
    let keystore = Keystore::start_backend("redis", &["--redis-url", &redis.url()]).await;
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
