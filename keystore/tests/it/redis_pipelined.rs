//! A batch costs one Redis round trip, not one per entry: between the key store and Redis sits a
//! proxy that holds every reply chunk 25 ms (as a distant Redis would). A batch of 256 lookups
//! pays that once, as its entries' scripts go out back to back on the multiplexed connection;
//! one after another they would take 256 × 25 ms = 6.4 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::redis::RedisBackend;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::common::{hex64, settings, Keystore, RedisServer};

const DELAY: Duration = Duration::from_millis(25);

/// Forwards connections on a loopback port to `upstream`, holding each chunk from `upstream`
/// for [`DELAY`] (chunks keep their order and are not delayed behind each other).
async fn slow_replies(upstream: String) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(&upstream).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
            });
            let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                    if tx
                        .send((Instant::now() + DELAY, buf[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            });
            tokio::spawn(async move {
                while let Some((due, chunk)) = rx.recv().await {
                    tokio::time::sleep_until(due.into()).await;
                    if client_tx.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("redis://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_one_round_trip_to_redis() {
    let redis = RedisServer::start(&[]);
    let upstream = redis.url().trim_start_matches("redis://").to_owned();
    let url = slow_replies(upstream).await;
    let backend = RedisBackend::single(&[url], Duration::from_secs(5)).unwrap();
    let ks = Keystore::start(Arc::new(backend), settings()).await;
    let fp = hex64();
    // Connects, and loads the lookup script.
    assert_eq!(ks.lookup(&hex64(), &fp, None).await.0, StatusCode::OK);
    let started = Instant::now();
    assert_eq!(ks.lookup(&hex64(), &fp, None).await.0, StatusCode::OK);
    let one = started.elapsed();
    assert!(one >= DELAY, "the proxy holds replies: {one:?}");
    let entries: Vec<_> = (0..256)
        .map(|_| json!({"op": "lookup", "key": hex64(), "fingerprint": fp}))
        .collect();
    let started = Instant::now();
    let (status, body) = ks.post("/v1/batch", json!({ "entries": entries })).await;
    let batch = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    let answers = body["answers"].as_array().unwrap();
    assert!(
        answers.iter().all(|a| a["body"]["outcome"] == "absent"),
        "{body}"
    );
    eprintln!("one lookup through the slow proxy {one:?}; a batch of 256 lookups {batch:?}");
    // Sequential would be 6.4 s; pipelined it is a few round trips at most.
    assert!(batch < Duration::from_millis(1000), "{batch:?}");
}
