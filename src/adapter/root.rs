//! The plugin's root context, one per Envoy worker: it loads the configuration, owns the worker's
//! shared state, and carries out what [`Worker`] decides from its timer, its queue and the replies
//! to its own callouts (renewals, deferred writes, detached executions, answers to waiting streams).

use super::envoy::{
    callout_reply, count, map_bytes, now_ms, send_callout, send_local_response, EnvoyHost,
    EnvoyShared,
};
use super::http::{Http, Streams};
use crate::background::agenda::Agenda;
use crate::background::batch::Delivery;
use crate::background::worker::{Answer, RootAction, RootReply, Worker};
use crate::configure::configure;
use crate::metrics::Metric;
use crate::stream::Stream;
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// How often the root context renews leases and sends (and retries) the key-store writes that
/// streams handed over.
const TICK: Duration = Duration::from_millis(100);

/// Per-worker plugin state: the worker's shared state, the metric ids and the actions left for a
/// later callback (see [`Agenda`]).
pub(super) struct Root {
    pub(super) context_id: u32,
    pub(super) worker: Option<Rc<Worker>>,
    pub(super) metrics: Rc<Vec<u32>>,
    pub(super) agenda: Agenda,
    /// The worker's live streams, to hand them the answers of calls that travelled in a batch.
    pub(super) streams: Streams,
}

impl Root {
    /// Carries out what the worker decided, after what earlier callbacks left, in one flat loop:
    /// at most a few local replies per callback (see [`Agenda`]). What is left waits for the
    /// doorbell this rings, or for the next tick.
    fn run(&mut self, worker: &Worker, actions: Vec<RootAction>) {
        let now = now_ms();
        self.agenda.begin();
        self.agenda.extend(actions);
        while let Some(action) = self.agenda.take_next() {
            match action {
                RootAction::Send(callout, purpose) => match send_callout(&callout) {
                    Ok(token) => worker.sent(token, purpose, now),
                    Err(e) => {
                        let more = worker.not_sent(purpose, &e, &EnvoyShared, now);
                        self.agenda.push_front(more);
                    }
                },
                RootAction::Answer(answer) => self.answer(worker, answer),
                RootAction::Deliver(delivery) => self.deliver(&delivery),
                RootAction::Count(metric) => count(&self.metrics, metric),
            }
        }
        if self.agenda.has_more() {
            // Envoy posts the queue's wake-up to the worker's event loop: a fresh stack.
            if let Some(queue) = worker.doorbell() {
                if let Err(e) = hostcalls::enqueue_shared_queue(queue, Some(b"1")) {
                    warn!("cannot ring the doorbell ({e:?}); the next tick answers the rest");
                }
            }
        }
    }

    /// The host a stream's code sees when the root context runs it.
    fn host_for(&self, stream_id: u32) -> EnvoyHost {
        EnvoyHost {
            metrics: self.metrics.clone(),
            counter: Cell::new(0),
            now: Cell::new(None),
            root_id: self.context_id,
            stream_id,
        }
    }

    /// Runs `f` as stream `id` (Envoy's effective context switched to it, then back); false, and
    /// nothing run, for a stream whose end Envoy reported. Envoy deletes an ended stream's context
    /// only at the end of the event-loop turn, so switching to it would still succeed, but the SDK
    /// has forgotten it: a reply sent then would reach callbacks of a context the SDK does not
    /// have, which traps the VM.
    fn as_stream(&self, id: u32, f: impl FnOnce(&EnvoyHost)) -> bool {
        if !self.streams.borrow().contains_key(&id) || hostcalls::set_effective_context(id).is_err()
        {
            return false;
        }
        f(&self.host_for(id));
        if let Err(e) = hostcalls::set_effective_context(self.context_id) {
            warn!("cannot switch back to the root context: {e:?}");
        }
        true
    }

    /// Hands a stream the answer to its key-store call that travelled in a batch: its callout
    /// callback runs with the stream as Envoy's effective context (so that it can resume its
    /// request or answer it); a stream that is gone is skipped.
    fn deliver(&self, d: &Delivery) {
        let stream = self
            .streams
            .borrow()
            .get(&d.stream_id)
            .and_then(|w| w.upgrade());
        let delivered = stream.is_some_and(|stream| {
            self.as_stream(d.stream_id, |host| match stream.try_borrow_mut() {
                Ok(mut stream) => stream.on_callout_response(host, d.token, d.status, &d.body),
                Err(_) => error!(
                    "stream {} busy; its key-store answer is dropped",
                    d.stream_id
                ),
            })
        });
        if !delivered {
            info!("the client left before its key-store answer; dropped");
        }
    }

    /// Answers a stream from the root context, through the replay listener when the worker
    /// routes it (`Worker::route_or_answer`), else as a local reply; a stream that is gone is
    /// skipped.
    fn answer(&self, worker: &Worker, answer: Answer) {
        let id = answer.stream_id;
        let answered = self.as_stream(id, |host| {
            if let Some(answer) = worker.route_or_answer(host, answer) {
                let handover = &worker.trailers;
                handover.hand(id, answer.body.len(), &answer.trailers);
                handover.hand_bodiless(id, answer.body.len(), &answer.headers);
                send_local_response(answer.status, &answer.headers, &answer.body);
            }
        });
        if !answered {
            info!("the client left before its answer; the answer is stored");
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        num_trailers: usize,
    ) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let (status, body) = callout_reply(num_headers, body_size);
        let detached = worker.is_detached(token);
        let headers = if detached && num_headers > 0 {
            map_bytes(MapType::HttpCallResponseHeaders)
        } else {
            Vec::new()
        };
        // A detached request's answer keeps its trailers (HTTP/2, gRPC's status) in its record.
        let trailers = if detached && num_trailers > 0 {
            map_bytes(MapType::HttpCallResponseTrailers)
        } else {
            Vec::new()
        };
        let (reply, actions) = worker.on_reply_with_trailers(
            token,
            status,
            (headers, body, trailers),
            &EnvoyShared,
            now_ms(),
        );
        match reply {
            RootReply::Write(settled) => match settled {
                crate::background::deferred::Settled::Retrying(e) => {
                    warn!("deferred key-store write failed ({e}); retrying")
                }
                crate::background::deferred::Settled::GaveUp(e) => {
                    warn!("deferred key-store write failed ({e}); the claim's lease will free the key")
                }
                _ => {}
            },
            RootReply::Renewals { refused, .. } => {
                for key in refused {
                    warn!(
                        "key {}: lease renewal refused: another gateway took the key over",
                        key.short()
                    );
                }
            }
            RootReply::RenewalFailed { keys, error } => {
                warn!("lease renewal of {keys} key(s) failed: {error}")
            }
            RootReply::Detached | RootReply::Batch | RootReply::Unknown => {}
        }
        self.run(&worker, actions);
    }

    /// Envoy unloads the plugin (which shutdown paths get here: docs/hardening.md, "Leaving
    /// cleanly"). The root context sends what settles what it holds ([`Worker::on_shutdown`]).
    /// Envoy delivers no answer to a plugin past this point (seen on Envoy 1.40: a write sent here
    /// lands, its answer never comes back), so there is nothing to wait for: done at once.
    fn on_done(&mut self) -> bool {
        info!("the plugin is being unloaded (root context on_done)");
        if let Some(worker) = self.worker.clone() {
            let actions = worker.on_shutdown(&EnvoyShared, now_ms());
            self.run(&worker, actions);
        }
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        // Follow Envoy's level for the `wasm` component, so `debug` lines show when asked for and
        // cost nothing otherwise.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                error!("cannot read the plugin configuration: {e:?}");
                return false;
            }
        };
        let worker = match configure(&bytes, &EnvoyShared) {
            Ok(worker) => worker,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        let mut ids = Vec::with_capacity(Metric::ALL.len());
        // The counters of enforce mode, then those of observe mode, in `Metric::ALL` order.
        let names = Metric::ALL
            .iter()
            .map(|m| m.name().to_string())
            .chain(Metric::ALL.iter().map(|m| m.observed_name()));
        for name in names {
            match hostcalls::define_metric(MetricType::Counter, &name) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    error!("cannot define metric {name}: {e:?}");
                    return false;
                }
            }
        }
        info!(
            "configured: {} route rule(s), {} near-cache slots, key store: {}",
            worker.cfg.routes.len(),
            worker.cfg.l1_slots,
            worker
                .cfg
                .keystore
                .as_ref()
                .map_or("none (shared data only)", |k| k.cluster.as_str())
        );
        if let Err(e) = hostcalls::set_tick_period(TICK) {
            error!("cannot start the renewal timer: {e:?}");
            return false;
        }
        // Each worker's root context has its own queue: a stream that hands it a detached
        // execution rings it, and Envoy calls `on_queue_ready` on this root context.
        let mut id = [0u8; 8];
        let _ = getrandom::getrandom(&mut id);
        let name = format!("idempotency.doorbell.{:016x}", u64::from_le_bytes(id));
        match hostcalls::register_shared_queue(&name) {
            Ok(queue) => worker.set_doorbell(queue),
            Err(e) => warn!("no doorbell queue ({e:?}): detached execution is unavailable"),
        }
        self.metrics = Rc::new(ids);
        self.worker = Some(Rc::new(worker));
        true
    }

    fn on_tick(&mut self) {
        let Some(worker) = self.worker.clone() else {
            return;
        };
        let mut actions = worker.start_detached();
        actions.extend(worker.on_tick(&EnvoyShared, now_ms()));
        self.run(&worker, actions);
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue_id) {}
        if let Some(worker) = self.worker.clone() {
            let mut actions = worker.start_detached();
            // A stream's call came back (or a stream ended): send the calls that wait.
            actions.extend(worker.flush_batches());
            self.run(&worker, actions);
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.as_ref()?;
        let stream = Rc::new(RefCell::new(Stream::new(worker.clone())));
        self.streams
            .borrow_mut()
            .insert(context_id, Rc::downgrade(&stream));
        Some(Box::new(Http {
            stream,
            host: self.host_for(context_id),
            streams: self.streams.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
