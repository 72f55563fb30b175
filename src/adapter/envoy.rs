//! Envoy through hostcalls: [`EnvoyHost`] implements [`Host`] for one stream, [`EnvoyShared`] the
//! shared data, and the helpers the contexts use to read callout replies, send callouts and local
//! replies, and count. Hostcall failures are logged here and become defaults (or, for the request
//! body, an error the stream refuses), so nothing below can panic the VM.

use crate::host::{Callout, Host, SharedData, SharedSetError};
use crate::metrics::Metric;
use log::{error, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, Status};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Adds one to `metric` (its id in `metrics`, defined by the root context at configure time).
pub(super) fn count(metrics: &[u32], metric: Metric) {
    if let Some(id) = metrics.get(metric.index()) {
        let _ = hostcalls::increment_metric(*id, 1);
    }
}

/// The status (`None` for a reset callout, which has no headers) and body of a callout reply.
pub(super) fn callout_reply(num_headers: usize, body_size: usize) -> (Option<u16>, Vec<u8>) {
    // A failed callout arrives as Envoy's own 503/504; only a reset comes without headers.
    let status = if num_headers == 0 {
        None
    } else {
        hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|s| s.parse::<u16>().ok())
    };
    // The reply's size is the upstream's to choose: make sure the VM can hold it before Envoy
    // copies it in (a failed allocation there aborts the VM). Without room the reply is read as
    // a cut one: for a detached request, "outcome unknown".
    if crate::budget::try_buffer(body_size).is_err() {
        warn!("no memory for a {body_size}-byte callout reply; treated as a reset");
        return (None, Vec::new());
    }
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

pub(super) fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// Shared data through hostcalls.
pub(super) struct EnvoyShared;

impl SharedData for EnvoyShared {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(SharedSetError::CasMismatch),
            Err(e) => Err(SharedSetError::Failed(format!("{e:?}"))),
        }
    }
}

/// [`Host`] for the current stream, through hostcalls.
pub(super) struct EnvoyHost {
    pub(super) metrics: Rc<Vec<u32>>,
    pub(super) counter: Cell<u64>,
    /// The time read in this callback (one host call per callback, not one per decision that
    /// reads the clock); `None` at the start of each callback (`http.rs`, `Http::with`).
    pub(super) now: Cell<Option<u64>>,
    /// The worker's root context, which makes the stream's callouts.
    pub(super) root_id: u32,
    pub(super) stream_id: u32,
}

pub(super) fn map_bytes(map: MapType) -> Vec<(String, Vec<u8>)> {
    hostcalls::get_map_bytes(map).unwrap_or_default()
}

fn buffer(kind: BufferType, size: usize) -> Vec<u8> {
    hostcalls::get_buffer(kind, 0, size)
        .ok()
        .flatten()
        .unwrap_or_default()
}

impl SharedData for EnvoyHost {
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        EnvoyShared.shared_get(key)
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError> {
        EnvoyShared.shared_set(key, value, cas)
    }
}

/// Dispatches a callout from the current Envoy context. A client's request (detached execution)
/// is sent with its header values as bytes ([`crate::host::Forwarded`]).
pub(super) fn send_callout(callout: &Callout) -> Result<u32, String> {
    let headers = match &callout.forwarded {
        Some(forwarded) => as_pairs(&forwarded.headers),
        None => callout
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect(),
    };
    hostcalls::dispatch_http_call(
        &callout.cluster,
        headers,
        Some(&callout.body),
        Vec::new(),
        Duration::from_millis(callout.timeout_ms),
    )
    .map_err(|e| format!("{e:?}"))
}

/// A client's header fields as the `&str` pairs the SDK's `dispatch_http_call` takes, values as
/// the client sent them, UTF-8 or not (the router forwards `caf\xe9` as those bytes).
///
/// Why not the raw `proxy_http_call` with a byte map, as the local replies do: the SDK routes a
/// callout's reply to its context through a token table that only its own `dispatch_http_call`
/// fills, and a reply with a token it does not know aborts the VM (`expect("invalid token_id")`
/// in proxy-wasm 0.2.5's dispatcher), so every callout must go through that call.
fn as_pairs(map: &[(String, Vec<u8>)]) -> Vec<(&str, &str)> {
    map.iter()
        .map(|(name, value)| {
            // SAFETY: proxy-wasm 0.2.5 (pinned in Cargo.toml) only serialises these pairs
            // (`serialize_map`: `len` and `as_bytes`, then the bytes are copied into the host's
            // map); no code that relies on UTF-8 reads the value. The slice outlives the call.
            let value = unsafe { std::str::from_utf8_unchecked(value) };
            (name.as_str(), value)
        })
        .collect()
}

impl EnvoyHost {
    /// WASI random_get should not fail; if it does, time and a counter still separate requests.
    fn fallback_random(&self) -> u64 {
        self.counter.set(self.counter.get().wrapping_add(1));
        self.now_ms().rotate_left(20) ^ self.counter.get()
    }

    /// Runs `f` with the root context as Envoy's effective context, then comes back to the stream.
    /// A callout made there belongs to the root context, so Envoy does not cancel it when the
    /// stream ends: a record or release always reaches the key store, and every callout gets a
    /// reply, which is what frees its entry in the SDK's table of pending callouts.
    pub(super) fn as_root<T>(&self, f: impl FnOnce() -> T) -> T {
        if let Err(e) = hostcalls::set_effective_context(self.root_id) {
            warn!("cannot switch to the root context: {e:?}");
        }
        let out = f();
        if let Err(e) = hostcalls::set_effective_context(self.stream_id) {
            warn!("cannot switch back to the stream context: {e:?}");
        }
        out
    }
}

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        if let Some(now) = self.now.get() {
            return now;
        }
        let now = now_ms();
        self.now.set(Some(now));
        now
    }

    fn random_u64(&self) -> u64 {
        let mut bytes = [0u8; 8];
        if getrandom::getrandom(&mut bytes).is_ok() {
            return u64::from_le_bytes(bytes);
        }
        self.fallback_random()
    }

    fn random_pair(&self) -> (u64, u64) {
        // One WASI `random_get` for both.
        let mut bytes = [0u8; 16];
        if getrandom::getrandom(&mut bytes).is_ok() {
            let (first, second) = bytes.split_at(8);
            let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]));
            return (word(first), word(second));
        }
        (self.fallback_random(), self.fallback_random())
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        map_bytes(MapType::HttpRequestHeaders)
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn request_body(&self, size: usize) -> Result<Vec<u8>, String> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .map(Option::unwrap_or_default)
            .map_err(|e| format!("{e:?}"))
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        map_bytes(MapType::HttpResponseHeaders)
    }

    fn response_body(&self, size: usize) -> Vec<u8> {
        buffer(BufferType::HttpResponseBody, size)
    }

    fn response_trailers(&self) -> Vec<(String, Vec<u8>)> {
        map_bytes(MapType::HttpResponseTrailers)
    }

    fn add_response_trailer(&self, name: &str, value: &[u8]) -> bool {
        // The raw call: proxy-wasm's wrapper panics on a refusal (Envoy refuses trailers on a
        // response it sends trailers-only), and a refusal here only means no trailers.
        // SAFETY: both slices outlive the call, which only reads them.
        let status = unsafe {
            proxy_add_header_map_value(
                MapType::HttpResponseTrailers as u32,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
        if status != 0 {
            warn!("cannot add response trailer {name} (status {status})");
        }
        status == 0
    }

    fn set_response_header(&self, name: &str, value: &[u8]) {
        if let Err(e) =
            hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, Some(value))
        {
            warn!("cannot set response header {name}: {e:?}");
        }
    }

    fn remove_response_header(&self, name: &str) {
        if let Err(e) = hostcalls::set_map_value_bytes(MapType::HttpResponseHeaders, name, None) {
            warn!("cannot remove response header {name}: {e:?}");
        }
    }

    fn set_request_header(&self, name: &str, value: &[u8]) {
        if let Err(e) =
            hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value))
        {
            warn!("cannot set request header {name}: {e:?}");
        }
    }

    fn set_filter_state(&self, name: &str, value: &[u8]) -> bool {
        // The raw call: the SDK's wrapper panics on any status but Ok. A one-part path makes
        // Envoy store the value as filter state `wasm.<name>` (proxy-wasm separates the parts of
        // a path by NUL bytes, so one part is the name itself).
        let path = name.as_bytes();
        // SAFETY: both slices outlive the call, which only reads them.
        let status =
            unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) };
        if status != 0 {
            warn!("cannot set filter state {name} (status {status})");
        }
        status == 0
    }

    fn clear_route_cache(&self) -> bool {
        match hostcalls::call_foreign_function("clear_route_cache", None) {
            Ok(_) => true,
            Err(e) => {
                warn!("clear_route_cache refused: {e:?}");
                false
            }
        }
    }

    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.iter().map(String::as_str).collect())
            .ok()
            .flatten()
    }

    fn send_response(&self, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
        send_local_response(status, headers, body);
    }

    fn stream_id(&self) -> u32 {
        self.stream_id
    }

    fn wake_root(&self, queue: u32) -> Result<(), String> {
        hostcalls::enqueue_shared_queue(queue, Some(b"1")).map_err(|e| format!("{e:?}"))
    }

    fn dispatch(&self, callout: &Callout) -> Result<u32, String> {
        self.as_root(|| send_callout(callout))
    }

    fn resume_request(&self) {
        if let Err(e) = hostcalls::resume_http_request() {
            warn!("resume_http_request failed: {e:?}");
        }
    }

    fn resume_response(&self) {
        if let Err(e) = hostcalls::resume_http_response() {
            warn!("resume_http_response failed: {e:?}");
        }
    }

    fn count(&self, metric: Metric) {
        count(&self.metrics, metric);
    }

    fn count_observed(&self, metric: Metric) {
        if let Some(id) = self.metrics.get(Metric::ALL.len() + metric.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

/// Answers the effective context's stream locally. The SDK's send_http_response takes `&str`
/// values and panics on an unexpected status; replayed headers are bytes, so call the ABI directly.
pub(super) fn send_local_response(status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
    let map = serialize_map(headers);
    let rc = unsafe {
        proxy_send_local_response(
            u32::from(status),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            map.as_ptr(),
            map.len(),
            -1,
        )
    };
    if rc != 0 {
        error!("local reply refused by the host (status {rc})");
    }
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> u32;
    fn proxy_set_property(
        path_data: *const u8,
        path_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
}

/// The proxy-wasm header-map encoding: a count, the (name, value) lengths, then each name and
/// value followed by a NUL byte; all integers little-endian u32.
fn serialize_map(pairs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let len32 = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    let mut out = Vec::new();
    out.extend_from_slice(&len32(pairs.len()));
    for (name, value) in pairs {
        out.extend_from_slice(&len32(name.len()));
        out.extend_from_slice(&len32(value.len()));
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}
