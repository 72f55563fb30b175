//! Records altered in Redis (status, header, body, fingerprint, moved, unsealed, sealed under a
//! guessed secret) are store errors, never replays.

use super::*;

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
    let ks =
        Keystore::start_backend("redis", &["--redis-url", &redis.url(), "--token", TOKEN]).await;
    ks.wait_ready().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin(json!({}))).keystore(ks.port);
    // A executes; B never saw the key, so every retry on B reads the record from Redis.
    let (a, mut b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    let http = client();
    let (caller, key, body) = ("Bearer alice", new_key(), r#"{"amount":1}"#);
    let original = send_payment(&http, &a, caller, Some(&key), body).await;
    assert_eq!(original.status, 201, "{}", original.describe());
    // Another record, of another key: a valid seal, for the wrong key.
    let other_key = new_key();
    let other = send_payment(&http, &a, caller, Some(&other_key), body).await;
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
        let resp = send_payment(&http, &b, caller, Some(&key), body).await;
        let problem = assert_problem(&resp, 502);
        assert_eq!(
            problem["type"], "urn:envoy-idempotency:problem:record-unverifiable",
            "{what}"
        );
        assert!(!resp.replayed(), "{what}: replayed");
        assert!(!contains(&resp.body, "forged-by-attacker"), "{what}");
        println!("FORGED|{what}|{}|", resp.status);
    }
    let after = metrics(&b).await;
    let n = forgeries.len() as u64;
    assert_eq!(after["unverified_record"] - before["unverified_record"], n);
    assert_eq!(
        after["store_error"], before["store_error"],
        "the key store answered: not a store error"
    );
    assert_eq!(after["replayed"], before["replayed"]);

    // The fingerprint the key store compares, changed in Redis: a mismatch (422), no replay.
    hset(redis.port, &name, "rec", &sealed);
    hset(redis.port, &name, "fp", &[b'0'; 64]);
    assert_problem(
        &send_payment(&http, &b, caller, Some(&key), body).await,
        422,
    );
    // Put back as stored: B replays it, byte for byte; the upstream ran each key once.
    hset(redis.port, &name, "fp", &fp);
    assert_replay(
        &original,
        &send_payment(&http, &b, caller, Some(&key), body).await,
    );
    assert_eq!(upstream.post_requests().await, 2);

    assert_envoy_healthy(&mut b, "forged records").await;
    assert!(
        b.wait_for_log("fails verification", Duration::from_secs(5))
            .await,
        "{}",
        b.log_tail(30)
    );
    let log = b.full_log();
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
