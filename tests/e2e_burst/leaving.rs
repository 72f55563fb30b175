//! Clients that leave just as the root context answers them. Envoy reports the end of a stream
//! (the client went away) before it deletes the stream's context, at the end of the event-loop
//! turn; an answer sent in between reaches a context the SDK has already forgotten, and its
//! callbacks trap the VM ("invalid context_id", seen in a chaos run where a client's timeout and
//! its detached answer met). The root context answers only streams whose end it was not told.
//! Hundreds of detached requests whose clients give up in the milliseconds around the moment their answer lands make those two events meet in one turn.

use super::*;

const CLIENTS: usize = 400;
const DELAY_MS: u64 = 1_000;
const ROUNDS: usize = 3;

/// Whether `body` is the problem the filter answers for a request Envoy never sent (its `type`
/// field, read as the other never-sent tests read it).
fn never_sent(body: &str) -> bool {
    serde_json::from_str::<Value>(body).is_ok_and(|problem| {
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("upstream-unavailable"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_leaving_as_their_detached_answer_lands_never_trap_the_vm() {
    let _alone = alone().await;
    let upstream = Upstream::start().await;
    let config = plugin(
        json!({"execution": "detached", "upstream_cluster": "payments", "upstream_timeout_ms": 8_000}),
        json!({}),
    );
    let mut envoy =
        Envoy::start(&EnvoyOptions::with_filter(upstream.port, config).workers(1)).await;

    // Three rounds: in each, the two events met in one turn most of the time before the fix.
    let (mut answered, mut left, mut not_sent) = (0, 0, 0);
    for round in 1..=ROUNDS {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|i| {
                // Give up from 50 ms before the upstream's answer to 350 ms after it (the answer
                // reaches the client a little after the upstream's delay, later under load).
                let timeout = Duration::from_millis(DELAY_MS - 50 + (i % 400) as u64);
                let req = post_payment(
                    &impatient(timeout),
                    &envoy,
                    "Bearer alice",
                    Some(&new_key()),
                    r#"{"amount":5}"#,
                )
                .header("x-demo-delay-ms", DELAY_MS.to_string());
                tokio::spawn(async move {
                    let resp = req.send().await?;
                    let status = resp.status().as_u16();
                    Ok::<_, reqwest::Error>((status, resp.text().await.unwrap_or_default()))
                })
            })
            .collect();
        for task in tasks {
            match task.await.unwrap() {
                // A connection to the upstream that did not open in time (a slow machine): the
                // request never left, its key was released, and the client is told so.
                Ok((503, body)) if never_sent(&body) => not_sent += 1,
                Ok((status, body)) => {
                    assert_eq!(status, 201, "a client that stayed got its answer: {body}");
                    answered += 1;
                }
                Err(_) => left += 1,
            }
        }
        // Every request ran once, whether or not its client stayed (the upstream finishes),
        // except those Envoy never sent, which the filter released: the two add up to the total.
        let total = (round * CLIENTS) as u64;
        let settled = eventually(Duration::from_secs(20), || async {
            upstream.post_requests().await + envoy.counter("released").await >= total
        })
        .await;
        let (ran, released) = (
            upstream.post_requests().await,
            envoy.counter("released").await,
        );
        assert!(
            settled,
            "round {round}: {ran} ran, {released} released, of {total}"
        );
        assert_eq!(
            ran + released,
            total,
            "executions + requests released as never sent"
        );
    }
    assert!(
        not_sent * 10 < ROUNDS * CLIENTS,
        "most requests reached the upstream ({not_sent} never sent)"
    );
    println!(
        "BURST|{ROUNDS} x {CLIENTS} detached POSTs whose clients leave around the moment their answer lands|{answered} answered, {left} left, {not_sent} never sent (503)|1 execution each, none for those never sent|"
    );
    assert_alive_and_serving(&mut envoy, &upstream, "clients leaving as answered").await;
}
