//! The small surface of Envoy that the filter's decisions need. The proxy-wasm adapter implements
//! it with hostcalls; native tests implement it with a fake that behaves like Envoy.

use crate::metrics::Metric;

/// Header fields in order, names as Envoy gives them, values as bytes (they need not be UTF-8).
pub type Headers = Vec<(String, Vec<u8>)>;

/// Why a shared-data write was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedSetError {
    /// Someone wrote the key since it was read.
    CasMismatch,
    /// Any other host failure.
    Failed(String),
}

/// An HTTP request through an Envoy cluster: to the key store, or a client's request the plugin
/// sends on itself (detached execution, [`Forwarded`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Callout {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
    /// A client's request: sent with these fields (as bytes) in place of `headers`.
    pub forwarded: Option<Box<Forwarded>>,
}

/// A client's request as the plugin sends it on: its header fields in order, values as the
/// client sent them (they need not be UTF-8). No trailers: Envoy's async client, which carries
/// every callout, sends none (a request that has them runs inline, `stream/mod.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Forwarded {
    pub headers: Headers,
}

/// Envoy shared data: a key-value map per Envoy process, shared by its workers, with CAS.
pub trait SharedData {
    /// The value and its CAS version. Envoy answers `(None, None)` for a key never written and
    /// `(None, Some(cas))` for a removed one.
    fn shared_get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes `value`. With `cas`, the write happens only if the key is still at that version
    /// (Envoy ignores the check for a key that does not exist yet).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedSetError>;
}

/// Everything one HTTP stream needs from Envoy.
pub trait Host: SharedData {
    fn now_ms(&self) -> u64;
    /// An identifier unique across the workers of one Envoy, for claim ownership.
    fn random_u64(&self) -> u64;
    /// Two of [`Host::random_u64`], in that order; a host may draw both at once (one host call).
    fn random_pair(&self) -> (u64, u64) {
        let first = self.random_u64();
        (first, self.random_u64())
    }
    /// Request headers, including pseudo-headers; values as bytes.
    fn request_headers(&self) -> Vec<(String, Vec<u8>)>;
    /// One request header (or pseudo-header) by its lower-case name.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// The first `size` bytes of the buffered request body (empty when there is none); an error
    /// when the host could not give it.
    fn request_body(&self, size: usize) -> Result<Vec<u8>, String>;
    fn response_headers(&self) -> Vec<(String, Vec<u8>)>;
    fn response_body(&self, size: usize) -> Vec<u8>;
    /// The upstream response's trailers (HTTP/2 trailers, gRPC's status), once they arrived.
    fn response_trailers(&self) -> Vec<(String, Vec<u8>)>;
    /// Sets a response header (replacing any of that name) while the response headers are held.
    fn set_response_header(&self, name: &str, value: &[u8]);
    /// Adds a response trailer (from the last body callback of the response); false when Envoy
    /// refuses (a response that cannot carry trailers).
    fn add_response_trailer(&self, name: &str, value: &[u8]) -> bool;
    /// Removes a response header while the response headers are held.
    fn remove_response_header(&self, name: &str);
    /// Sets a request header (replacing any of that name) while the request headers are held.
    fn set_request_header(&self, name: &str, value: &[u8]);
    /// Sets this stream's filter state `wasm.<name>` (Envoy's `set_property`), which a route can
    /// match; false when Envoy refuses.
    fn set_filter_state(&self, name: &str, value: &[u8]) -> bool;
    /// Makes Envoy choose the request's route again (the foreign function `clear_route_cache`),
    /// after the filter changed what the routes match on; false when Envoy refuses.
    fn clear_route_cache(&self) -> bool;
    /// An Envoy property (or dynamic metadata) by path.
    fn property(&self, path: &[String]) -> Option<Vec<u8>>;
    /// Answers the client locally; the upstream is not called.
    fn send_response(&self, status: u16, headers: &[(String, Vec<u8>)], body: &[u8]);
    /// Starts a callout; its answer arrives through the stream's callout callback with the token
    /// while the stream lives. The callout outlives the stream (it is not cancelled when the
    /// stream ends), but a reply that arrives after the end is dropped.
    fn dispatch(&self, callout: &Callout) -> Result<u32, String>;
    fn resume_request(&self);
    /// This stream's context id, by which the root context can answer it.
    fn stream_id(&self) -> u32;
    /// Wakes this worker's root context (a message on its shared queue).
    fn wake_root(&self, queue: u32) -> Result<(), String>;
    fn resume_response(&self);
    fn count(&self, metric: Metric);
    /// Counts under `idempotency.observe.*`: what enforce mode would have done.
    fn count_observed(&self, metric: Metric);
}
