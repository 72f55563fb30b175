//! The thin layer between Envoy and the filter's decisions: [`root`] (one root context per Envoy
//! worker), [`http`] (one context per stream, forwarding each callback to its `Stream`) and
//! [`envoy`] ([`envoy::EnvoyHost`], which implements `Host` with hostcalls). With the test-only
//! cargo feature `fault-injection`, `fault` makes the VM trap on request (never shipped).

mod envoy;
#[cfg(feature = "fault-injection")]
mod fault;
mod http;
mod root;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;
use root::Root;
use std::rc::Rc;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root {
            context_id,
            worker: None,
            metrics: Rc::new(Vec::new()),
            agenda: Default::default(),
            streams: Default::default(),
        })
    });
}}
