//! Test-only fault injection (cargo feature `fault-injection`, off by default, never in a shipped
//! build): a request carrying [`TRAP_HEADER`] makes the VM trap in `proxy_on_request_headers`, so
//! that an end-to-end test (tests/e2e_vm_reload.rs) can fail the VM at will and show that Envoy's
//! `FAIL_RELOAD` policy replaces it (README "Memory, and a VM that fails").
//!
//! Why a trap, when the filter's lints deny panics: a panic in the filter is a bug (bad input gets
//! an answer, never a panic), and the lints keep it so. Here the VM failure is the point, and
//! `unreachable` is the Wasm instruction itself: it fails the VM the way a real fault does (an
//! infallible allocation that does not fit, a stack overflow), with no panic message or hook on the
//! way. Nothing of this module exists without the feature.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MapType;

/// The request header that makes the VM trap.
pub(super) const TRAP_HEADER: &str = "x-idempotency-fault-trap";

/// Traps the VM if the current request carries [`TRAP_HEADER`].
pub(super) fn trap_if_asked() {
    let asked = hostcalls::get_map_value(MapType::HttpRequestHeaders, TRAP_HEADER)
        .ok()
        .flatten()
        .is_some();
    if asked {
        std::arch::wasm32::unreachable();
    }
}
