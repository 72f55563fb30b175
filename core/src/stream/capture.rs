//! Buffering the upstream's answer to keep it: its body and, when it ends with trailers (HTTP/2,
//! gRPC's `grpc-status` and trailing metadata), those too. All of it counts toward
//! `max_response_bytes` and the worker's memory budget; an answer over either still reaches the
//! client, and its record says it is not replayable.

use super::{Flow, Phase, Stream};
use crate::host::{Headers, Host};
use crate::settlement;
use log::warn;

impl Stream {
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
        let Phase::Capturing { headers, .. } = &self.phase else {
            return self.hold_response();
        };
        if !settlement::fits(headers, body_size, self.worker.cfg.max_response_bytes) {
            return self.finish_capture(host, None);
        }
        if end_of_stream {
            return self.capture_end(host, body_size, Vec::new());
        }
        Flow::Pause
    }

    pub fn on_response_trailers(&mut self, host: &dyn Host) -> Flow {
        if !matches!(self.phase, Phase::Capturing { .. }) {
            return self.hold_response();
        }
        // Only the size is needed here; it is read (bounded) when the VM can hold it.
        let most = self.worker.cfg.max_response_bytes.saturating_add(1);
        if crate::budget::try_buffer(most).is_err() {
            return self.finish_capture(host, None);
        }
        let body_size = host.response_body(most).len();
        let trailers = host.response_trailers();
        self.capture_end(host, body_size, trailers)
    }

    /// The answer is complete: `body_size` bytes of body are buffered in Envoy, then `trailers`.
    fn capture_end(&mut self, host: &dyn Host, body_size: usize, trailers: Headers) -> Flow {
        let Phase::Capturing { headers, .. } = &self.phase else {
            return self.hold_response();
        };
        let size = body_size.saturating_add(settlement::header_bytes(&trailers));
        if !settlement::fits(headers, size, self.worker.cfg.max_response_bytes) {
            return self.finish_capture(host, None);
        }
        // Read into the VM only with room in the budget; without, the answer still reaches the
        // client, and its record keeps no body (as an answer over max_response_bytes).
        let room = crate::budget::try_buffer(size);
        let (Ok(_held), Ok(_)) = (self.worker.budget.take(size), room) else {
            warn!("memory budget: no room for a {size}-byte response; its body is not kept");
            return self.finish_capture(host, None);
        };
        let body = host.response_body(body_size);
        self.finish_capture(host, Some((body, trailers)))
    }
}
