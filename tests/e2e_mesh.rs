//! Mesh-wide end-to-end tests: two real Envoys (gateways A and B, `--concurrency 2`
//! each) in front of one payments upstream, sharing the real `idempotency-keystore` process on the
//! memory backend or on a real `redis-server` (appendonly, fsync always). Each test owns its
//! processes and ports.
//!
//! - replay across gateways (and 422 for another payload, a separate execution for another
//!   caller), 100 concurrent duplicates over both, on every backend;
//! - a request in flight on one gateway: 409 with `Retry-After` on the other; a 5xx on one
//!   gateway frees the key for the whole mesh;
//! - no key store from the start with fail_open: forwarded, and replayed from the near cache;
//! - the key store SIGKILLed mid-load, per failure mode, then restarted on the same port;
//! - the key store and Redis restarted: completed records still replay on both gateways;
//! - a gateway SIGKILLed while it holds a claim: 409 on the other until the lease expires, then
//!   the key executes again.
//!
//! Needs `make build` (the `.wasm` and the binaries), Envoy, and `redis-server` for the Redis
//! backend (`scripts/setup.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotency_testkit::redis::RedisServer;
use support::keystore::{KeystoreProcess, StoreBackend};
use support::*;

/// The bearer token the key store requires and the filter sends.
const TOKEN: &str = "mesh-e2e-token";
const BODY: &str = r#"{"amount":4200,"currency":"EUR"}"#;

/// Which backend a mesh's key store runs.
#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

/// The demo's route and caller, the key store with its token, and the given failure mode and
/// claim lease.
fn plugin(failure_mode: &str, lock_lease_ms: u64) -> String {
    Plugin::payments("mesh-e2e-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("failure_mode", failure_mode)
        .set("lock_lease_ms", lock_lease_ms)
        .keystore(1000, Some(TOKEN))
        .json()
}

/// Upstream, key store (and its Redis), two gateways using it.
struct Mesh {
    upstream: Upstream,
    keystore: KeystoreProcess,
    redis: Option<RedisServer>,
    a: Envoy,
    b: Envoy,
}

async fn mesh(backend: Backend, plugin: String) -> Mesh {
    let redis = match backend {
        Backend::Memory => None,
        Backend::Redis => Some(RedisServer::durable()),
    };
    let store = match &redis {
        None => StoreBackend::Memory,
        Some(redis) => StoreBackend::Redis(redis.url()),
    };
    let (upstream, keystore) = tokio::join!(
        Upstream::start(),
        KeystoreProcess::start(store, Some(TOKEN))
    );
    let options = EnvoyOptions::with_filter(upstream.port, plugin).keystore(keystore.port);
    let (a, b) = tokio::join!(Envoy::start(&options), Envoy::start(&options));
    Mesh {
        upstream,
        keystore,
        redis,
        a,
        b,
    }
}

/// Alice's `POST /payments` to a gateway's URL (usable from a spawned task: no borrow of the Envoy).
fn post_to(http: &reqwest::Client, url: &str, key: &str) -> reqwest::RequestBuilder {
    post_as(http, url, "Bearer alice", key, BODY)
}

/// `POST /payments` to a gateway's URL as `caller`, with `key` and `body`.
fn post_as(
    http: &reqwest::Client,
    url: &str,
    caller: &str,
    key: &str,
    body: &'static str,
) -> reqwest::RequestBuilder {
    http.post(url)
        .header("content-type", "application/json")
        .header("authorization", caller)
        .header("idempotency-key", format!("\"{key}\""))
        .body(body)
}

/// A first execution: 201, not a replay, a JSON payment with an id.
fn assert_created(resp: &Resp, what: &str) {
    assert_eq!(resp.status, 201, "{what}: {}", resp.describe());
    assert!(!resp.replayed(), "{what} must execute: {}", resp.describe());
    assert!(
        resp.json()["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("pay_")),
        "{what}: {}",
        resp.describe()
    );
}

/// Both gateways still run and admin `/ready` answers `LIVE`.
async fn assert_gateways_alive(mesh: &mut Mesh) {
    for (name, envoy) in [("A", &mut mesh.a), ("B", &mut mesh.b)] {
        assert!(
            envoy.process_alive(),
            "gateway {name} exited; log:\n{}",
            envoy.log_tail(60)
        );
        let ready = envoy.admin_ready().await;
        assert_eq!(
            ready,
            Ok((200, "LIVE".to_owned())),
            "gateway {name} admin /ready; log:\n{}",
            envoy.log_tail(60)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Replay across gateways, concurrent duplicates: on every backend
// ---------------------------------------------------------------------------------------------

async fn response_recorded_on_a_replays_on_b(backend: Backend) {
    let mesh = mesh(backend, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();

    let first = send(post_to(&http, &mesh.a.url("/payments"), &key)).await;
    assert_created(&first, "the first request on A");
    let on_b = send(post_to(&http, &mesh.b.url("/payments"), &key)).await;
    assert_replay(&first, &on_b);
    assert_eq!(on_b.body, first.body, "byte-exact body");
    assert_eq!(on_b.header("idempotent-replayed"), Some("true"));
    // And back on A (its near cache), still one execution.
    let on_a = send(post_to(&http, &mesh.a.url("/payments"), &key)).await;
    assert_replay(&first, &on_a);

    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");
    assert_eq!(mesh.a.counter("executed").await, 1);
    assert_eq!(mesh.b.counter("replayed").await, 1);
    assert_eq!(mesh.b.metric("executed").await.unwrap_or(0), 0);
    if let Some(redis) = &mesh.redis {
        // The record went through the key store into Redis (only keyed hashes, no raw key).
        let keys =
            idempotency_testkit::redis::redis_command(redis.port, "KEYS *").unwrap_or_default();
        assert!(
            keys.starts_with('*') && !keys.starts_with("*0"),
            "Redis holds no record: {keys:?}"
        );
        assert!(
            !keys.contains(&key),
            "the raw key is stored in Redis: {keys:?}"
        );
    }

    // The same key with another payload, on B: 422. Another caller's same key: its own execution.
    let url_b = mesh.b.url("/payments");
    let other = r#"{"amount":101}"#;
    let mismatch = send(post_as(&http, &url_b, "Bearer alice", &key, other)).await;
    assert_problem(&mismatch, 422);
    let bob = send(post_as(&http, &url_b, "Bearer bob", &key, BODY)).await;
    assert_created(&bob, "another caller's request with the same key");
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");
}

async fn hundred_concurrent_duplicates_over_both_gateways_create_one_payment(backend: Backend) {
    let mesh = mesh(backend, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();
    let (url_a, url_b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));

    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = if i % 2 == 0 { &url_a } else { &url_b };
            // The upstream holds the winner a little so that many duplicates overlap it.
            let req = post_to(&http, url, &key).header("x-demo-delay-ms", "300");
            tokio::spawn(send(req))
        })
        .collect();
    let (mut created, mut replayed, mut conflicts) = (0, 0, 0);
    let mut bodies = HashSet::new();
    for task in tasks {
        let answer = task.await.unwrap();
        match answer.status {
            201 => {
                if answer.replayed() {
                    replayed += 1;
                } else {
                    created += 1;
                }
                bodies.insert(answer.body.clone());
            }
            409 => {
                assert_problem(&answer, 409);
                conflicts += 1;
            }
            _ => panic!("unexpected answer: {}", answer.describe()),
        }
    }
    assert_eq!(
        created, 1,
        "exactly one answer comes from the upstream (replayed {replayed}, 409 {conflicts})"
    );
    assert_eq!(bodies.len(), 1, "every 201 carries the same payment");
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");

    // Whatever the race looked like, a retry on either gateway now replays that payment.
    let body = bodies.into_iter().next().unwrap();
    for envoy in [&mesh.a, &mesh.b] {
        let retry = send(post_to(&http, &envoy.url("/payments"), &key)).await;
        assert_eq!(retry.status, 201, "{}", retry.describe());
        assert!(retry.replayed(), "{}", retry.describe());
        assert_eq!(retry.body, body);
    }
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
}

macro_rules! on_every_backend {
    ($($backend:ident => $module:ident),* $(,)?) => {$(
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn response_recorded_on_a_replays_on_b() {
                super::response_recorded_on_a_replays_on_b(Backend::$backend).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn hundred_concurrent_duplicates_over_both_gateways_create_one_payment() {
                super::hundred_concurrent_duplicates_over_both_gateways_create_one_payment(
                    Backend::$backend,
                )
                .await;
            }
        }
    )*};
}

on_every_backend!(Memory => memory, Redis => redis_backend);

// ---------------------------------------------------------------------------------------------
// 2. In flight on one gateway, failed on one gateway
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn in_flight_on_one_gateway_conflicts_on_the_other() {
    let mesh = mesh(Backend::Memory, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();
    let (url_a, url_b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));

    let slow = tokio::spawn(send(
        post_to(&http, &url_a, &key).header("x-demo-delay-ms", "1500"),
    ));
    mesh.upstream.wait_post_requests(1).await;

    let conflict = send(post_to(&http, &url_b, &key)).await;
    assert_problem(&conflict, 409);
    assert!(
        conflict.header("retry-after").is_some(),
        "{}",
        conflict.describe()
    );

    let first = slow.await.unwrap();
    assert_created(&first, "the first request on A");
    let retry = send(post_to(&http, &url_b, &key)).await;
    assert_replay(&first, &retry);
    assert_eq!(mesh.upstream.post_requests().await, 1, "upstream POSTs");
}

#[tokio::test]
async fn a_5xx_releases_the_claim_for_the_whole_mesh() {
    let mesh = mesh(Backend::Memory, plugin("fail_closed", 30_000)).await;
    let http = client();
    let key = new_key();
    let (url_a, url_b) = (mesh.a.url("/payments"), mesh.b.url("/payments"));

    let failed = send(post_to(&http, &url_a, &key).header("x-demo-status", "502")).await;
    assert_eq!(failed.status, 502, "{}", failed.describe());

    let on_b = send(post_to(&http, &url_b, &key)).await;
    assert_created(&on_b, "the retry after a 5xx");
    let on_a = send(post_to(&http, &url_a, &key)).await;
    assert_replay(&on_b, &on_a);
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");
    assert_eq!(mesh.upstream.payment_count().await, 1, "payments created");
}

// ---------------------------------------------------------------------------------------------
// 3. The key store unreachable, or killed mid-load
// ---------------------------------------------------------------------------------------------

/// Before the key store was killed (and reaped), or after.
const BEFORE_KILL: u8 = 0;
const AFTER_KILL: u8 = 1;

/// One answer of the load loop.
struct Sample {
    /// Index into [A, B].
    gateway: usize,
    /// The phase when the request was sent.
    phase: u8,
    resp: Resp,
}

/// A loop of fresh-key POSTs, alternating gateways, until `stop`.
struct Load {
    samples: Arc<Mutex<Vec<Sample>>>,
    phase: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(mesh: &Mesh) -> Load {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let phase = Arc::new(AtomicU8::new(BEFORE_KILL));
        let stop = Arc::new(AtomicBool::new(false));
        let urls = [mesh.a.url("/payments"), mesh.b.url("/payments")];
        let task = tokio::spawn({
            let (samples, phase, stop) = (samples.clone(), phase.clone(), stop.clone());
            async move {
                let http = client();
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let gateway = i % 2;
                    let sent_in = phase.load(Ordering::SeqCst);
                    let resp = send(post_to(&http, &urls[gateway], &new_key())).await;
                    samples.lock().unwrap().push(Sample {
                        gateway,
                        phase: sent_in,
                        resp,
                    });
                    i += 1;
                }
            }
        });
        Load {
            samples,
            phase,
            stop,
            task,
        }
    }

    fn count(&self, phase: u8) -> usize {
        let samples = self.samples.lock().unwrap();
        samples.iter().filter(|s| s.phase == phase).count()
    }

    /// Polls until `n` answers to requests sent in `phase` arrived.
    async fn wait_for(&self, phase: u8, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.count(phase) < n {
            assert!(
                !self.task.is_finished(),
                "the load loop stopped (a request failed?)"
            );
            assert!(
                Instant::now() < deadline,
                "only {} answers in phase {phase} after 20 s",
                self.count(phase)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("the load loop panicked");
        Arc::try_unwrap(self.samples)
            .ok()
            .expect("samples still shared")
            .into_inner()
            .unwrap()
    }
}

/// `[A, B]` values of a filter counter.
async fn counters(mesh: &Mesh, name: &str) -> [u64; 2] {
    [
        mesh.a.metric(name).await.unwrap_or(0),
        mesh.b.metric(name).await.unwrap_or(0),
    ]
}

/// After the key store is back: a fresh key executes on one gateway and replays on the other
/// (only the key store can tell the other gateway), in both directions.
async fn assert_mesh_dedupe_works(mesh: &Mesh, what: &str) {
    let http = client();
    for (first, second) in [(&mesh.a, &mesh.b), (&mesh.b, &mesh.a)] {
        let key = new_key();
        let before = mesh.upstream.post_requests().await;
        let created = send(post_to(&http, &first.url("/payments"), &key)).await;
        assert_created(&created, what);
        let replay = send(post_to(&http, &second.url("/payments"), &key)).await;
        assert_replay(&created, &replay);
        assert_eq!(
            mesh.upstream.post_requests().await,
            before + 1,
            "{what}: one execution"
        );
    }
}

async fn key_store_killed_mid_load(failure_mode: &str) {
    let fail_open = failure_mode == "fail_open";
    let mut mesh = mesh(Backend::Memory, plugin(failure_mode, 30_000)).await;
    let load = Load::start(&mesh);
    load.wait_for(BEFORE_KILL, 6).await;

    let store_error_before = counters(&mesh, "store_error").await;
    let fail_open_before = counters(&mesh, "fail_open").await;
    mesh.keystore.kill().await;
    load.phase.store(AFTER_KILL, Ordering::SeqCst);
    load.wait_for(AFTER_KILL, 16).await;
    let samples = load.finish().await;

    let mut after_per_gateway = [0u64; 2];
    let mut created = 0u64;
    for sample in &samples {
        let resp = &sample.resp;
        if resp.status == 201 {
            assert_created(resp, "a fresh key");
            created += 1;
        }
        match (sample.phase, resp.status) {
            // Before the kill, and with fail_open throughout: every fresh key executes.
            (_, 201) if fail_open || sample.phase == BEFORE_KILL => {}
            _ if fail_open => panic!(
                "fail_open: a fresh key must be forwarded (phase {}): {}",
                sample.phase,
                resp.describe()
            ),
            // fail_closed, sent while the key store was being killed: either outcome.
            (BEFORE_KILL, _) => {
                assert_problem(resp, 503);
            }
            // fail_closed, sent once the key store was gone.
            _ => {
                let problem = assert_problem(resp, 503);
                assert_eq!(
                    problem["type"], "urn:envoy-idempotency:problem:store-unavailable",
                    "{problem}"
                );
            }
        }
        if sample.phase == AFTER_KILL {
            after_per_gateway[sample.gateway] += 1;
        }
    }
    assert_eq!(
        mesh.upstream.post_requests().await,
        created,
        "only the 201s reached the upstream"
    );

    let store_error = counters(&mesh, "store_error").await;
    let fail_open_count = counters(&mesh, "fail_open").await;
    for (g, name) in ["A", "B"].iter().enumerate() {
        assert!(
            store_error[g] >= store_error_before[g] + after_per_gateway[g],
            "gateway {name}: store_error {} -> {} for {} requests without a key store",
            store_error_before[g],
            store_error[g],
            after_per_gateway[g]
        );
        if fail_open {
            assert!(
                fail_open_count[g] >= fail_open_before[g] + after_per_gateway[g],
                "gateway {name}: fail_open {} -> {} for {} forwarded requests",
                fail_open_before[g],
                fail_open_count[g],
                after_per_gateway[g]
            );
        } else {
            assert_eq!(
                fail_open_count[g], 0,
                "gateway {name}: fail_closed never fails open"
            );
        }
    }

    assert_gateways_alive(&mut mesh).await;

    // The key store comes back on the same port: new keys work normally (mesh-wide) again.
    mesh.keystore.restart().await;
    assert_mesh_dedupe_works(&mesh, "after the key store restart").await;
    assert_gateways_alive(&mut mesh).await;
}

/// No key store from the start, fail_open: the request is forwarded and counted, and the retry on
/// the same gateway still replays from its near cache.
#[tokio::test]
async fn key_store_unreachable_fail_open_forwards_and_replays_locally() {
    let upstream = Upstream::start().await;
    let options = EnvoyOptions::with_filter(upstream.port, plugin("fail_open", 30_000))
        .keystore(closed_port());
    let envoy = Envoy::start(&options).await;
    let http = client();
    let (key, url) = (new_key(), envoy.url("/payments"));

    let first = send(post_to(&http, &url, &key)).await;
    assert_created(&first, "the first request without a key store");
    assert_eq!(upstream.post_requests().await, 1, "upstream POSTs");
    assert!(envoy.counter("fail_open").await >= 1);
    let retry = send(post_to(&http, &url, &key)).await;
    assert_replay(&first, &retry);
    assert_eq!(upstream.post_requests().await, 1, "upstream POSTs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store_killed_mid_load_fail_open_keeps_serving_and_counts() {
    key_store_killed_mid_load("fail_open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_store_killed_mid_load_fail_closed_answers_503() {
    key_store_killed_mid_load("fail_closed").await;
}

// ---------------------------------------------------------------------------------------------
// 4. The key store on Redis restarted, and Redis restarted
// ---------------------------------------------------------------------------------------------

/// Records one fresh key through each gateway: `[(key, answer via A), (key, answer via B)]`.
async fn record_on_both(mesh: &Mesh, http: &reqwest::Client) -> [(String, Resp); 2] {
    let mut out = Vec::new();
    for envoy in [&mesh.a, &mesh.b] {
        let key = new_key();
        let resp = send(post_to(http, &envoy.url("/payments"), &key)).await;
        assert_created(&resp, "recording");
        out.push((key, resp));
    }
    out.try_into().ok().unwrap()
}

/// Each record replays through the gateway that did NOT record it (its near cache never saw the
/// key, so the replay comes from the key store).
async fn replay_crosswise(mesh: &Mesh, http: &reqwest::Client, records: &[(String, Resp); 2]) {
    let [(key_a, on_a), (key_b, on_b)] = records;
    let via_b = send(post_to(http, &mesh.b.url("/payments"), key_a)).await;
    assert_replay(on_a, &via_b);
    let via_a = send(post_to(http, &mesh.a.url("/payments"), key_b)).await;
    assert_replay(on_b, &via_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_records_survive_key_store_and_redis_restarts() {
    let mut mesh = mesh(Backend::Redis, plugin("fail_closed", 30_000)).await;
    let http = client();

    // The key store process restarted (SIGKILL, new process, same port, same Redis).
    let first = record_on_both(&mesh, &http).await;
    mesh.keystore.kill().await;
    mesh.keystore.restart().await;
    replay_crosswise(&mesh, &http, &first).await;
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");

    // Redis itself crashed and restarted (append-only file, fsync always).
    let second = record_on_both(&mesh, &http).await;
    let redis = mesh.redis.as_mut().unwrap();
    redis.kill();
    redis.restart();
    mesh.keystore.wait_ready(Duration::from_secs(20)).await;
    replay_crosswise(&mesh, &http, &second).await;
    assert_eq!(mesh.upstream.post_requests().await, 4, "upstream POSTs");

    // Both at once: records made before either restart still replay, on both gateways.
    let third = record_on_both(&mesh, &http).await;
    mesh.keystore.kill().await;
    let redis = mesh.redis.as_mut().unwrap();
    redis.kill();
    redis.restart();
    mesh.keystore.restart().await;
    replay_crosswise(&mesh, &http, &third).await;
    assert_eq!(mesh.upstream.post_requests().await, 6, "upstream POSTs");

    assert_mesh_dedupe_works(&mesh, "after the restarts").await;
    assert_eq!(mesh.upstream.payment_count().await, 8, "payments created");
    assert_gateways_alive(&mut mesh).await;
}

// ---------------------------------------------------------------------------------------------
// 5. A gateway killed while it holds a claim
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_holding_a_claim_frees_the_key_after_the_lease() {
    const LEASE: Duration = Duration::from_millis(2500);
    let mut mesh = mesh(
        Backend::Memory,
        plugin("fail_closed", u64::try_from(LEASE.as_millis()).unwrap()),
    )
    .await;
    let http = client();
    let key = new_key();

    // A claims the key, forwards the request, and the upstream holds it for 10 s.
    let sent = Instant::now();
    let doomed = tokio::spawn(
        post_to(&http, &mesh.a.url("/payments"), &key)
            .header("x-demo-delay-ms", "10000")
            .send(),
    );
    mesh.upstream.wait_post_requests(1).await;
    mesh.a.sigkill();
    let lost = doomed.await.unwrap();
    assert!(
        lost.is_err(),
        "the client of the killed gateway gets no answer: {lost:?}"
    );

    // The claim lives on in the key store: B answers 409 at once.
    let conflict = send(post_to(&http, &mesh.b.url("/payments"), &key)).await;
    let elapsed = sent.elapsed();
    assert!(
        elapsed < LEASE,
        "too slow to observe the live claim ({elapsed:?} >= lease {LEASE:?}): machine overloaded?"
    );
    let problem = assert_problem(&conflict, 409);
    assert_eq!(
        problem["type"], "urn:envoy-idempotency:problem:request-in-progress",
        "{problem}"
    );
    assert!(
        conflict.header("retry-after").is_some(),
        "{}",
        conflict.describe()
    );

    // Poll B until the lease expires and the key executes again (bounded).
    let (executed, _) = until_201(LEASE + Duration::from_secs(20), || {
        send(post_to(&http, &mesh.b.url("/payments"), &key))
    })
    .await;
    // The claim was taken after `sent`, so its lease cannot have expired before `sent + LEASE`.
    assert!(
        sent.elapsed() >= LEASE,
        "the key executed again after {:?}, before the lease ({LEASE:?}) expired",
        sent.elapsed()
    );
    assert_created(&executed, "the takeover after the lease");
    assert_eq!(
        mesh.upstream.post_requests().await,
        2,
        "the killed attempt and the takeover"
    );

    // The takeover's answer is the record now.
    let retry = send(post_to(&http, &mesh.b.url("/payments"), &key)).await;
    assert_replay(&executed, &retry);
    assert_eq!(mesh.upstream.post_requests().await, 2, "upstream POSTs");

    assert!(!mesh.a.process_alive(), "gateway A was killed");
    assert!(mesh.b.process_alive(), "gateway B is alive");
    assert_eq!(
        mesh.b.admin_ready().await,
        Ok((200, "LIVE".to_owned())),
        "gateway B ready"
    );
}
