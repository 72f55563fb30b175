//! Smoke test of the binary: flags and env, the "listening on" line, SIGTERM shutdown.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn binary_listens_authenticates_and_stops_on_sigterm() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_idempotency-keystore"))
        .args(["--listen", "127.0.0.1:0", "--backend", "memory"])
        .env("KEYSTORE_TOKEN", "tok")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line.strip_prefix("listening on 127.0.0.1:").expect(&line);
    let base = format!("http://127.0.0.1:{addr}");
    let http = reqwest::Client::new();
    let claim =
        serde_json::json!({"key": "a".repeat(64), "fingerprint": "b".repeat(64), "lease_ms": 100});
    let resp = http
        .post(format!("{base}/v1/claim"))
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = http
        .post(format!("{base}/v1/claim"))
        .bearer_auth("tok")
        .json(&claim)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    // Envoy reaches the key store over one multiplexed HTTP/2 connection (h2c, prior knowledge);
    // HTTP/1.1 (above) keeps working for curl and the tests.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut fresh = claim.clone();
    fresh["key"] = "e".repeat(64).into();
    let resp = h2c
        .post(format!("{base}/v1/claim"))
        .bearer_auth("tok")
        .json(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["outcome"], "claimed", "{answer}");
    let status = http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);

    // A claim waiting on a held key when SIGTERM comes answers at once and lets the drain end.
    let held = serde_json::json!({"key": "c".repeat(64), "fingerprint": "d".repeat(64),
        "lease_ms": 60_000});
    let resp = http
        .post(format!("{base}/v1/claim"))
        .bearer_auth("tok")
        .json(&held)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut waiting = held.clone();
    waiting["wait_ms"] = 60_000.into();
    let waiter = tokio::spawn(
        http.post(format!("{base}/v1/claim"))
            .bearer_auth("tok")
            .json(&waiting)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = std::time::Instant::now();

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let answer: serde_json::Value = waiter.await.unwrap().unwrap().json().await.unwrap();
    assert_eq!(answer["outcome"], "in_flight", "{answer}");
    assert!(stopping.elapsed() < Duration::from_secs(5));
}
