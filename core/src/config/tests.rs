use super::*;
use crate::testing::with_test_secret;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(with_test_secret(s).as_bytes(), &|_| None)
}

fn parse_raw(s: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect();
    Config::parse_with_env(s.as_bytes(), &move |name| {
        env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
}

#[test]
fn empty_document_gives_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.header_name, "idempotency-key");
    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].methods, vec!["POST", "PATCH"]);
    assert!(!c.routes[0].required);
    assert_eq!(c.routes[0].retention_ms, 86_400_000);
    assert_eq!(c.routes[0].failure_mode, FailureMode::FailClosed);
    assert_eq!(c.routes[0].unknown_outcome, UnknownOutcome::Lock);
    assert_eq!(c.routes[0].unknown_hold_ms, 30_000);
    assert_eq!(c.routes[0].execution, Execution::Inline);
    assert_eq!(c.routes[0].in_flight, WhileInFlight::Conflict);
    assert_eq!(c.routes[0].mode, Mode::Enforce);
    let o =
        parse(r#"{"mode":"observe","routes":[{"prefix":"/a"},{"prefix":"/b","mode":"enforce"}]}"#)
            .unwrap();
    assert_eq!(
        (o.routes[0].mode, o.routes[1].mode),
        (Mode::Observe, Mode::Enforce)
    );
    let d = parse(
        r#"{"in_flight":"wait","routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up","max_wait_ms":500}]}"#,
    )
    .unwrap();
    assert_eq!(
        d.routes[0].execution,
        Execution::Detached {
            cluster: "up".into(),
            timeout_ms: 30_000
        }
    );
    assert_eq!(
        (d.routes[0].in_flight, d.routes[0].max_wait_ms),
        (WhileInFlight::Wait, 500)
    );
    assert_eq!(
        c.callers,
        vec![CallerSource::Header("authorization".into())]
    );
    assert_eq!(c.anonymous_scope, None);
    assert_eq!(c.max_body_bytes, 1 << 20);
    assert_eq!(c.memory_budget_bytes, 512 << 20);
    assert!(c.keystore.is_none());
    assert!(!c.replay_headers.keeps("Set-Cookie"));
    assert!(!c.replay_headers.keeps("www-authenticate"));
    assert!(c.replay_headers.keeps("content-type"));
    assert_eq!(parse("{}").unwrap(), c);
}

#[test]
fn a_secret_is_required_strong_and_not_a_placeholder() {
    for (doc, field) in [
        ("{}", "hmac_secret"),
        ("", "hmac_secret"),
        (r#"{"hmac_secret":"short"}"#, "hmac_secret"),
        (r#"{"hmac_secret":"change-me"}"#, "hmac_secret"),
        (
            r#"{"hmac_secret":"replace-with-a-long-random-secret"}"#,
            "hmac_secret",
        ),
        (r#"{"hmac_secret":{"env":"MISSING"}}"#, "hmac_secret.env"),
        (r#"{"hmac_secret":{"file":"/etc/s"}}"#, "hmac_secret.file"),
        (r#"{"hmac_secret":{"env":"A","value":"b"}}"#, "hmac_secret"),
        (r#"{"hmac_secret":7}"#, "hmac_secret"),
        (r#"{"hmac_secrets":[]}"#, "hmac_secrets"),
        (
            r#"{"hmac_secrets":["0123456789abcdef0123456789abcdef","short"]}"#,
            "hmac_secrets[1]",
        ),
        (
            r#"{"hmac_secrets":["0123456789abcdef0123456789abcdef","0123456789abcdef0123456789abcdef"]}"#,
            "hmac_secrets[1]",
        ),
        (
            r#"{"hmac_secret":"0123456789abcdef0123456789abcdef","hmac_secrets":["0123456789abcdef0123456789abcdef"]}"#,
            "hmac_secrets",
        ),
    ] {
        let e = parse_raw(doc, &[]).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
    }
    let weak = parse_raw(r#"{"hmac_secret":{"env":"S"}}"#, &[("S", "too-short")]).unwrap_err();
    assert_eq!(weak.field, "hmac_secret");
    assert!(!weak.to_string().contains("too-short"), "{weak}");
}

#[test]
fn secrets_come_from_the_environment_and_rotate() {
    let new = "n".repeat(40);
    let old = "o".repeat(32);
    let c = parse_raw(
        r#"{"hmac_secrets":[{"env":"NEW"},{"value":"oooooooooooooooooooooooooooooooo"}],
            "keystore":{"cluster":"ks","token":{"env":"KS_TOKEN"}}}"#,
        &[("NEW", &new), ("KS_TOKEN", "tok-123")],
    )
    .unwrap();
    assert_eq!(c.secrets.current(), new.as_bytes());
    assert_eq!(
        c.secrets.previous().collect::<Vec<_>>(),
        vec![old.as_bytes()]
    );
    assert_eq!(c.keystore.unwrap().token.as_deref(), Some("tok-123"));
    assert!(!format!("{:?}", c.secrets).contains(&new));
    let e = parse(r#"{"keystore":{"cluster":"ks","token":{"env":"NOPE"}}}"#).unwrap_err();
    assert_eq!(e.field, "keystore.token.env");
    let e = parse(r#"{"keystore":{"cluster":"ks","token":"replace-with-the-keystore-token"}}"#)
        .unwrap_err();
    assert_eq!(e.field, "keystore.token");
}

#[test]
fn callers_come_from_an_ordered_list_and_anonymous_needs_a_name() {
    let c = parse(
        r#"{"caller":{"sources":[{"header":"X-Api-Key"},
            {"property":["connection","uri_san_peer_certificate"]}]},
            "anonymous_scope":"public"}"#,
    )
    .unwrap();
    assert_eq!(
        c.callers,
        vec![
            CallerSource::Header("x-api-key".into()),
            CallerSource::Property(vec!["connection".into(), "uri_san_peer_certificate".into()]),
        ]
    );
    assert_eq!(c.anonymous_scope.as_deref(), Some("public"));
    assert_eq!(c.callers[0].label(), "header:x-api-key");
    assert_eq!(
        c.callers[1].label(),
        r#"property:["connection","uri_san_peer_certificate"]"#
    );
    assert_ne!(
        CallerSource::Property(vec!["a.b".into(), "c".into()]).label(),
        CallerSource::Property(vec!["a".into(), "b.c".into()]).label()
    );
    // The single-source form and `anonymous: reject` still load.
    let c = parse(r#"{"caller":{"property":["a","b"]},"anonymous":"reject"}"#).unwrap();
    assert_eq!(
        c.callers,
        vec![CallerSource::Property(vec!["a".into(), "b".into()])]
    );
    assert_eq!(c.anonymous_scope, None);
    for (doc, field, says) in [
        (r#"{"anonymous":"allow"}"#, "anonymous", "anonymous_scope"),
        (
            r#"{"anonymous":"reject","anonymous_scope":"p"}"#,
            "anonymous_scope",
            "reject",
        ),
        (r#"{"anonymous_scope":""}"#, "anonymous_scope", "printable"),
        (r#"{"caller":{"sources":[]}}"#, "caller.sources", "at least"),
        (
            r#"{"caller":{"sources":[{"header":"a","property":["b"]}]}}"#,
            "caller.sources[0]",
            "exactly one",
        ),
        (
            r#"{"caller":{"sources":[{"header":"bad name"}]}}"#,
            "caller.sources[0].header",
            "header name",
        ),
        (
            r#"{"caller":{"header":"a","sources":[{"header":"b"}]}}"#,
            "caller",
            "exactly one",
        ),
    ] {
        let e = parse(doc).unwrap_err();
        assert_eq!(e.field, field, "{doc}: {e}");
        assert!(e.reason.contains(says), "{doc}: {e}");
    }
}

#[test]
fn replay_headers_deny_or_allow() {
    let c = parse(r#"{"replay_headers":{"deny":["X-Internal"]}}"#).unwrap();
    assert!(!c.replay_headers.keeps("x-internal"));
    assert!(!c.replay_headers.keeps("set-cookie"));
    assert!(c.replay_headers.keeps("location"));
    let c = parse(r#"{"replay_headers":{"allow":["Content-Type","location"]}}"#).unwrap();
    assert!(c.replay_headers.keeps("content-type"));
    assert!(!c.replay_headers.keeps("x-other"));
    assert!(!c.replay_headers.keeps("set-cookie"));
    for (doc, field) in [
        (r#"{"replay_headers":{}}"#, "replay_headers"),
        (
            r#"{"replay_headers":{"deny":[],"allow":[]}}"#,
            "replay_headers",
        ),
        (
            r#"{"replay_headers":{"allow":["a b"]}}"#,
            "replay_headers.allow[0]",
        ),
    ] {
        assert_eq!(parse(doc).unwrap_err().field, field, "{doc}");
    }
}

#[test]
fn max_response_bytes_must_fit_the_key_store() {
    let e = parse(r#"{"max_response_bytes":16777216,"keystore":{"cluster":"ks"}}"#).unwrap_err();
    assert_eq!(e.field, "max_response_bytes");
    assert!(e.reason.contains("keystore.max_record_bytes"), "{e}");
    // Without a key store only L1 holds records: the old bound applies.
    parse(r#"{"max_response_bytes":16777216}"#).unwrap();
    let fits = 3 * 1024 * 1024 - 4096;
    parse(&format!(
        r#"{{"max_response_bytes":{fits},"keystore":{{"cluster":"ks"}}}}"#
    ))
    .unwrap();
    parse(&format!(
        r#"{{"max_response_bytes":{},"keystore":{{"cluster":"ks"}}}}"#,
        fits + 1
    ))
    .unwrap_err();
    parse(r#"{"max_response_bytes":16777216,"keystore":{"cluster":"ks","max_record_bytes":17000000}}"#)
        .unwrap();
}

#[test]
fn rules_inherit_top_level_settings() {
    let c = parse(
        r#"{"methods":["post"],"retention_s":60,"failure_mode":"fail_open",
            "routes":[{"exact":"/payments","required":true},{"prefix":"/x","methods":["PUT"],"retention_s":5}]}"#,
    )
    .unwrap();
    assert_eq!(c.routes[0].methods, vec!["POST"]);
    assert_eq!(c.routes[0].retention_ms, 60_000);
    assert_eq!(c.routes[0].failure_mode, FailureMode::FailOpen);
    assert!(c.routes[0].required);
    assert_eq!(c.routes[1].methods, vec!["PUT"]);
    assert_eq!(c.routes[1].retention_ms, 5_000);
    assert!(c.route_for("POST", "/payments?x=1").is_some());
    assert!(c.route_for("POST", "/payments/1").is_none());
    assert!(c.route_for("GET", "/payments").is_none());
    assert!(c.route_for("PUT", "/x/y").is_some());
}

#[test]
fn errors_name_the_field() {
    let cases = [
        (r#"{"max_body_bytes":"big"}"#, "max_body_bytes"),
        (r#"{"max_body_bytes":0}"#, "max_body_bytes"),
        (r#"{"memory_budget_bytes":"lots"}"#, "memory_budget_bytes"),
        (r#"{"memory_budget_bytes":1000}"#, "memory_budget_bytes"),
        (
            r#"{"memory_budget_bytes":1073741824}"#,
            "memory_budget_bytes",
        ),
        (
            r#"{"memory_budget_bytes":2097152,"max_body_bytes":4194304}"#,
            "memory_budget_bytes",
        ),
        (r#"{"bogus":1}"#, "bogus"),
        (r#"{"routes":[{"prefix":"/a","exact":"/b"}]}"#, "routes[0]"),
        (r#"{"routes":[{"prefix":"a"}]}"#, "routes[0].prefix"),
        (
            r#"{"routes":[{"prefix":"/a","methods":[]}]}"#,
            "routes[0].methods",
        ),
        (r#"{"header_name":"bad name"}"#, "header_name"),
        (r#"{"caller":{"header":"a","property":["b"]}}"#, "caller"),
        (r#"{"caller":{"header":"a b"}}"#, "caller.header"),
        (r#"{"failure_mode":"maybe"}"#, "failure_mode"),
        (r#"{"keystore":{}}"#, "keystore.cluster"),
        (
            r#"{"keystore":{"cluster":"k","timeout_ms":0}}"#,
            "keystore.timeout_ms",
        ),
        (r#"{"hmac_secret":"","hmac_secrets":null}"#, "hmac_secret"),
        (r#"{"l1_slots":0}"#, "l1_slots"),
        (r#"{"headers_mode":"later"}"#, "headers_mode"),
        (r#"{"unknown_outcome":"maybe"}"#, "unknown_outcome"),
        (
            r#"{"routes":[{"prefix":"/","execution":"detached"}]}"#,
            "routes[0].upstream_cluster",
        ),
        (
            r#"{"routes":[{"prefix":"/","upstream_cluster":"up"}]}"#,
            "routes[0].upstream_cluster",
        ),
        (
            r#"{"routes":[{"prefix":"/","execution":"detached","upstream_cluster":"up","upstream_timeout_ms":0}]}"#,
            "routes[0].upstream_timeout_ms",
        ),
        (r#"{"in_flight":"later"}"#, "in_flight"),
        (
            r#"{"routes":[{"prefix":"/","mode":"watch"}]}"#,
            "routes[0].mode",
        ),
        (r#"{"max_wait_ms":60001}"#, "max_wait_ms"),
        (
            r#"{"routes":[{"prefix":"/","key_field":0}]}"#,
            "routes[0].key_field",
        ),
        (
            r#"{"routes":[{"prefix":"/","key_field":536870912}]}"#,
            "routes[0].key_field",
        ),
        (
            r#"{"routes":[{"prefix":"/","unknown_hold_ms":99999999}]}"#,
            "routes[0].unknown_hold_ms",
        ),
        ("\"text\"", "(document)"),
        ("{\"retention_s\": 5", "(document)"),
    ];
    for (doc, field) in cases {
        let e = parse(doc).unwrap_err();
        assert!(
            e.field.contains(field),
            "{doc}: got field {:?} ({})",
            e.field,
            e.reason
        );
        assert!(e.to_string().contains(field));
    }
}

#[test]
fn keystore_defaults() {
    let c = parse(r#"{"keystore":{"cluster":"ks"}}"#).unwrap();
    let k = c.keystore.unwrap();
    assert_eq!(k.authority, "ks");
    assert_eq!(k.timeout_ms, 500);
    assert_eq!(k.path_prefix, "/v1");
    assert_eq!(k.body_format, idempotency_protocol::Format::Compact);
    assert_eq!((k.batch_max_entries, k.batches_in_flight), (32, 2));
}

#[test]
fn keystore_batches_are_bounded_and_zero_turns_them_off() {
    let batch = |fields: &str| {
        parse(&format!(r#"{{"keystore":{{"cluster":"ks",{fields}}}}}"#)).map(|c| {
            c.keystore
                .map(|k| (k.batch_max_entries, k.batches_in_flight))
        })
    };
    assert_eq!(batch(r#""batch_max_entries":0"#).unwrap(), Some((0, 2)));
    assert_eq!(
        batch(r#""batch_max_entries":256,"batches_in_flight":1"#).unwrap(),
        Some((256, 1))
    );
    for (fields, field) in [
        (r#""batch_max_entries":257"#, "keystore.batch_max_entries"),
        (r#""batches_in_flight":0"#, "keystore.batches_in_flight"),
        (r#""batches_in_flight":65"#, "keystore.batches_in_flight"),
    ] {
        let e = batch(fields).unwrap_err();
        assert!(e.to_string().contains(field), "{fields}: {e}");
    }
}

#[test]
fn keystore_body_format_is_compact_or_json() {
    let format = |f: &str| {
        parse(&format!(
            r#"{{"keystore":{{"cluster":"ks","body_format":"{f}"}}}}"#
        ))
        .map(|c| c.keystore.unwrap().body_format)
    };
    assert_eq!(format("json").unwrap(), idempotency_protocol::Format::Json);
    assert_eq!(
        format("compact").unwrap(),
        idempotency_protocol::Format::Compact
    );
    let e = format("postcard").unwrap_err();
    assert!(e.to_string().contains("keystore.body_format"), "{e}");
}

#[test]
fn the_expiry_header_is_on_by_default_renamed_or_off() {
    let on = |doc: &str| parse(doc).unwrap().expires_header;
    assert_eq!(on("{}").as_deref(), Some("idempotency-expires"));
    assert_eq!(
        on(r#"{"expires_header":"X-Key-Expires"}"#).as_deref(),
        Some("x-key-expires"),
        "lower-case, as Envoy presents header names"
    );
    assert_eq!(on(r#"{"expires_header":null}"#), None);
    assert_eq!(on(r#"{"expires_header":false}"#), None);
    for doc in [
        r#"{"expires_header":""}"#,
        r#"{"expires_header":"bad name"}"#,
        r#"{"expires_header":"idempotent-replayed"}"#,
        r#"{"expires_header":true}"#,
        r#"{"expires_header":7}"#,
    ] {
        let e = parse(doc).unwrap_err();
        assert_eq!(e.field, "expires_header", "{doc}: {}", e.reason);
    }
}

#[test]
fn routed_replays_are_validated_at_load() {
    let c = parse("").unwrap();
    assert!(!c.routed_replay && !c.replay_listener);
    assert_eq!(c.routes[0].replay, Replay::Local);
    let c = parse(
        r#"{"routed_replay":true,"routes":[{"prefix":"/a","replay":"routed"},{"prefix":"/b"}]}"#,
    )
    .unwrap();
    assert!(c.routed_replay);
    assert_eq!(
        (c.routes[0].replay, c.routes[1].replay),
        (Replay::Routed, Replay::Local)
    );
    let c =
        parse(r#"{"routed_replay":true,"replay":"routed","routes":[{"prefix":"/a"}]}"#).unwrap();
    assert_eq!(c.routes[0].replay, Replay::Routed);
    assert!(
        parse(r#"{"replay_listener":true}"#)
            .unwrap()
            .replay_listener
    );
    let field = |s: &str| parse(s).unwrap_err().field;
    assert_eq!(
        field(r#"{"routes":[{"prefix":"/a","replay":"routed"}]}"#),
        "routes[0].replay"
    );
    assert_eq!(field(r#"{"replay":"routed"}"#), "replay");
    assert_eq!(field(r#"{"replay":"elsewhere"}"#), "replay");
    assert_eq!(
        field(r#"{"routed_replay":true,"replay_listener":true}"#),
        "replay_listener"
    );
    assert_eq!(
        field(r#"{"routed_replay":true,"headers_mode":"stream"}"#),
        "routed_replay"
    );
}
