//! What a record holds, as `show` and `purge` tell it: completed, in flight, absent, on every
//! backend; under the previous secret, with an unknown outcome, or sealed under no configured
//! secret.

use super::*;

fn completed_in_flight_absent_and_purge(backend: Backend) {
    let setup = Setup::new();
    let ks = Keystore::start(backend, Some(ADMIN_TOKEN));
    let cfg = &setup.keystore_cfg;

    // Completed: written as the filter writes it, under the current secret.
    let key = a_key();
    let unquoted = key.trim_matches('"');
    let current = record_key(CURRENT, unquoted);
    store(&ks, cfg, &current, &record(created_201()));
    let text = show(&setup, &ks, &key);
    contains(
        &text,
        &format!(
            "secret 0 (current), record key {}: completed, status 201, replayable",
            current.hex()
        ),
    );
    contains(&text, "verifies under secret 0 (current)");
    contains(&text, "gets the stored 201 replayed");
    contains(
        &text,
        &format!(
            "secret 1 (previous), record key {}: absent",
            record_key(PREVIOUS, unquoted).hex()
        ),
    );
    let json = show_json(&setup, &ks, &key, &[]);
    assert_eq!(json["route"], ROUTE);
    assert_eq!(json["caller_source"], "header:authorization");
    let first = &json["records"][0];
    assert_eq!(first["state"], "completed", "{json}");
    assert_eq!(first["record_key"], current.hex().as_str());
    assert_eq!(first["record"]["signature"], "verified", "{json}");
    assert_eq!(first["record"]["secret"], 0);
    assert_eq!(first["record"]["outcome"], "replayable");
    assert_eq!(first["record"]["status"], 201);
    let left = first["expires_in_ms"].as_u64().unwrap();
    assert!(left > 3_500_000 && left <= 3_600_000, "{json}");
    assert_eq!(json["records"][1]["state"], "absent");
    // The same request again is a retry; another payload is the 422.
    let same = setup.dir.path().join("same.json");
    std::fs::write(&same, BODY).unwrap();
    let other = setup.dir.path().join("other.json");
    std::fs::write(&other, br#"{"amount":999}"#).unwrap();
    let text = stdout(&admin(
        &setup,
        Some(&ks),
        "show",
        &key,
        &["--body", same.to_str().unwrap()],
    ));
    contains(&text, "has the stored fingerprint: it is a retry");
    let json = show_json(&setup, &ks, &key, &["--body", other.to_str().unwrap()]);
    assert_eq!(json["records"][0]["request_matches"], false, "{json}");
    assert!(
        json["records"][1].get("request_matches").is_none(),
        "{json}"
    );

    // Purge asks for --yes and removes nothing without it.
    let err = failure(&admin(&setup, Some(&ks), "purge", &key, &[]), 2);
    contains(&err, "--yes");
    contains(&show(&setup, &ks, &key), "completed, status 201");
    let text = stdout(&admin(&setup, Some(&ks), "purge", &key, &["--yes"]));
    contains(
        &text,
        &format!(
            "secret 0 (current), record key {}: removed: completed, status 201, replayable",
            current.hex()
        ),
    );
    contains(&text, "secret 1 (previous), record key");
    contains(&text, "nothing to remove");
    contains(
        &show(&setup, &ks, &key),
        &format!("record key {}: absent", current.hex()),
    );
    // The key runs again: the filter's next claim wins it.
    let claimed = ks.send(&keystore_client::claim(
        cfg,
        &current,
        &fingerprint(),
        "t2",
        &terms(30_000),
    ));
    assert_eq!(claimed["outcome"], "claimed", "{claimed}");

    // That claim is in flight now.
    let text = show(&setup, &ks, &key);
    contains(
        &text,
        &format!("record key {}: in flight (lease left", current.hex()),
    );
    contains(&text, "409 (request in progress)");
    let json = show_json(&setup, &ks, &key, &[]);
    assert_eq!(json["records"][0]["state"], "in_flight");
    let left = json["records"][0]["lease_left_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 30_000, "{json}");
    assert!(!json.to_string().contains("t2"), "no fencing token: {json}");
    let text = stdout(&admin(&setup, Some(&ks), "purge", &key, &["--yes"]));
    contains(&text, "removed: in flight");
}

#[test]
fn memory_completed_in_flight_absent_and_purge() {
    completed_in_flight_absent_and_purge(Backend::Memory);
}

#[test]
fn redis_completed_in_flight_absent_and_purge() {
    completed_in_flight_absent_and_purge(Backend::Redis);
}

/// A record stored under the previous secret is found and verified under it; an unknown outcome is
/// explained; a record sealed under no configured secret is called out.
#[test]
fn previous_secret_unknown_outcome_and_forgery() {
    let setup = Setup::new();
    let ks = Keystore::start(Backend::Memory, Some(ADMIN_TOKEN));
    let key = a_key();
    let unquoted = key.trim_matches('"');
    // Stored before the rotation: key and seal under what is now the previous secret.
    let mut before_rotation = setup.keystore_cfg.clone();
    before_rotation.secrets =
        idempotency_filter::config::Secrets::from_bytes(vec![PREVIOUS.as_bytes().to_vec()]);
    let hold_until = now_ms() + 600_000;
    let previous = record_key(PREVIOUS, unquoted);
    store(
        &ks,
        &before_rotation,
        &previous,
        &record(Outcome::Unknown {
            hold_until_ms: hold_until,
        }),
    );
    let text = show(&setup, &ks, &key);
    contains(
        &text,
        &format!(
            "secret 1 (previous), record key {}: completed, outcome unknown",
            previous.hex()
        ),
    );
    contains(&text, "verifies under secret 1 (previous)");
    contains(&text, "then 410");
    contains(&text, "409 with Retry-After until");

    // Sealed under a secret the configuration does not hold.
    let key = a_key();
    let current = record_key(CURRENT, key.trim_matches('"'));
    let mut forger = setup.keystore_cfg.clone();
    forger.secrets = idempotency_filter::config::Secrets::from_bytes(vec![b"f".repeat(40)]);
    store(&ks, &forger, &current, &record(created_201()));
    let text = show(&setup, &ks, &key);
    contains(&text, "completed, signature does not verify");
    contains(&text, "never replays this record");
    let json = show_json(&setup, &ks, &key, &[]);
    assert_eq!(json["records"][0]["record"]["signature"], "does_not_verify");
    contains(&text, "502 (record-unverifiable)");
    // Purged, the key runs again.
    let text = stdout(&admin(&setup, Some(&ks), "purge", &key, &["--yes"]));
    contains(&text, "removed: completed, signature does not verify");
    contains(
        &show(&setup, &ks, &key),
        &format!("record key {}: absent", current.hex()),
    );

    // A claim whose lease ran out without an answer (its gateway died): abandoned, explained,
    // and purged like any other.
    let key = a_key();
    let current = record_key(CURRENT, key.trim_matches('"'));
    let claimed = ks.send(&keystore_client::claim(
        &setup.keystore_cfg,
        &current,
        &fingerprint(),
        "t3",
        &terms(1),
    ));
    assert_eq!(claimed["outcome"], "claimed", "{claimed}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let text = show(&setup, &ks, &key);
    contains(&text, "(was a claim in flight)");
    contains(&text, "an abandoned claim");
    contains(&text, "then 410 (outcome unknown)");
    let text = stdout(&admin(&setup, Some(&ks), "purge", &key, &["--yes"]));
    contains(&text, "removed: expired");
}
