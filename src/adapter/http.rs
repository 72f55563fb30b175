//! One HTTP stream's proxy-wasm context: each Envoy callback goes to the stream's state machine
//! ([`Stream`]) with the stream's [`EnvoyHost`], and its [`Flow`] back to Envoy as an [`Action`].

use super::envoy::{callout_reply, EnvoyHost};
use crate::stream::{Flow, Stream};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

pub(super) struct Http {
    pub(super) stream: Stream,
    pub(super) host: EnvoyHost,
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
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
        self.stream
            .on_callout_response(&self.host, token, status, &body);
    }

    fn on_done(&mut self) -> bool {
        self.stream.on_done(&self.host);
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        super::fault::trap_if_asked();
        action(self.stream.on_request_headers(&self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_request_body(&self.host, body_size, end_of_stream),
        )
    }

    fn on_http_request_trailers(&mut self, _n: usize) -> Action {
        action(self.stream.on_request_trailers(&self.host))
    }

    fn on_http_response_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
        action(self.stream.on_response_headers(&self.host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_response_body(&self.host, body_size, end_of_stream),
        )
    }

    fn on_http_response_trailers(&mut self, _n: usize) -> Action {
        action(self.stream.on_response_trailers(&self.host))
    }
}
