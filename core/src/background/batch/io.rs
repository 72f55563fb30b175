//! The worker's side of group commit: a stream's call goes through [`Worker::submit_call`], the
//! root context sends what waits ([`Worker::flush_batches`]) and turns each reply into every
//! entry's answer for its stream ([`Delivery`]). A batch that fails as a whole (no reply, a
//! status other than 200, an answer that does not parse or does not match the batch) is a
//! failed callout for each of its entries, so each stream applies its route's `failure_mode`.

use super::{Flight, Submitted};
use crate::background::actions::{Purpose, RootAction};
use crate::background::worker::Worker;
use crate::host::Callout;
use crate::keystore_client::{self, StoreCall};
use crate::metrics::Metric;
use log::warn;

use crate::keystore_client::EntryReply as Answer;

/// An answer for a stream that the root context hands over: the stream's callout callback runs
/// with `token` (the id its call was given), as if its own callout had returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub stream_id: u32,
    pub token: u32,
    pub status: Option<u16>,
    pub body: Vec<u8>,
}

impl Delivery {
    fn failed(stream_id: u32, token: u32) -> Delivery {
        Delivery {
            stream_id,
            token,
            status: None,
            body: Vec::new(),
        }
    }
}

impl Worker {
    /// A stream's key-store call: sent by the stream now, or queued for the next batch. A claim
    /// that waits (`wait_ms`) always goes alone and holds no slot.
    pub fn submit_call(&self, stream_id: u32, call: StoreCall, single: Callout) -> Submitted {
        if !keystore_client::batchable(&call) {
            return Submitted::Alone(single);
        }
        self.batcher.borrow_mut().submit(stream_id, call, single)
    }

    /// The batches to send now: while entries wait and a slot is free. A lone entry goes on its
    /// own endpoint.
    pub fn flush_batches(&self) -> Vec<RootAction> {
        let Some(ks) = &self.cfg.keystore else {
            return Vec::new();
        };
        let mut out = Vec::new();
        loop {
            let Some(entries) = self.batcher.borrow_mut().take() else {
                break;
            };
            let flight = Flight {
                entries: entries.iter().map(|e| (e.stream_id, e.id)).collect(),
                ops: entries.iter().map(|e| e.call.op()).collect(),
                single: entries.len() == 1,
                singles: Vec::new(),
            };
            let mut flight = flight;
            let callout = match entries.as_slice() {
                [one] => one.single.clone(),
                many => {
                    let calls: Vec<&StoreCall> = many.iter().map(|e| &e.call).collect();
                    let batch = keystore_client::batch(ks, &calls);
                    flight.singles = entries.into_iter().map(|e| e.single).collect();
                    batch
                }
            };
            out.push(RootAction::Send(callout, Purpose::Batch(flight)));
        }
        out
    }

    /// The root context sent a batch as callout `token`.
    pub(crate) fn batch_sent(&self, token: u32, flight: Flight) {
        self.batcher.borrow_mut().batch_sent(token, flight);
    }

    /// A batch could not be sent: each of its entries failed.
    pub(crate) fn batch_not_sent(&self, flight: Flight, why: &str) -> Vec<RootAction> {
        warn!(
            "key-store batch of {} call(s) not sent: {why}",
            flight.entries.len()
        );
        let mut batcher = self.batcher.borrow_mut();
        batcher.batch_not_sent();
        let entries = batcher.live(flight.entries);
        drop(batcher);
        let mut out: Vec<RootAction> = entries
            .into_iter()
            .map(|(stream, id)| RootAction::Deliver(Delivery::failed(stream, id)))
            .collect();
        out.extend(self.flush_batches());
        out
    }

    /// A reply to callout `token`, if it carried streams' calls: each entry's answer for its
    /// stream, then the next batch. `None`: not a callout of the batcher.
    pub(crate) fn batch_reply(
        &self,
        token: u32,
        status: Option<u16>,
        body: &[u8],
    ) -> Option<Vec<RootAction>> {
        let mut out = Vec::new();
        let landed_single = self.batcher.borrow_mut().single_landed(token);
        if let Some(stream_id) = landed_single {
            // A stream's own call, sent while the root context was handing it an answer.
            out.push(RootAction::Deliver(Delivery {
                stream_id,
                token,
                status,
                body: body.to_vec(),
            }));
        } else {
            let (flight, live) = self.batcher.borrow_mut().batch_landed(token)?;
            if status == Some(404) && !flight.single {
                return Some(self.without_batches(flight, live));
            }
            let answers = self.answers(&flight, status, body);
            out.push(RootAction::Count(Metric::KeystoreBatches));
            out.extend(
                flight
                    .entries
                    .iter()
                    .map(|_| RootAction::Count(Metric::KeystoreBatchEntries)),
            );
            out.extend(
                flight
                    .entries
                    .into_iter()
                    .zip(answers)
                    .zip(live)
                    .filter(|(_, live)| *live)
                    .map(|(((stream_id, token), (status, body)), _)| {
                        RootAction::Deliver(Delivery {
                            stream_id,
                            token,
                            status,
                            body,
                        })
                    }),
            );
        }
        out.extend(self.flush_batches());
        Some(out)
    }

    /// The key store answered 404 to a batch: it predates `/v1/batch`. Batching stops on this
    /// worker and the batch's calls go again, each on its own endpoint.
    fn without_batches(&self, flight: Flight, live: Vec<bool>) -> Vec<RootAction> {
        warn!("the key store has no /v1/batch (404): key-store calls are no longer batched");
        let mut batcher = self.batcher.borrow_mut();
        batcher.turn_off();
        let again: Vec<RootAction> = flight
            .entries
            .into_iter()
            .zip(flight.ops)
            .zip(flight.singles)
            .zip(live)
            .filter(|(_, live)| *live)
            .map(|(((entry, op), single), _)| {
                let alone = Flight {
                    entries: vec![entry],
                    ops: vec![op],
                    single: true,
                    singles: Vec::new(),
                };
                RootAction::Send(single, Purpose::Batch(alone))
            })
            .collect();
        batcher.reserve(again.len());
        drop(batcher);
        let mut out = again;
        out.extend(self.flush_batches());
        out
    }

    /// Each entry's answer, in the batch's order, as its own endpoint would have given it.
    fn answers(&self, flight: &Flight, status: Option<u16>, body: &[u8]) -> Vec<Answer> {
        let count = flight.entries.len();
        if flight.single {
            return vec![(status, body.to_vec()); count];
        }
        let parsed = match &self.cfg.keystore {
            Some(ks) => keystore_client::parse_batch(ks, status, body, &flight.ops),
            None => Err("no key store".to_string()),
        };
        parsed.unwrap_or_else(|e| {
            warn!("key-store batch of {count} call(s) failed: {e}");
            vec![(None, Vec::new()); count]
        })
    }
}
