//! Trailers of answers the root context sends (a detached request's answer, a waiting duplicate's
//! replay). Envoy takes a local reply's trailers only from the stream's own last body callback,
//! which runs in the stream's context after the root context sent the reply: the trailers wait
//! here, by stream, until that callback (or the stream's end) takes them. So do the headers of
//! such an answer without a body: Envoy drops its `content-type`, which the stream's headers
//! callback sets again in place (`Stream::fix_reply_headers`).

use crate::host::Headers;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct TrailerHandover {
    waiting: RefCell<HashMap<u32, Headers>>,
    /// The headers of body-less answers, by stream.
    bodiless: RefCell<HashMap<u32, Headers>>,
}

impl TrailerHandover {
    /// `stream_id` is being answered with a body and these trailers. Nothing is kept for an
    /// answer without a body (it ends with its headers: no body callback follows).
    pub fn hand(&self, stream_id: u32, body_len: usize, trailers: &Headers) {
        if body_len > 0 && !trailers.is_empty() {
            self.waiting
                .borrow_mut()
                .insert(stream_id, trailers.clone());
        }
    }

    /// `stream_id` is being answered with `headers` and no body.
    pub fn hand_bodiless(&self, stream_id: u32, body_len: usize, headers: &Headers) {
        if body_len == 0 {
            self.bodiless
                .borrow_mut()
                .insert(stream_id, headers.clone());
        }
    }

    /// The headers of the body-less answer sent to `stream_id`, if any; taken once.
    pub fn take_bodiless(&self, stream_id: u32) -> Option<Headers> {
        self.bodiless.borrow_mut().remove(&stream_id)
    }

    /// The trailers waiting for `stream_id`, if any; taken once.
    pub fn take(&self, stream_id: u32) -> Option<Headers> {
        self.waiting.borrow_mut().remove(&stream_id)
    }

    pub fn len(&self) -> usize {
        self.waiting.borrow().len() + self.bodiless.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailers_wait_once_and_only_after_a_body() {
        let handover = TrailerHandover::default();
        let trailers = vec![("grpc-status".to_string(), b"0".to_vec())];
        handover.hand(7, 0, &trailers);
        handover.hand(8, 3, &Vec::new());
        assert!(handover.is_empty());
        handover.hand(9, 3, &trailers);
        assert_eq!(handover.take(9), Some(trailers));
        assert_eq!(handover.take(9), None);
        let headers = vec![("content-type".to_string(), b"a/b".to_vec())];
        handover.hand_bodiless(10, 3, &headers);
        assert!(handover.is_empty());
        handover.hand_bodiless(10, 0, &headers);
        assert_eq!(handover.len(), 1);
        assert_eq!(handover.take_bodiless(10), Some(headers));
        assert!(handover.is_empty());
    }
}
