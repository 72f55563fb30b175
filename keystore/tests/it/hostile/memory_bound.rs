//! `--max-bytes` against what the process really holds: fill the memory backend with claims until
//! it answers 503, and compare the growth of RSS with the bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{alone, start, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_bytes_bounds_what_the_process_holds() {
    let _alone = alone().await;
    // Large enough that the allocator's own noise (a few MiB either way on a loaded machine)
    // stays well under the margin, small enough to fill in seconds.
    const BOUND_MIB: f64 = 16.0;
    let bound = (BOUND_MIB as u64 * 1024 * 1024).to_string();
    let ks = start(&["--max-bytes", &bound]).await;
    let http = reqwest::Client::new();
    let url = format!("http://{}/v1/claim", ks.addr);
    // Warm up the connections, buffers and allocator caches the fill uses, with lookups that
    // store nothing, so that the growth measured afterwards is the store's.
    let lookup = format!("http://{}/v1/lookup", ks.addr);
    let mut warm = Vec::new();
    for w in 0..32u64 {
        let (http, lookup) = (http.clone(), lookup.clone());
        warm.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let body = format!(
                    r#"{{"key":"{:064x}","fingerprint":"{:064x}"}}"#,
                    u64::MAX - w * 1000 - i,
                    1
                );
                let resp = http
                    .post(&lookup)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 200);
            }
        }));
    }
    for w in warm {
        w.await.unwrap();
    }
    let base = ks.rss_mib();
    let next = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (http, url, next) = (http.clone(), url.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut held = 0u64;
            // Bounded: a bound that never fills fails the test instead of looping.
            for _ in 0..40_000 {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let body = format!(
                    r#"{{"key":"{n:064x}","fingerprint":"{:064x}","lease_ms":600000}}"#,
                    n + 1
                );
                let resp = http
                    .post(&url)
                    .bearer_auth(TOKEN)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                match resp.status().as_u16() {
                    200 => held += 1,
                    503 => return Some(held),
                    other => panic!("claim answered {other}"),
                }
            }
            None
        }));
    }
    let mut held = 0;
    for w in workers {
        held += w.await.unwrap().expect("the bound was never reached");
    }
    // The fill's connections and buffers go; what stays is the store.
    drop(http);
    let mut after = ks.rss_mib();
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = ks.rss_mib();
        if (after - now).abs() < 0.1 {
            break;
        }
        after = now;
    }
    let grown = after - base;
    let counted = BOUND_MIB * 1024.0 * 1024.0 / held as f64;
    let real = grown * 1024.0 * 1024.0 / held as f64;
    eprintln!(
        "--max-bytes {BOUND_MIB} MiB: {held} claims held ({counted:.0} bytes counted each); RSS \
         {base:.1} -> {after:.1} MiB, +{grown:.1} MiB ({real:.0} bytes each, {:.0}% of the bound)",
        100.0 * grown / BOUND_MIB
    );
    ks.assert_ready().await;
    assert!(
        // The old count (320 bytes a claim) let RSS grow by ~160% of the bound.
        grown < BOUND_MIB * 1.35,
        "RSS grew {grown:.1} MiB for a {BOUND_MIB} MiB bound"
    );
}
