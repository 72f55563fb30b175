//! Secret rotation: records written under the previous secret replay, from L1 and from the key
//! store.

use super::*;

const OLD_SECRET: &str = "old-secret-0123456789abcdef0123456789";
const NEW_SECRET: &str = "new-secret-0123456789abcdef0123456789";

#[test]
fn after_a_rotation_records_of_the_previous_secret_replay_from_l1() {
    let old = World::new(&format!(r#"{{"hmac_secret":"{OLD_SECRET}"}}"#));
    let (mut s, mut h, _) = old.send(&post("k", b"a"));
    old.respond(&mut s, &mut h, 201, b"{\"id\":1}");
    let rotated = old.sharing(&format!(
        r#"{{"hmac_secrets":["{NEW_SECRET}","{OLD_SECRET}"]}}"#
    ));
    let (_, h2, _) = rotated.send(&post("k", b"a"));
    let sent = h2.last_sent().unwrap();
    assert_eq!(
        (sent.status, sent.body.as_slice()),
        (201, &b"{\"id\":1}"[..])
    );
    assert_eq!(h2.count_of(Metric::Executed), 0);
    // Another payload under the same key is still a reuse, across the rotation.
    let (_, h3, _) = rotated.send(&post("k", b"b"));
    assert_eq!(h3.last_sent().unwrap().status, 422);
    // A key never used before executes under the new secret.
    let (_, h4, flow) = rotated.send(&post("fresh", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h4.count_of(Metric::Executed), 1);
    // Without the old secret in the list, the old record is not found: the key executes again.
    let forgotten = old.sharing(&format!(r#"{{"hmac_secret":"{NEW_SECRET}"}}"#));
    let (_, h5, flow) = forgotten.send(&post("k", b"a"));
    assert_eq!(flow, Flow::Continue);
    assert_eq!(h5.count_of(Metric::Executed), 1);
}

mod with_keystore {
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine;

    fn cfg() -> String {
        format!(
            r#"{{"hmac_secrets":["{NEW_SECRET}","{OLD_SECRET}"],"keystore":{{"cluster":"ks","token":"s3cret"}},"failure_mode":"fail_closed"}}"#
        )
    }

    fn body_of(c: &crate::host::Callout) -> Value {
        crate::testing::callout_json(c)
    }

    fn path_of(c: &crate::host::Callout) -> String {
        c.headers
            .iter()
            .find(|(n, _)| n == ":path")
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    fn hex32(v: &Value) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex::decode_to_slice(v.as_str().unwrap(), &mut out).unwrap();
        out
    }

    /// A record of the lookup's key and fingerprint, sealed under `secret`.
    fn completed(lookup: &crate::host::Callout, secret: &str) -> String {
        let b = body_of(lookup);
        let record = crate::record::Record {
            fingerprint: hex32(&b["fingerprint"]),
            created_ms: 0,
            expires_ms: u64::MAX,
            outcome: Outcome::Replayable(crate::record::StoredResponse {
                status: 201,
                headers: vec![],
                body: b"old".to_vec(),
                ..Default::default()
            }),
        };
        let sealed = record.seal(
            &crate::scope::RecordKey(hex32(&b["key"])),
            secret.as_bytes(),
        );
        format!(
            r#"{{"outcome":"completed","record":"{}"}}"#,
            B64.encode(sealed)
        )
    }

    #[test]
    fn a_record_under_the_previous_secret_is_found_before_claiming() {
        let w = World::new(&cfg());
        let (mut s, h, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Pause);
        let (token, lookup) = h.last_callout().unwrap();
        assert_eq!(path_of(&lookup), "/v1/lookup");
        s.on_callout_response(
            &h,
            token,
            Some(200),
            completed(&lookup, OLD_SECRET).as_bytes(),
        );
        let sent = h.last_sent().unwrap();
        assert_eq!((sent.status, sent.body.as_slice()), (201, &b"old"[..]));
        assert_eq!(h.count_of(Metric::Replayed), 1);
        assert_eq!(
            h.callouts.borrow().len(),
            1,
            "no claim under the new secret"
        );
    }

    #[test]
    fn nothing_under_the_previous_secret_then_the_claim_goes_under_the_new_one() {
        let w = World::new(&cfg());
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let (token, lookup) = h.last_callout().unwrap();
        s.on_callout_response(&h, token, Some(200), br#"{"outcome":"absent"}"#);
        let (_, claim) = h.last_callout().unwrap();
        assert_eq!(path_of(&claim), "/v1/claim");
        assert_ne!(body_of(&claim)["key"], body_of(&lookup)["key"]);
        assert_ne!(
            body_of(&claim)["fingerprint"],
            body_of(&lookup)["fingerprint"]
        );
    }

    #[test]
    fn observe_mode_goes_on_after_a_lookup_under_the_previous_secret() {
        let observe = cfg().replacen('{', r#"{"mode":"observe","#, 1);
        let w = World::new(&observe);
        let (mut s, h, flow) = w.send(&post("k", b"a"));
        assert_eq!(flow, Flow::Pause, "the lookup holds the request");
        let (token, lookup) = h.last_callout().unwrap();
        s.on_callout_response(
            &h,
            token,
            Some(200),
            completed(&lookup, OLD_SECRET).as_bytes(),
        );
        assert!(
            h.last_sent().is_none(),
            "observe mode never answers locally"
        );
        assert_eq!(h.resumed_request.get(), 1, "the paused request goes on");
        assert_eq!(h.observed_of(Metric::Replayed), 1);
        assert_eq!(h.count_of(Metric::Replayed), 0);
    }

    #[test]
    fn in_flight_or_forged_under_the_previous_secret() {
        let w = World::new(&cfg());
        let (mut s, h, _) = w.send(&post("k", b"a"));
        let (token, _) = h.last_callout().unwrap();
        s.on_callout_response(
            &h,
            token,
            Some(200),
            br#"{"outcome":"in_flight","retry_after_ms":5}"#,
        );
        assert_eq!(h.last_sent().unwrap().status, 409);

        let (mut s, h, _) = w.send(&post("k2", b"a"));
        let (token, lookup) = h.last_callout().unwrap();
        let forged = completed(&lookup, "a-guess-at-the-secret-0123456789abc");
        s.on_callout_response(&h, token, Some(200), forged.as_bytes());
        assert_eq!(h.last_sent().unwrap().status, 502);
        assert_eq!(h.count_of(Metric::UnverifiedRecord), 1);
        assert_eq!(h.count_of(Metric::Replayed), 0);
    }
}
