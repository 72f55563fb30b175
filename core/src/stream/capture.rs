//! The first answer, copied while it passes (README, "first request with a new key": the response
//! flows as it arrives; only its end waits for the record): each body chunk, then, when the answer
//! ends with trailers (HTTP/2, gRPC's `grpc-status` and trailing metadata), those too.
//!
//! Why a copy and not Envoy's buffer: holding the body in Envoy until it ends would hold a
//! streaming answer (server-sent events, a long export) back from its client until the last byte.
//! Each chunk is instead read into the VM as it passes, within `max_response_bytes` and the
//! worker's memory budget (`budget.rs`), trailers included; past either the copy stops, the answer
//! still streams, and its record says "completed, not replayable" (`settlement::captured`).
//!
//! The end of a replay passes here too: a replay (or an answer the root context sent) adds its
//! stored trailers in its last body callback.

use super::{Flow, Phase, Stream};
use crate::budget::{Budget, Held};
use crate::host::{Headers, Host};
use crate::settlement;
use log::warn;
use std::rc::Rc;

/// How much of a `503`/`504` is read to find Envoy's reset or timeout text in it (headers
/// included, as `max_response_bytes` counts them): the texts are under 200 bytes.
const ENVOY_TEXT_BYTES: usize = 4096;

/// The body copied so far, and the bytes it holds in the worker's budget.
pub(super) struct Capture {
    /// `None`: the copy stopped (over `max_response_bytes`, or no room in the budget or the VM).
    body: Option<Vec<u8>>,
    held: Option<Held>,
    /// The body bytes that passed, copied or not.
    passed: usize,
    /// The response's `content-length`, if it announced one.
    length: Option<usize>,
}

impl Capture {
    /// `headers`: the response headers as the upstream sent them.
    pub(super) fn new(headers: &Headers) -> Capture {
        Capture {
            body: Some(Vec::new()),
            held: None,
            passed: 0,
            length: content_length(headers),
        }
    }

    /// Whether every byte the response announced (`content-length`) has arrived. A client that
    /// counts bytes holds a complete answer then, even if Envoy reports the end of the stream only
    /// in a later, empty callback: the chunk that completes it is the end that waits.
    pub(super) fn complete(&self) -> bool {
        self.length.is_some_and(|length| self.passed >= length)
    }

    /// Copies the chunk Envoy holds now (`chunk_len` bytes) unless it would take the stored answer
    /// (`headers` plus body) past `max_response_bytes` or past the budget.
    pub(super) fn add(
        &mut self,
        host: &dyn Host,
        chunk_len: usize,
        headers: &Headers,
        max_response_bytes: usize,
        budget: &Rc<Budget>,
    ) {
        self.passed = self.passed.saturating_add(chunk_len);
        let Some(body) = &mut self.body else {
            return;
        };
        if chunk_len == 0 {
            return;
        }
        let total = body.len().saturating_add(chunk_len);
        if !settlement::fits(headers, total, max_response_bytes) {
            self.stop();
            return;
        }
        let taken = match &mut self.held {
            Some(held) => held.grow(chunk_len),
            None => budget.take(chunk_len).map(|held| {
                self.held = Some(held);
            }),
        };
        // Reserved fallibly: the VM may have less room than the budget says.
        if taken.is_err() || body.try_reserve(chunk_len).is_err() {
            warn!("memory budget: no room for a {total}-byte response; its body is not kept");
            self.stop();
            return;
        }
        let chunk = host.response_body(chunk_len);
        body.extend_from_slice(&chunk);
    }

    /// Counts the answer's `trailers` in the copy (they are stored with the body): past
    /// `max_response_bytes` or the budget the copy stops, as for a chunk.
    pub(super) fn add_trailers(
        &mut self,
        trailers: &Headers,
        headers: &Headers,
        max_response_bytes: usize,
        budget: &Rc<Budget>,
    ) {
        let Some(body) = &self.body else {
            return;
        };
        let size = settlement::header_bytes(trailers);
        if !settlement::fits(headers, body.len().saturating_add(size), max_response_bytes) {
            self.stop();
            return;
        }
        let taken = match &mut self.held {
            Some(held) => held.grow(size),
            None => budget.take(size).map(|held| {
                self.held = Some(held);
            }),
        };
        if taken.is_err() {
            warn!("memory budget: no room for a response's trailers; its body is not kept");
            self.stop();
        }
    }

    /// The whole body, or `None` if the copy stopped. Its bytes go back to the budget with `self`
    /// once the record is built from them.
    pub(super) fn take(&mut self) -> Option<Vec<u8>> {
        self.body.take()
    }

    /// Stops copying and gives the bytes back.
    fn stop(&mut self) {
        self.body = None;
        self.held = None;
    }
}

impl Stream {
    /// Each chunk goes on to the client as soon as it is copied; only the end of the response
    /// (this callback with `end_of_stream`, the chunk that completes its `content-length`, or the
    /// trailers) waits until the record is stored, so a client never holds a complete answer that
    /// a retry would not replay.
    pub fn on_response_body(
        &mut self,
        host: &dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Flow {
        if end_of_stream {
            match self.phase {
                Phase::Answered => self.add_replay_trailers(host),
                // Answered by the root context (a detached answer, a waiting duplicate's replay).
                Phase::Detached | Phase::WaitingLocally => {
                    if let Some(trailers) = self.worker.trailers.take(host.stream_id()) {
                        self.replay_trailers = trailers;
                        self.add_replay_trailers(host);
                    }
                }
                _ => {}
            }
        }
        let Phase::Capturing {
            headers,
            capture,
            read_text,
            ..
        } = &mut self.phase
        else {
            return self.hold_response();
        };
        let max = match read_text {
            // Only Envoy's own text is read (`settle::read_proxy_text`): a longer body is the
            // service's, and needs no copy.
            true => ENVOY_TEXT_BYTES.min(self.worker.cfg.max_response_bytes),
            false => self.worker.cfg.max_response_bytes,
        };
        capture.add(host, body_size, headers, max, &self.worker.budget);
        if end_of_stream || capture.complete() {
            return self.finish_capture(host, Vec::new());
        }
        Flow::Continue
    }

    /// HTTP/2 responses with trailers never report end of stream in the body callback: every body
    /// chunk has passed and been copied, and the trailers are the end that waits for the record.
    pub fn on_response_trailers(&mut self, host: &dyn Host) -> Flow {
        let Phase::Capturing {
            headers, capture, ..
        } = &mut self.phase
        else {
            return self.hold_response();
        };
        let trailers = host.response_trailers();
        let max = self.worker.cfg.max_response_bytes;
        capture.add_trailers(&trailers, headers, max, &self.worker.budget);
        self.finish_capture(host, trailers)
    }
}

/// The one `content-length` value of `headers`, if there is exactly one and it is a number.
fn content_length(headers: &Headers) -> Option<usize> {
    let mut values = headers.iter().filter(|(n, _)| n == "content-length");
    let (_, value) = values.next()?;
    if values.next().is_some() {
        return None;
    }
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}
