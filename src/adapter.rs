//! The thin layer between Envoy and the filter's decisions: proxy-wasm contexts that forward each
//! callback to [`Stream`], and [`EnvoyHost`], which implements [`Host`] with hostcalls. Hostcall
//! failures become logged defaults here, so nothing below can panic the VM.

use crate::config::Config;
use crate::deferred::{Retrier, Settled};
use crate::host::{Callout, Host, SharedData, SharedSetError};
use crate::l1::NearCache;
use crate::metrics::Metric;
use crate::stream::{Flow, Stream};
use log::{error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Bytes of bucket overhead allowed on top of the largest record, for claims and small records.
const SLOT_OVERHEAD: usize = 4096;

/// How often the root context sends (and retries) the key-store writes that streams handed over.
const DEFERRED_TICK: Duration = Duration::from_millis(200);

/// Key-store writes handed over by streams, shared by the root and the streams of one worker.
type Deferrals = Rc<RefCell<Retrier>>;

/// Per-worker plugin state: the validated config, the near cache and the metric ids.
#[derive(Default)]
struct Root {
    config: Option<Rc<Config>>,
    cache: Option<Rc<NearCache>>,
    metrics: Rc<Vec<u32>>,
    deferrals: Deferrals,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        num_headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let (status, body) = callout_reply(num_headers, body_size);
        match self
            .deferrals
            .borrow_mut()
            .on_reply(token, status, &body, now_ms())
        {
            Settled::Done | Settled::Unknown => {}
            Settled::Retrying(e) => warn!("deferred key-store write failed ({e}); retrying"),
            Settled::GaveUp(e) => {
                warn!("deferred key-store write failed ({e}); the claim's lease will free the key")
            }
        }
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
        let config = match Config::parse(&bytes) {
            Ok(c) => c,
            Err(e) => {
                error!("{e}");
                return false;
            }
        };
        if config.default_secret {
            warn!("`hmac_secret` is the built-in default; set your own in production");
        }
        let cache = NearCache {
            slots: config.l1_slots,
            slot_budget: config.max_response_bytes.saturating_add(SLOT_OVERHEAD),
        };
        if let Err(e) = cache.ensure_slots(&EnvoyShared) {
            error!("cannot create the near-cache slots: {e:?}");
            return false;
        }
        let mut ids = Vec::with_capacity(Metric::ALL.len());
        for m in Metric::ALL {
            match hostcalls::define_metric(MetricType::Counter, m.name()) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    error!("cannot define metric {}: {e:?}", m.name());
                    return false;
                }
            }
        }
        info!(
            "configured: {} route rule(s), {} near-cache slots, key store: {}",
            config.routes.len(),
            config.l1_slots,
            config
                .keystore
                .as_ref()
                .map_or("none (shared data only)", |k| k.cluster.as_str())
        );
        if config.keystore.is_some() {
            if let Err(e) = hostcalls::set_tick_period(DEFERRED_TICK) {
                error!("cannot start the release timer: {e:?}");
                return false;
            }
        }
        self.metrics = Rc::new(ids);
        self.config = Some(Rc::new(config));
        self.cache = Some(Rc::new(cache));
        true
    }

    fn on_tick(&mut self) {
        let due = self.deferrals.borrow_mut().take_due(now_ms());
        for d in due {
            match EnvoyHost::send_callout(&d.callout) {
                Ok(token) => self.deferrals.borrow_mut().sent(token, d),
                Err(e) => warn!(
                    "deferred key-store write not sent ({e}); the claim's lease will free the key"
                ),
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let (Some(config), Some(cache)) = (&self.config, &self.cache) else {
            return None;
        };
        Some(Box::new(Http {
            stream: Stream::new(config.clone(), cache.clone()),
            host: EnvoyHost {
                metrics: self.metrics.clone(),
                counter: Cell::new(0),
            },
            deferrals: self.deferrals.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    stream: Stream,
    host: EnvoyHost,
    deferrals: Deferrals,
}

impl Http {
    /// Hands what the stream could not finish to the root context.
    fn hand_over(&mut self) {
        for d in self.stream.take_deferred() {
            self.deferrals.borrow_mut().push(d);
        }
    }
}

/// The status (`None` for a reset callout, which has no headers) and body of a callout reply.
fn callout_reply(num_headers: usize, body_size: usize) -> (Option<u16>, Vec<u8>) {
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
    let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
        .ok()
        .flatten()
        .unwrap_or_default();
    (status, body)
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
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
        let (status, body) = callout_reply(num_headers, body_size);
        self.stream
            .on_callout_response(&self.host, token, status, &body);
        self.hand_over();
    }

    fn on_done(&mut self) -> bool {
        self.stream.on_done(&self.host);
        self.hand_over();
        true
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, end_of_stream: bool) -> Action {
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

/// Shared data through hostcalls.
struct EnvoyShared;

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
struct EnvoyHost {
    metrics: Rc<Vec<u32>>,
    counter: Cell<u64>,
}

fn map_bytes(map: MapType) -> Vec<(String, Vec<u8>)> {
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

impl EnvoyHost {
    /// Dispatches from whichever context is current (a stream's, or the root's on tick).
    fn send_callout(callout: &Callout) -> Result<u32, String> {
        let headers: Vec<(&str, &str)> = callout
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        hostcalls::dispatch_http_call(
            &callout.cluster,
            headers,
            Some(&callout.body),
            Vec::new(),
            Duration::from_millis(callout.timeout_ms),
        )
        .map_err(|e| format!("{e:?}"))
    }
}

impl Host for EnvoyHost {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn random_u64(&self) -> u64 {
        let mut bytes = [0u8; 8];
        if getrandom::getrandom(&mut bytes).is_ok() {
            return u64::from_le_bytes(bytes);
        }
        // WASI random_get should not fail; if it does, time and a counter still separate requests.
        self.counter.set(self.counter.get().wrapping_add(1));
        self.now_ms().rotate_left(20) ^ self.counter.get()
    }

    fn request_headers(&self) -> Vec<(String, Vec<u8>)> {
        map_bytes(MapType::HttpRequestHeaders)
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name)
            .ok()
            .flatten()
    }

    fn request_body(&self, size: usize) -> Vec<u8> {
        buffer(BufferType::HttpRequestBody, size)
    }

    fn response_headers(&self) -> Vec<(String, Vec<u8>)> {
        map_bytes(MapType::HttpResponseHeaders)
    }

    fn response_body(&self, size: usize) -> Vec<u8> {
        buffer(BufferType::HttpResponseBody, size)
    }

    fn property(&self, path: &[String]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.iter().map(String::as_str).collect())
            .ok()
            .flatten()
    }

    fn send_response(&self, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]) {
        let map = serialize_map(headers);
        // The SDK's send_http_response takes &str values and panics on an unexpected status;
        // replayed headers are bytes, so call the ABI directly.
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

    fn dispatch(&self, callout: &Callout) -> Result<u32, String> {
        EnvoyHost::send_callout(callout)
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
        if let Some(id) = self.metrics.get(metric.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
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
