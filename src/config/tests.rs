use super::*;

fn parse(s: &str) -> Result<Config, ConfigError> {
    Config::parse(s.as_bytes())
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
    assert_eq!(c.routes[0].in_flight, InFlight::Conflict);
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
        (InFlight::Wait, 500)
    );
    assert_eq!(c.caller, CallerSource::Header("authorization".into()));
    assert_eq!(c.max_body_bytes, 1 << 20);
    assert!(c.default_secret);
    assert!(c.keystore.is_none());
    assert_eq!(parse("{}").unwrap(), c);
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
        (r#"{"bogus":1}"#, "bogus"),
        (r#"{"routes":[{"prefix":"/a","exact":"/b"}]}"#, "routes[0]"),
        (r#"{"routes":[{"prefix":"a"}]}"#, "routes[0].prefix"),
        (
            r#"{"routes":[{"prefix":"/a","methods":[]}]}"#,
            "routes[0].methods",
        ),
        (r#"{"header_name":"bad name"}"#, "header_name"),
        (r#"{"caller":{"header":"a","property":["b"]}}"#, "caller"),
        (r#"{"failure_mode":"maybe"}"#, "failure_mode"),
        (r#"{"keystore":{}}"#, "keystore.cluster"),
        (
            r#"{"keystore":{"cluster":"k","timeout_ms":0}}"#,
            "keystore.timeout_ms",
        ),
        (r#"{"hmac_secret":""}"#, "hmac_secret"),
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
}
