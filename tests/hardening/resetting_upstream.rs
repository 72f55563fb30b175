//! A stand-in upstream that resets every connection mid-request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// A raw TCP server on a picked port that reads the start of each request, then resets the
/// connection (SO_LINGER 0): an upstream that dies mid-request. Counts the requests it saw.
pub struct ResettingUpstream {
    pub port: u16,
    seen: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ResettingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ResettingUpstream {
    pub async fn start() -> ResettingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(AtomicU64::new(0));
        let task = {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let seen = seen.clone();
                    tokio::spawn(async move {
                        let mut buf = [0u8; 4096];
                        if matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {
                            seen.fetch_add(1, Ordering::SeqCst);
                        }
                        // A zero linger never blocks: close sends RST at once.
                        #[allow(deprecated)]
                        let _ = conn.set_linger(Some(Duration::ZERO));
                        drop(conn);
                    });
                }
            })
        };
        ResettingUpstream { port, seen, task }
    }

    /// How many requests reached it.
    pub fn requests(&self) -> u64 {
        self.seen.load(Ordering::SeqCst)
    }
}
