//! Detached requests Envoy never sent: the connection was refused, or it never opened (connect
//! timeout; every request queued behind it is turned away too). The key is released and the client
//! gets `503 upstream-unavailable`, as inline; a retry is not told "may have executed" (409/410).

use super::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;

/// A port that accepts no connection: a listening socket with a backlog of 0 whose queue is
/// already full of connections nobody accepts, so the kernel drops every further SYN and a
/// connect attempt times out.
struct Stalled {
    port: u16,
    _listener: TcpListener,
    _queued: Vec<TcpStream>,
}

impl Stalled {
    fn open() -> Stalled {
        // std's `TcpListener::bind` listens with a backlog of 128; this one needs 0.
        let listener = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket");
            let listener = TcpListener::from_raw_fd(fd);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                },
                sin_zero: [0; 8],
            };
            let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), size),
                0,
                "bind"
            );
            assert_eq!(libc::listen(fd, 0), 0, "listen");
            listener
        };
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        let full =
            (0..8).any(
                |_| match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Ok(stream) => {
                        queued.push(stream);
                        false
                    }
                    Err(_) => true,
                },
            );
        assert!(
            full,
            "the listener's queue did not fill: connects would not time out"
        );
        Stalled {
            port: addr.port(),
            _listener: listener,
            _queued: queued,
        }
    }
}

/// Sends `n` detached POSTs to `path` at once, each its own key: every one must get `503
/// upstream-unavailable`, and a retry of each key the same (released, never locked).
async fn all_released(envoy: &Envoy, path: &str, n: usize) {
    let http = client();
    let send_one = |key: String| {
        let req = http
            .post(envoy.url(path))
            .header("content-type", "application/json")
            .header("authorization", "Bearer alice")
            .header("idempotency-key", key)
            .body(r#"{"amount":3}"#);
        send(req)
    };
    let keys: Vec<String> = (0..n).map(|_| new_key()).collect();
    let answers = futures_join(keys.iter().map(|k| send_one(k.clone()))).await;
    for answer in &answers {
        let problem = assert_problem(answer, 503);
        assert!(
            problem["type"]
                .as_str()
                .unwrap_or("")
                .ends_with("upstream-unavailable"),
            "{path}: {}",
            answer.describe()
        );
    }
    let retries = futures_join(keys.iter().map(|k| send_one(k.clone()))).await;
    for retry in &retries {
        assert_eq!(
            retry.status,
            503,
            "{path}: a retry of a never-sent key: {}",
            retry.describe()
        );
    }
}

/// Runs the futures concurrently (each on its own task) and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn detached_requests_envoy_never_sent_are_released() {
    let _alone = alone().await;
    let upstream = Upstream::start().await;
    let stalled = Stalled::open();
    let detached = |cluster: &str, path: &str| {
        json!({
            "prefix": path, "methods": ["POST"], "required": true, "execution": "detached",
            "upstream_cluster": cluster, "upstream_timeout_ms": 8000,
        })
    };
    let config = Plugin::signed(SECRET)
        .caller_header("authorization")
        .set(
            "routes",
            json!([
                detached("refused", "/refused"),
                detached("stalled", "/stalled"),
                {"exact": "/payments", "methods": ["POST"], "required": true},
            ]),
        )
        .json();
    let options = EnvoyOptions::with_filter(upstream.port, config)
        .workers(1)
        .cluster("refused", closed_port())
        .cluster("stalled", stalled.port);
    let mut envoy = Envoy::start(&options).await;

    all_released(&envoy, "/refused", 20).await;
    all_released(&envoy, "/stalled", 20).await;

    let stats = envoy.stats_matching("cluster\\.(refused|stalled)\\.upstream_(cx_connect_fail|cx_connect_timeout|rq_pending_failure_eject)").await;
    let stat = |name: &str| stats.get(name).copied().unwrap_or(0);
    assert!(
        stat("cluster.refused.upstream_cx_connect_fail") > 0,
        "not refused: {stats:?}"
    );
    assert!(
        stat("cluster.stalled.upstream_cx_connect_timeout") > 0,
        "no connect timeout: {stats:?}"
    );
    assert_eq!(
        envoy.metric("unknown_outcome").await.unwrap_or(0),
        0,
        "no key locked as unknown"
    );
    assert_eq!(envoy.counter("released").await, 80);
    println!(
        "BURST|40 detached POSTs never sent (connection refused; connect timeout: {} timed out, {} ejected from the queue), each retried|all 503 upstream-unavailable, retries too|0|",
        stat("cluster.stalled.upstream_cx_connect_timeout"),
        stat("cluster.stalled.upstream_rq_pending_failure_eject")
    );
    assert_alive_and_serving(&mut envoy, &upstream, "never-sent detached requests").await;
}
