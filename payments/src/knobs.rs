//! The test knobs of `POST /payments` (see the crate docs): reading them from the request
//! headers, and the body cut that `x-demo-body-cut` asks for.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use http_body::Frame;

use crate::error;

/// Longest delay honoured from `x-demo-delay-ms`.
const MAX_DELAY: Duration = Duration::from_secs(60);
/// How long a cut body pauses before failing, so the bytes before the cut leave first.
const CUT_PAUSE: Duration = Duration::from_millis(10);

/// A header's value as text, if present and visible ASCII.
fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What a request's knobs ask for.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Knobs {
    pub(crate) delay: Duration,
    pub(crate) status: Option<StatusCode>,
    pub(crate) after: After,
}

/// How the answer leaves once the work is done.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) enum After {
    #[default]
    Answer,
    Reset,
    BodyCut(usize),
}

impl Knobs {
    /// Reads the knobs, or names the bad one (answered `400`).
    pub(crate) fn parse(headers: &HeaderMap) -> Result<Self, &'static str> {
        let mut knobs = Self::default();
        if let Some(raw) = header_text(headers, "x-demo-delay-ms") {
            let ms = raw
                .trim()
                .parse::<u64>()
                .map_err(|_| "x-demo-delay-ms: not an integer")?;
            knobs.delay = Duration::from_millis(ms).min(MAX_DELAY);
        }
        if let Some(raw) = headers.get("x-demo-status") {
            let status = raw
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u16>().ok())
                .filter(|code| (200..=599).contains(code))
                .and_then(|code| StatusCode::from_u16(code).ok())
                .ok_or("x-demo-status: expected a status code from 200 to 599")?;
            knobs.status = Some(status);
        }
        let reset = headers.get("x-demo-reset");
        let cut = headers.get("x-demo-body-cut");
        if reset.is_some() && cut.is_some() {
            return Err("x-demo-reset and x-demo-body-cut: choose one");
        }
        if let Some(raw) = reset {
            if raw.as_bytes() != b"after-work" {
                return Err("x-demo-reset: expected after-work");
            }
            knobs.after = After::Reset;
        }
        if let Some(raw) = cut {
            let n = raw
                .to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or("x-demo-body-cut: not an integer")?;
            knobs.after = After::BodyCut(n);
        }
        Ok(knobs)
    }
}

/// `response` with its full `Content-Length` but a body that stops after `n` bytes (at most all
/// but the last one) and then fails, which makes hyper close the connection mid-body.
pub(crate) async fn cut_body(response: Response, n: usize) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, format!("body: {e}")),
    };
    parts.headers.insert(
        header::CONTENT_LENGTH,
        header::HeaderValue::from(bytes.len()),
    );
    let head = bytes.slice(..n.min(bytes.len().saturating_sub(1)));
    let body = CutBody {
        head: (!head.is_empty()).then_some(head),
        pause: Box::pin(tokio::time::sleep(CUT_PAUSE)),
    };
    Response::from_parts(parts, Body::new(body))
}

/// A body that yields `head`, pauses, then fails. The pause lets hyper flush the head and the
/// bytes before the cut: an error right away could close the connection with them unsent.
struct CutBody {
    head: Option<Bytes>,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for CutBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        ready!(self.pause.as_mut().poll(cx));
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "body cut by x-demo-body-cut",
        ))))
    }
}
