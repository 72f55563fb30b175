//! Trailers of answers the root context sends (a detached request's answer, a waiting duplicate's
//! replay). Envoy takes a local reply's trailers only from the stream's own last body callback,
//! which runs in the stream's context after the root context sent the reply: the trailers wait
//! here, by stream, until that callback (or the stream's end) takes them.

use crate::host::Headers;
use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct TrailerHandover {
    waiting: RefCell<HashMap<u32, Headers>>,
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

    /// The trailers waiting for `stream_id`, if any; taken once.
    pub fn take(&self, stream_id: u32) -> Option<Headers> {
        self.waiting.borrow_mut().remove(&stream_id)
    }

    pub fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.borrow().is_empty()
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
    }
}
