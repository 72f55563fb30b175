//! Look-alike paths (`//payments`, `/payments/../payments`) are covered through the shipped
//! single-gateway config.

use super::*;

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
