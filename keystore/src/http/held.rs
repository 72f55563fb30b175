//! Large answers counted against `--max-body-memory` until they are written: a client that asks
//! for a 3 MiB record and never reads holds those bytes until `--write-timeout-ms`, and without a
//! bound 200 such clients held 1.3 GB. An answer of [`HELD_FROM`] bytes or more takes its size from
//! the budget (503 at once when it does not fit) and gives it back when its last chunk has been
//! taken by the connection; it is handed out in chunks of [`CHUNK`] so that "taken" follows what
//! the socket accepts.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use tokio::sync::OwnedSemaphorePermit;

/// Answers smaller than this are not counted: claims' ordinary answers, errors.
pub const HELD_FROM: usize = 64 * 1024;

/// The piece of a held answer handed to the connection at a time.
pub const CHUNK: usize = 64 * 1024;

/// An answer's bytes and the budget they hold.
pub struct Held {
    rest: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl Held {
    /// The answer `bytes`, holding `permit` until its last chunk is taken.
    pub fn body(bytes: Bytes, permit: OwnedSemaphorePermit) -> Body {
        Body::new(Self {
            rest: bytes,
            _permit: permit,
        })
    }
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = self.rest.len().min(CHUNK);
        Poll::Ready(Some(Ok(Frame::data(self.rest.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.rest.len() as u64)
    }
}
