//! Callers stay apart: no credentials means 401 unless an anonymous scope is named, and two callers
//! with the same key and body never get each other's response (nor any `Set-Cookie`).

use super::*;

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
    let alice = send_payment(&http, &public, "Bearer alice", Some(&key), body).await;
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
            let again = send_payment(&http, gateway, caller, Some(&key), body).await;
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
