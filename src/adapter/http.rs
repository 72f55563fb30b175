//! One HTTP stream's proxy-wasm context: each Envoy callback goes to the stream's state machine
//! ([`Stream`]) with the stream's [`EnvoyHost`], and its [`Flow`] back to Envoy as an [`Action`].
//! The stream is shared with the root context through [`Streams`], which hands it the answers to
//! its key-store calls that travelled in a batch (`background/batch/`).

use super::envoy::{callout_reply, EnvoyHost};
use crate::stream::{Flow, Stream};
use log::error;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};

/// The worker's live streams by context id, for the root context to hand them answers. A stream
/// leaves at its end, so an answer that arrives later finds nobody (it is dropped).
pub(super) type Streams = Rc<RefCell<HashMap<u32, Weak<RefCell<Stream>>>>>;

pub(super) struct Http {
    pub(super) stream: Rc<RefCell<Stream>>,
    pub(super) host: EnvoyHost,
    pub(super) streams: Streams,
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

impl Http {
    /// Runs `f` on the stream; `fallback` if the stream is busy (a callback nested in one of its
    /// own, which Envoy does not do: logged, never a panic).
    fn with<T>(&self, fallback: T, f: impl FnOnce(&mut Stream, &EnvoyHost) -> T) -> T {
        // A new callback: the clock is read again (once).
        self.host.now.set(None);
        match self.stream.try_borrow_mut() {
            Ok(mut stream) => f(&mut stream, &self.host),
            Err(_) => {
                error!("stream {} called back while busy", self.host.stream_id);
                fallback
            }
        }
    }
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        // The callout was made by the root context, so Envoy holds its reply there.
        let (status, body) = self.host.as_root(|| callout_reply(num_headers, body_size));
        self.with((), |s, h| s.on_callout_response(h, token, status, &body));
    }

    fn on_done(&mut self) -> bool {
        self.streams.borrow_mut().remove(&self.host.stream_id);
        self.with((), |s, h| s.on_done(h));
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        super::fault::trap_if_asked();
        action(self.with(Flow::Continue, |s, h| {
            s.on_request_headers(h, end_of_stream)
        }))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.with(Flow::Continue, |s, h| {
            s.on_request_body(h, body_size, end_of_stream)
        }))
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        action(self.with(Flow::Continue, |s, h| s.on_request_trailers(h)))
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        action(self.with(Flow::Continue, |s, h| {
            s.on_response_headers(h, end_of_stream)
        }))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(self.with(Flow::Continue, |s, h| {
            s.on_response_body(h, body_size, end_of_stream)
        }))
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        action(self.with(Flow::Continue, |s, h| s.on_response_trailers(h)))
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Ok(mut streams) = self.streams.try_borrow_mut() {
            streams.remove(&self.host.stream_id);
        }
    }
}
