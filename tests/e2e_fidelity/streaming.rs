//! A streamed first answer through an inline route with the key store on Redis: the client gets
//! each event as the upstream sends it, a retry after the end replays the whole stream byte-exact
//! (from L1 on the same gateway, from the key store on another), and a client that leaves
//! mid-stream leaves the key locked as "outcome unknown" (README, behaviour table).

use std::collections::HashMap;
use std::time::Duration;

use idempotency_testkit::redis::RedisServer;
use serde_json::json;

use crate::recorder::{Recorder, Script};
use crate::support::{Envoy, EnvoyOptions, KeystoreProcess, Plugin, StoreBackend};
use crate::wire::H1;

const EVENTS: usize = 6;
const GAP: Duration = Duration::from_millis(300);
/// How much later than the upstream sent it an event may reach the client.
const LIVE: Duration = Duration::from_millis(150);

fn sse_script() -> Script {
    let mut script = Script {
        head: b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            .to_vec(),
        ..Script::default()
    };
    for i in 0..EVENTS {
        let event = format!("data: event {i}\n\n");
        let pause = if i == 0 { Duration::ZERO } else { GAP };
        script.parts.push((
            pause,
            format!("{:x}\r\n{event}\r\n", event.len()).into_bytes(),
        ));
    }
    script.parts.push((Duration::ZERO, b"0\r\n\r\n".to_vec()));
    script
}

fn request(key: &str) -> Vec<u8> {
    format!(
        "POST /fid/live HTTP/1.1\r\nhost: fidelity.test\r\nidempotency-key: {key}\r\naccept: text/event-stream\r\ncontent-length: 2\r\n\r\n{{}}"
    )
    .into_bytes()
}

struct Stack {
    upstream: Recorder,
    a: Envoy,
    b: Envoy,
    _keystore: KeystoreProcess,
    _redis: RedisServer,
}

async fn stack() -> Stack {
    let mut scripts = HashMap::new();
    scripts.insert("/fid/live".to_owned(), sse_script());
    let upstream = Recorder::start(scripts).await;
    let redis = RedisServer::durable();
    let keystore = KeystoreProcess::start(StoreBackend::Redis(redis.url()), None).await;
    let plugin = Plugin::signed("streaming-e2e-secret-0123456789abcdef0123456789abcdef")
        .set(
            "routes",
            json!([{"prefix": "/fid/", "methods": ["POST"], "unknown_hold_ms": 0}]),
        )
        .set("anonymous_scope", "streaming")
        .keystore(2000, None)
        .json();
    let options = EnvoyOptions::with_filter(upstream.port, plugin).keystore(keystore.port);
    let (a, b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    Stack {
        upstream,
        a,
        b,
        _keystore: keystore,
        _redis: redis,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_first_answer_arrives_live_and_a_retry_replays_all_of_it() {
    let stack = stack().await;
    let mut conn = H1::connect(stack.a.port).await;
    conn.write(&request("live-1")).await;
    let first = conn.answer(false).await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.framing, "chunked",
        "streamed, not buffered into one piece"
    );
    let mut sent_so_far = 0;
    let mut latest = Duration::ZERO;
    for i in 0..EVENTS {
        sent_so_far += format!("data: event {i}\n\n").len();
        let at = first.arrival_of(sent_so_far).expect("every event arrives");
        // The upstream sends event i at i × GAP after it got the request (plus the claim).
        let due = GAP * u32::try_from(i).unwrap();
        assert!(
            at <= due + LIVE,
            "event {i} arrived at {at:?}, sent at about {due:?}: {:?}",
            first.arrivals
        );
        latest = latest.max(at.saturating_sub(due));
    }
    println!("STREAMING|the latest event came {latest:?} after the upstream's schedule");
    assert_eq!(stack.upstream.take().len(), 1);

    for (gateway, via) in [(&stack.a, "L1"), (&stack.b, "the key store")] {
        let mut conn = H1::connect(gateway.port).await;
        conn.write(&request("live-1")).await;
        let replay = conn.answer(false).await;
        assert_eq!(replay.status, 200, "replay via {via}");
        assert_eq!(
            replay.body, first.body,
            "the whole stream, byte-exact, via {via}"
        );
        assert!(
            replay
                .headers
                .iter()
                .any(|(n, v)| n == b"idempotent-replayed" && v == b"true"),
            "a replay via {via}"
        );
    }
    assert!(
        stack.upstream.take().is_empty(),
        "replays never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_stream_leaves_the_key_locked() {
    let stack = stack().await;
    let mut conn = H1::connect(stack.a.port).await;
    conn.write(&request("cut-1")).await;
    let head = conn.read_until(b"data: event 0").await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    drop(conn);
    // The gateway locks the key once it sees the client gone (its own counter says so).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.a.metric("unknown_outcome").await.unwrap_or(0) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no unknown outcome");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Gateway `a` has the lock in L1; the key store gets it from `a`'s root context (the
    // stream was gone), so `b` may still see the claim in flight for a moment, never a new run.
    for gateway in [&stack.a, &stack.b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut conn = H1::connect(gateway.port).await;
            conn.write(&request("cut-1")).await;
            let retry = conn.answer(false).await;
            let text = String::from_utf8_lossy(&retry.body).into_owned();
            if retry.status == 410 {
                assert!(text.contains("outcome-unknown"), "{text}");
                break;
            }
            assert_eq!(retry.status, 409, "{text}");
            assert!(text.contains("request-in-progress"), "{text}");
            assert!(tokio::time::Instant::now() < deadline, "never locked");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(stack.upstream.take().len(), 1, "executed once");
}
