//! What a client must see: RFC 9457 problems, byte-exact replays, a held key that completes.

use std::time::{Duration, Instant};

use http::HeaderValue;
use serde_json::Value;

use super::requests::Resp;

/// Sends `send_once()` every 100 ms while the key is held (409 problem) until it answers 201,
/// bounded by `within`. Returns the 201 and how many 409s came before it; any other answer fails.
pub async fn until_201<F>(within: Duration, mut send_once: impl FnMut() -> F) -> (Resp, u32)
where
    F: std::future::Future<Output = Resp>,
{
    let deadline = Instant::now() + within;
    let mut conflicts = 0;
    loop {
        let resp = send_once().await;
        match resp.status {
            201 => return (resp, conflicts),
            409 => {
                assert_problem(&resp, 409);
                conflicts += 1;
            }
            _ => panic!(
                "unexpected answer while the key is held: {}",
                resp.describe()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "the key is still held after {within:?} ({conflicts} answers 409)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts an RFC 9457 problem answer with this status.
pub fn assert_problem(resp: &Resp, status: u16) -> Value {
    assert_eq!(
        resp.status,
        status,
        "expected a {status} problem, got {}",
        resp.describe()
    );
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type should be application/problem+json, got {}",
        resp.describe()
    );
    let problem = resp.json();
    for field in ["type", "title", "detail"] {
        assert!(
            problem[field].is_string(),
            "problem field {field} missing: {problem}"
        );
    }
    assert_eq!(problem["status"], status, "problem status: {problem}");
    assert!(
        !resp.replayed(),
        "a problem is not a replay: {}",
        resp.describe()
    );
    problem
}

/// Headers that may legitimately differ between an answer and its replay.
const VOLATILE_HEADERS: &[&str] = &[
    "date",
    "server",
    "x-envoy-upstream-service-time",
    "idempotent-replayed",
    "connection",
    "keep-alive",
    "transfer-encoding",
];

/// Asserts that `replay` is a byte-exact replay of `original`: same status, body bytes and
/// (non-volatile) headers, plus `Idempotent-Replayed: true`.
pub fn assert_replay(original: &Resp, replay: &Resp) {
    assert!(
        !original.replayed(),
        "the original is not a replay: {}",
        original.describe()
    );
    assert_eq!(
        replay.status,
        original.status,
        "replay status: {}",
        replay.describe()
    );
    assert_eq!(
        replay.body,
        original.body,
        "replay body differs: {} vs {}",
        replay.describe(),
        original.describe()
    );
    assert!(
        replay.replayed(),
        "missing idempotent-replayed: true: {}",
        replay.describe()
    );
    for (name, value) in &original.headers {
        if VOLATILE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let replayed: Vec<&HeaderValue> = replay.headers.get_all(name).iter().collect();
        assert!(
            replayed.contains(&value),
            "replay lacks header {name}: {value:?}; original {} replay {}",
            original.describe(),
            replay.describe()
        );
    }
}
