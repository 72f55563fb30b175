//! A connection's socket with a write deadline: a write (or flush) that makes no progress for
//! `--write-timeout-ms` fails with `TimedOut`, which ends the connection. It is what frees the
//! answer a client never reads (a 3 MiB record held in the socket's buffers); a client that reads,
//! however slowly, keeps its connection, since every write that goes through starts the clock
//! again. Reads are left alone: the connection's watchdog ([`super::conn`]) bounds them.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::activity::Activity;

/// A socket whose stalled writes time out, and whose reads are noted in its [`Activity`].
pub struct Deadlined<S> {
    inner: S,
    timeout: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    timeouts: IntCounter,
    activity: std::sync::Arc<Activity>,
}

impl<S> Deadlined<S> {
    pub fn new(
        inner: S,
        timeout: Duration,
        timeouts: IntCounter,
        activity: std::sync::Arc<Activity>,
    ) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            timeouts,
            activity,
        }
    }

    /// A write made no progress: start (or keep) the clock, and fail once it runs out.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let timeout = self.timeout;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if clock.as_mut().poll(cx).is_ready() {
            self.timeouts.inc();
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "write made no progress within --write-timeout-ms",
            )));
        }
        Poll::Pending
    }

    fn progressed<T>(
        &mut self,
        r: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlined<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Some(new) = buf.filled().get(before..).filter(|b| !b.is_empty()) {
            self.activity.read_some(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlined<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.progressed(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.progressed(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.progressed(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.progressed(r, cx)
    }
}
