//! `Expect: 100-continue`, on the connection manager's default listener (Envoy answers `100`
//! itself) and under `proxy_100_continue: true` (the `100` has to come from the upstream): a
//! client that waits for it before sending its body, with no timeout of its own, gets it on an
//! inline rule and on a detached rule (which runs a proxied one inline), in both headers modes,
//! and so does its retry; nobody hangs. The suite's `expect-100*` rows give their client curl's
//! 1 s of patience; this one gives 10 s, which stands for "forever".

use std::collections::HashMap;
use std::time::Duration;

use crate::gateways::{start_one, Kind};
use crate::recorder::{Recorder, Script};
use crate::wire::H1;

const BODY: &[u8] = b"{\"amount\":100}";
const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"p1\"}";

/// Sends the head (its key: `key`), waits for the `100`, then the body; the final status.
async fn waits_for_100(port: u16, key: &str, what: &str) -> u16 {
    let head = format!(
        "POST /fid/expect-waits HTTP/1.1\r\nhost: fidelity.test\r\nidempotency-key: {key}\r\ncontent-type: application/json\r\ncontent-length: 14\r\nexpect: 100-continue\r\n\r\n"
    );
    let mut conn = H1::connect(port).await;
    conn.write(head.as_bytes()).await;
    assert!(
        conn.interim_within(Duration::from_secs(10)).await,
        "{what}: no `100 Continue` for a client that waits for it"
    );
    conn.write(BODY).await;
    conn.answer(false).await.status
}

/// The upstream's script: `/fid/expect-waits` is answered `201`.
fn created() -> HashMap<String, Script> {
    HashMap::from([(
        "/fid/expect-waits".to_owned(),
        Script {
            head: CREATED.to_vec(),
            ..Script::default()
        },
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_for_100_continue_gets_it_in_every_mode() {
    let scripts = created();
    for headers_mode in ["hold", "stream"] {
        for kind in [Kind::Inline, Kind::Detached] {
            let what = format!("{kind:?} {headers_mode}");
            let upstream = Recorder::start(scripts.clone()).await;
            let gateway = start_one(kind, headers_mode, upstream).await;
            let listeners = [
                ("default", gateway.envoy.port),
                ("proxy_100_continue", gateway.proxied_100_port),
            ];
            for (listener, port) in listeners {
                let what = format!("{what}, {listener} listener");
                let key = format!("fid-expect-{listener}");
                assert_eq!(waits_for_100(port, &key, &what).await, 201, "{what}");
                // A detached rule in `stream` mode also sends the head through the router before
                // the plugin sends the request (README, `headers_mode`): an incomplete request.
                let first: Vec<_> = gateway
                    .upstream
                    .take()
                    .into_iter()
                    .filter(|r| r.complete)
                    .collect();
                assert_eq!(first.len(), 1, "{what}: executed once");
                assert_eq!(first[0].body, BODY, "{what}");
                let retry = format!("{what}, retry");
                assert_eq!(waits_for_100(port, &key, &retry).await, 201, "{retry}");
                assert!(
                    gateway.upstream.take().iter().all(|r| !r.complete),
                    "{what}: the retry never reached the upstream whole"
                );
            }
        }
    }
}

/// The figures in docs/fidelity.md ("`Expect: 100-continue` with `proxy_100_continue: true`"):
/// curl (which waits 1 s for a `100`, then sends anyway) against each gateway's
/// `proxy_100_continue` listener, seconds per request, a first request and its retry.
/// `cargo test --test e2e_fidelity curl_timings -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the table, checks nothing"]
async fn curl_timings() {
    let scripts = created();
    for headers_mode in ["hold", "stream"] {
        for kind in [Kind::None, Kind::Inline, Kind::Detached] {
            let upstream = Recorder::start(scripts.clone()).await;
            let gateway = start_one(kind, headers_mode, upstream).await;
            let url = format!(
                "http://127.0.0.1:{}/fid/expect-waits",
                gateway.proxied_100_port
            );
            let mut times = Vec::new();
            for _ in 0..2 {
                let out = std::process::Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-w", "%{time_total}"])
                    .args([
                        "-H",
                        "expect: 100-continue",
                        "-H",
                        "idempotency-key: curl-1",
                    ])
                    .args(["-H", "content-type: application/json"])
                    .args(["--data-binary", "{\"amount\":100}", &url])
                    .output()
                    .expect("curl");
                times.push(String::from_utf8_lossy(&out.stdout).into_owned());
            }
            println!(
                "CURL|{headers_mode}|{kind:?}|first {}|retry {}",
                times[0], times[1]
            );
        }
    }
}
