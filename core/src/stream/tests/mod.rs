//! The state machine driven through the fake host, as Envoy would drive it: several streams
//! (workers) over one shared-data map and one clock. This module is the driver; its children
//! hold the tests, by the part of the behaviour they check.

mod abandoned;
mod admission;
mod batch;
mod batch_props;
mod budget;
mod claim;
mod detached;
mod expiry;
mod grpc;
mod handover;
mod keystore;
mod modes;
mod props;
mod root_routed;
mod rotation;
mod routed;
mod settle;
mod settlement;
mod streaming;
mod trailers;

use crate::background::deferred::Deferred;
use crate::background::worker::{Purpose, RootAction, Worker};
use crate::configure::configure;
use crate::host::{Callout, Headers};
use crate::metrics::Metric;
use crate::record::Outcome;
use crate::stream::{Flow, Stream};
use crate::testing::{FakeHost, FakeShared, Sent};
use serde_json::Value;
use std::cell::Cell;
use std::rc::Rc;

/// Sends `req` with `content-type` (a gRPC call with `application/grpc`).
fn send_as(w: &World, req: &Req, content_type: &str) -> (Stream, FakeHost, Flow) {
    let mut host = w.host(req);
    host.request_headers
        .push(("content-type".into(), content_type.as_bytes().to_vec()));
    w.run(host, req)
}

struct World {
    worker: Rc<Worker>,
    shared: FakeShared,
    clock: Rc<Cell<u64>>,
    ids: Rc<Cell<u64>>,
}

/// Envoy's own answer bodies to a request it sent: its timeout, and a connection refused.
const ENVOY_TIMEOUT: &[u8] = b"upstream request timeout";
const ENVOY_REFUSED: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";

/// What the test sends.
struct Req<'a> {
    method: &'a str,
    path: &'a str,
    key: Option<&'a [u8]>,
    caller: Option<&'a str>,
    body: &'a [u8],
}

fn post<'a>(key: &'a str, body: &'a [u8]) -> Req<'a> {
    Req {
        method: "POST",
        path: "/payments",
        key: Some(key.as_bytes()),
        caller: Some("Bearer alice"),
        body,
    }
}

impl World {
    fn new(json: &str) -> World {
        let shared = FakeShared::default();
        let worker = configure(crate::testing::with_test_secret(json).as_bytes(), &shared).unwrap();
        World {
            worker: Rc::new(worker),
            shared,
            clock: Rc::new(Cell::new(1_000)),
            ids: Rc::new(Cell::new(0)),
        }
    }

    /// Another Envoy worker over the same shared data and clock, with another configuration
    /// (e.g. after a secret rotation).
    fn sharing(&self, json: &str) -> World {
        let worker = configure(
            crate::testing::with_test_secret(json).as_bytes(),
            &self.shared,
        )
        .unwrap();
        World {
            worker: Rc::new(worker),
            shared: self.shared.clone(),
            clock: self.clock.clone(),
            ids: self.ids.clone(),
        }
    }

    /// Runs the request side; returns the stream, its host and what the last request callback returned.
    fn send(&self, req: &Req) -> (Stream, FakeHost, Flow) {
        self.run(self.host(req), req)
    }

    /// Runs the request side of `req` on `host` (a fake Envoy holding it, see [`World::host`]).
    fn run(&self, host: FakeHost, req: &Req) -> (Stream, FakeHost, Flow) {
        let mut stream = Stream::new(self.worker.clone());
        let mut flow = stream.on_request_headers(&host, req.body.is_empty());
        if !req.body.is_empty() && host.sent.borrow().is_empty() {
            flow = stream.on_request_body(&host, req.body.len(), true);
        }
        (stream, host, flow)
    }

    /// A fake Envoy holding `req`, for a test that drives the callbacks itself.
    fn host(&self, req: &Req) -> FakeHost {
        let mut host = FakeHost::new(&self.shared, &self.clock, &self.ids);
        host.request_headers = vec![
            (":method".into(), req.method.as_bytes().to_vec()),
            (":path".into(), req.path.as_bytes().to_vec()),
        ];
        if let Some(k) = req.key {
            host.request_headers
                .push(("idempotency-key".into(), k.to_vec()));
        }
        if let Some(c) = req.caller {
            host.request_headers
                .push(("authorization".into(), c.as_bytes().to_vec()));
        }
        host.request_body = req.body.to_vec();
        host
    }

    /// Sends `req` on a detached rule (as `content_type`, if any): the request is held for the
    /// root context, which is rung; the router never sees it.
    fn hold_detached(&self, req: &Req, content_type: Option<&str>) -> (Stream, FakeHost) {
        self.worker.set_doorbell(1);
        let (s, h, flow) = match content_type {
            Some(content_type) => send_as(self, req, content_type),
            None => self.send(req),
        };
        assert_eq!(flow, Flow::Pause, "the router never sees the request");
        (s, h)
    }

    /// The root context sends the one detached request waiting, as its callout 40.
    fn dispatch(&self) -> Callout {
        let mut out = self.worker.start_detached();
        assert_eq!(out.len(), 1, "one detached request waits");
        let RootAction::Send(callout, purpose) = out.remove(0) else {
            panic!("no detached callout")
        };
        self.worker.sent(40, purpose, self.clock.get());
        callout
    }

    /// What the root context does when its callout `token` comes back (no trailers).
    fn reply(
        &self,
        token: u32,
        status: Option<u16>,
        headers: Headers,
        body: &[u8],
    ) -> Vec<RootAction> {
        self.reply_with_trailers(token, status, (headers, body.to_vec(), Vec::new()))
    }

    /// What the root context does when its callout `token` comes back: headers, body, trailers.
    fn reply_with_trailers(
        &self,
        token: u32,
        status: Option<u16>,
        reply: (Headers, Vec<u8>, Headers),
    ) -> Vec<RootAction> {
        let (_, actions) = self.worker.on_reply_with_trailers(
            token,
            status,
            reply,
            &self.shared,
            self.clock.get(),
        );
        actions
    }

    /// The key-store writes streams handed to the root context so far.
    fn handed_over(&self) -> Vec<Deferred> {
        self.worker.writes.borrow_mut().take_due(self.clock.get())
    }

    fn advance(&self, ms: u64) {
        self.clock.set(self.clock.get() + ms);
    }

    /// Runs the response side as the upstream answers.
    fn respond(&self, stream: &mut Stream, host: &mut FakeHost, status: u16, body: &[u8]) -> Flow {
        host.response_headers = vec![
            (":status".into(), status.to_string().into_bytes()),
            ("content-type".into(), b"application/json".to_vec()),
            ("x-bin".into(), vec![0xff, 0xfe]),
            ("date".into(), b"Mon".to_vec()),
        ];
        host.response_body = body.to_vec();
        let flow = stream.on_response_headers(host, body.is_empty());
        if body.is_empty() || flow == Flow::Pause {
            return flow;
        }
        stream.on_response_body(host, body.len(), true)
    }
}

fn problem(sent: &Sent) -> Value {
    assert_eq!(
        sent.header("content-type"),
        Some(&b"application/problem+json"[..])
    );
    let v: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(v["status"], sent.status);
    v
}

/// Envoy's own answers, told apart by their response flags.
fn respond_as_envoy(w: &World, s: &mut Stream, h: &mut FakeHost, status: u16, flags: u64) -> Flow {
    h.properties.insert(
        vec!["response".into(), "flags".into()],
        flags.to_le_bytes().to_vec(),
    );
    w.respond(s, h, status, ENVOY_TIMEOUT)
}
