//! The harness itself, without the filter: Envoy in front of payments-demo over HTTP/1.1 and
//! h2c (with request trailers). If this fails, the other end-to-end failures are not the filter's.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use support::*;

#[tokio::test]
async fn envoy_without_filter_proxies_to_payments() {
    let upstream = Upstream::start().await;
    let envoy = Envoy::start(&EnvoyOptions {
        plugin: None,
        ..EnvoyOptions::with_filter(upstream.port, "")
    })
    .await;

    let http = client();
    let created = send_payment(&http, &envoy, "alice", Some(&new_key()), r#"{"amount":1}"#).await;
    assert_eq!(created.status, 201, "{}", created.describe());
    assert_eq!(created.json()["request"]["amount"], 1);
    assert!(!created.replayed());

    // h2c through Envoy (codec AUTO), plain and with request trailers.
    let h2 = send_payment(&h2c_client(), &envoy, "alice", None, r#"{"amount":2}"#).await;
    assert_eq!(h2.status, 201, "{}", h2.describe());
    let trailers = h2c_with_trailers(
        envoy.port,
        "POST",
        "/payments",
        &[
            ("content-type", "application/json"),
            ("authorization", "alice"),
        ],
        br#"{"amount":3}"#,
        &[("x-checksum", "abc")],
    )
    .await;
    assert_eq!(trailers.status, 201, "{}", trailers.describe());
    assert_eq!(trailers.json()["request"]["amount"], 3);

    // Without the filter every POST executes.
    assert_eq!(upstream.post_requests().await, 3);
    let list = send(http.get(envoy.url("/payments"))).await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json().as_array().map(Vec::len), Some(3));
}
