//! How a stream sends its key-store calls: alone, or gathered with other streams' calls into the
//! worker's next batch (group commit, `background/batch/`). The stream reads the answer the same
//! way in both cases, in its callout callback.

use super::Stream;
use crate::background::batch::Submitted;
use crate::host::{Callout, Host};
use crate::keystore_client::StoreCall;
use log::warn;

impl Stream {
    /// Sends a key-store call of this stream: on its own callout, or (group commit, the worker's
    /// `batcher`) as an entry of the next batch, which the root context sends when a callout in
    /// flight returns. Either way its answer comes to [`Stream::on_callout_response`] with the id
    /// returned here.
    pub(super) fn send_call(
        &self,
        host: &dyn Host,
        call: StoreCall,
        single: Callout,
    ) -> Result<u32, String> {
        let stream_id = host.stream_id();
        match self.worker.submit_call(stream_id, call, single) {
            Submitted::Queued(id) => Ok(id),
            Submitted::Alone(callout) => {
                let sent = host.dispatch(&callout);
                if let Ok(token) = &sent {
                    self.worker
                        .batcher
                        .borrow_mut()
                        .sent_alone(*token, stream_id);
                }
                sent
            }
            Submitted::Now(callout) => {
                let sent = host.dispatch(&callout);
                let mut batcher = self.worker.batcher.borrow_mut();
                match &sent {
                    Ok(token) => batcher.sent_single(*token, stream_id),
                    Err(_) => batcher.single_not_sent(),
                }
                sent
            }
        }
    }

    /// Wakes the root context to send the calls waiting for a batch (a slot just came free).
    fn ring_for_batch(&self, host: &dyn Host) {
        if let Some(queue) = self.worker.doorbell() {
            if let Err(e) = host.wake_root(queue) {
                warn!("cannot wake the root context ({e}); waiting calls go on its next tick");
            }
        }
    }

    /// A reply to callout `token` reached this stream: if it was its own call, its slot is free
    /// for the calls that wait.
    pub(super) fn call_landed(&self, host: &dyn Host, token: u32) {
        let freed = self
            .worker
            .batcher
            .borrow_mut()
            .single_landed(token)
            .is_some();
        if freed && self.worker.batcher.borrow().ready() {
            self.ring_for_batch(host);
        }
    }

    /// The stream ends: its calls waiting for a batch leave the queue, and answers to its calls
    /// in flight are dropped.
    pub(super) fn forget_calls(&self, host: &dyn Host) {
        if self.worker.batcher.borrow_mut().forget(host.stream_id()) {
            self.ring_for_batch(host);
        }
    }
}
