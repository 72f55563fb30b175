//! The key store unreachable from the start, or SIGKILLed under load, per failure mode; then
//! restarted on the same port.

use super::*;

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
