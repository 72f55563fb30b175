//! A TCP link with latency: forwards a loopback port to another, delaying every chunk sent
//! towards the server. It stands between a gateway and the real key store to make the key store
//! slow without changing it (the network between them is what is slow). It can also be cut
//! ([`SlowLink::cut`]): while cut, it closes every connection at its next chunk and every new one,
//! so nothing the gateway sends reaches the key store (a gateway cut off from it, not dead).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running link; dropping it stops accepting (open connections finish on their own).
pub struct SlowLink {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
    cut: Arc<AtomicBool>,
}

impl SlowLink {
    /// Listens on a free port and forwards to `127.0.0.1:to`, each client chunk `delay` late.
    pub async fn start(to: u16, delay: Duration) -> SlowLink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind link");
        let port = listener.local_addr().expect("link addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let is_cut = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !is_cut.load(Ordering::SeqCst) {
                    tokio::spawn(relay(client, to, delay, is_cut.clone()));
                }
            }
        });
        SlowLink { port, task, cut }
    }

    /// Cuts the link (`true`: nothing more gets through, connections close) or restores it.
    pub fn cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, to: u16, delay: Duration, cut: Arc<AtomicBool>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", to)).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = client_rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tokio::time::sleep(delay).await;
            if cut.load(Ordering::SeqCst) || server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_tx.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut server_rx, &mut client_tx).await;
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
