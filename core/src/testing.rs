//! A fake Envoy for native tests: shared data with Envoy's CAS rules, a clock, callouts that the
//! test answers, and a record of every local reply, resume and counter.

use crate::host::{Callout, Host, SharedData, SharedSetError};
use crate::metrics::Metric;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// Shared data as Envoy keeps it: a version per key, CAS checked only on keys that exist.
/// Value and CAS version per key.
type Store = HashMap<String, (Vec<u8>, u32)>;

#[derive(Default, Clone)]
pub struct FakeShared {
    map: Rc<RefCell<Store>>,
    fail_cas: Rc<Cell<usize>>,
}

impl FakeShared {
    /// Makes the next `n` CAS writes fail, as if another worker had written first.
    pub fn fail_next_cas(&self, n: usize) {
        self.fail_cas.set(n);
    }
}

impl SharedData for FakeShared {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.map.borrow().get(key) {
            Some((v, cas)) if v.is_empty() => (None, Some(*cas)),
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        }
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError> {
        let mut map = self.map.borrow_mut();
        if let (Some(expected), Some((_, current))) = (cas, map.get(key)) {
            if self.fail_cas.get() > 0 {
                self.fail_cas.set(self.fail_cas.get() - 1);
                return Err(SharedSetError::CasMismatch);
            }
            if expected != *current {
                return Err(SharedSetError::CasMismatch);
            }
        }
        let next = map.get(key).map_or(1, |(_, c)| c + 1);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

/// A local reply the filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Sent {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// One stream's view of a fake Envoy; several share a [`FakeShared`] and a clock like workers do.
pub struct FakeHost {
    pub shared: FakeShared,
    pub clock: Rc<Cell<u64>>,
    pub ids: Rc<Cell<u64>>,
    pub request_headers: Vec<(String, Vec<u8>)>,
    pub request_body: Vec<u8>,
    pub response_headers: Vec<(String, Vec<u8>)>,
    pub response_body: Vec<u8>,
    pub response_trailers: Vec<(String, Vec<u8>)>,
    /// What the filter added as response trailers, in order.
    pub response_trailers_added: RefCell<Vec<(String, Vec<u8>)>>,
    /// What the filter set on the upstream's response headers, in order.
    pub response_headers_set: RefCell<Vec<(String, Vec<u8>)>>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    /// Response headers the filter removed, in order.
    pub response_headers_removed: RefCell<Vec<String>>,
    /// Request headers the filter set, in order.
    pub request_headers_set: RefCell<Vec<(String, Vec<u8>)>>,
    /// Filter state the filter set (`wasm.<name>` in Envoy), by name.
    pub filter_state: RefCell<HashMap<String, Vec<u8>>>,
    /// How often the filter made Envoy choose the route again.
    pub route_cache_cleared: Cell<u32>,
    pub sent: RefCell<Vec<Sent>>,
    pub callouts: RefCell<Vec<(u32, Callout)>>,
    pub refuse_dispatch: Cell<bool>,
    pub body_unreadable: Cell<bool>,
    pub stream_id: Cell<u32>,
    pub woke_root: Cell<u32>,
    pub resumed_request: Cell<u32>,
    pub resumed_response: Cell<u32>,
    pub counts: RefCell<HashMap<Metric, u64>>,
    pub observed: RefCell<HashMap<Metric, u64>>,
}

/// Each fake stream gets its own context id, as Envoy gives them.
fn next_stream_id() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Callout tokens, unique across the fake streams of a test run.
fn next_token() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(100);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl FakeHost {
    pub fn new(shared: &FakeShared, clock: &Rc<Cell<u64>>, ids: &Rc<Cell<u64>>) -> FakeHost {
        FakeHost {
            shared: shared.clone(),
            clock: clock.clone(),
            ids: ids.clone(),
            request_headers: Vec::new(),
            request_body: Vec::new(),
            response_headers: Vec::new(),
            response_body: Vec::new(),
            response_trailers: Vec::new(),
            response_trailers_added: RefCell::new(Vec::new()),
            response_headers_set: RefCell::new(Vec::new()),
            properties: HashMap::new(),
            response_headers_removed: RefCell::new(Vec::new()),
            request_headers_set: RefCell::new(Vec::new()),
            filter_state: RefCell::new(HashMap::new()),
            route_cache_cleared: Cell::new(0),
            sent: RefCell::new(Vec::new()),
            callouts: RefCell::new(Vec::new()),
            refuse_dispatch: Cell::new(false),
            body_unreadable: Cell::new(false),
            stream_id: Cell::new(next_stream_id()),
            woke_root: Cell::new(0),
            resumed_request: Cell::new(0),
            resumed_response: Cell::new(0),
            counts: RefCell::new(HashMap::new()),
            observed: RefCell::new(HashMap::new()),
        }
    }

    pub fn count_of(&self, m: Metric) -> u64 {
        self.counts.borrow().get(&m).copied().unwrap_or(0)
    }

    pub fn observed_of(&self, m: Metric) -> u64 {
        self.observed.borrow().get(&m).copied().unwrap_or(0)
    }

    pub fn last_sent(&self) -> Option<Sent> {
        self.sent.borrow().last().cloned()
    }

    pub fn last_callout(&self) -> Option<(u32, Callout)> {
        self.callouts.borrow().last().cloned()
    }
}

impl SharedData for FakeHost {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.shared.shared_get(key)
    }
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError> {
        self.shared.shared_set(key, value, cas)
    }
}

impl Host for FakeHost {
    fn now_ms(&self) -> u64 {
        self.clock.get()
    }
    fn random_u64(&self) -> u64 {
        self.ids.set(self.ids.get() + 1);
        self.ids.get()
    }
    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.request_headers.clone()
    }
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.request_headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }
    fn request_body(&self, size: usize) -> Result<Vec<u8>, String> {
        if self.body_unreadable.get() {
            return Err("BadArgument".to_string());
        }
        Ok(self.request_body.iter().take(size).copied().collect())
    }
    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        self.response_headers.clone()
    }
    fn response_body(&self, size: usize) -> Vec<u8> {
        self.response_body.iter().take(size).copied().collect()
    }
    fn response_trailers(&self) -> Vec<(String, Vec<u8>)> {
        self.response_trailers.clone()
    }
    fn add_response_trailer(&self, name: &str, value: &[u8]) -> bool {
        self.response_trailers_added
            .borrow_mut()
            .push((name.to_string(), value.to_vec()));
        true
    }
    fn set_response_header(&self, name: &str, value: &[u8]) {
        self.response_headers_set
            .borrow_mut()
            .push((name.to_string(), value.to_vec()));
    }
    fn remove_response_header(&self, name: &str) {
        self.response_headers_removed
            .borrow_mut()
            .push(name.to_string());
    }
    fn set_request_header(&self, name: &str, value: &[u8]) {
        self.request_headers_set
            .borrow_mut()
            .push((name.to_string(), value.to_vec()));
    }
    fn set_filter_state(&self, name: &str, value: &[u8]) -> bool {
        self.filter_state
            .borrow_mut()
            .insert(name.to_string(), value.to_vec());
        true
    }
    fn clear_route_cache(&self) -> bool {
        self.route_cache_cleared
            .set(self.route_cache_cleared.get() + 1);
        true
    }

    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        self.properties.get(path).cloned()
    }
    fn send_response(&self, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
        self.sent.borrow_mut().push(Sent {
            status,
            headers: headers.to_vec(),
            body: body.to_vec(),
        });
    }
    fn dispatch(&self, callout: &Callout) -> Result<u32, String> {
        if self.refuse_dispatch.get() {
            return Err("cluster not found".to_string());
        }
        // Unique across streams, as Envoy's are (every callout is the root context's).
        let token = next_token();
        self.callouts.borrow_mut().push((token, callout.clone()));
        Ok(token)
    }
    fn stream_id(&self) -> u32 {
        self.stream_id.get()
    }
    fn wake_root(&self, _queue: u32) -> Result<(), String> {
        self.woke_root.set(self.woke_root.get() + 1);
        Ok(())
    }
    fn resume_request(&self) {
        self.resumed_request.set(self.resumed_request.get() + 1);
    }
    fn resume_response(&self) {
        self.resumed_response.set(self.resumed_response.get() + 1);
    }
    fn count_observed(&self, metric: Metric) {
        *self.observed.borrow_mut().entry(metric).or_default() += 1;
    }
    fn count(&self, metric: Metric) {
        *self.counts.borrow_mut().entry(metric).or_default() += 1;
    }
}

/// A 32-byte secret for tests (the filter refuses shorter ones).
pub const TEST_SECRET: &str = "test-secret-0123456789abcdef-0123";

/// `json` with [`TEST_SECRET`] as `hmac_secret` when it names no secret itself.
pub fn with_test_secret(json: &str) -> String {
    if json.contains("hmac_secret") {
        return json.to_string();
    }
    let trimmed = json.trim_start();
    if trimmed.is_empty() {
        return format!(r#"{{"hmac_secret":"{TEST_SECRET}"}}"#);
    }
    let Some(rest) = trimmed.strip_prefix('{') else {
        return json.to_string();
    };
    let sep = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!(r#"{{"hmac_secret":"{TEST_SECRET}"{sep}{rest}"#)
}

/// Opens the sealed record of a `/complete` callout body (sealed under [`TEST_SECRET`]).
pub fn record_of_complete(body: &[u8]) -> crate::record::Record {
    let sent: idempotency_protocol::CompleteRequest =
        idempotency_protocol::body::decode_request(body).unwrap();
    let mut key = [0u8; 32];
    hex::decode_to_slice(sent.key.as_str(), &mut key).unwrap();
    let secrets = crate::config::Secrets::from_bytes(vec![TEST_SECRET.as_bytes().to_vec()]);
    match crate::record::Record::open(&sent.record, &crate::scope::RecordKey(key), &secrets) {
        Ok(r) => r,
        Err(e) => panic!("the complete callout's record does not open: {e:?}"),
    }
}

/// A callout's request body as JSON, whichever format it was sent in (tests read its fields).
pub fn callout_json(c: &Callout) -> serde_json::Value {
    let path = c
        .headers
        .iter()
        .find(|(n, _)| n == ":path")
        .map(|(_, v)| v.as_str())
        .unwrap_or_default();
    let endpoint = path.rsplit('/').next().unwrap_or_default();
    let text = idempotency_protocol::body::request_as_json(endpoint, &c.body).unwrap();
    serde_json::from_slice(&text).unwrap()
}

/// The settings of a property test: `PROPTEST_CASES` cases when set, else `default_cases`, and no
/// file of past failures (a failing case prints its input).
pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_cases),
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
