//! The plugin configuration parser: any bytes give a config or an error naming a field, and a
//! config that parses routes any request without a panic.
#![no_main]

use idempotency_filter::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(cfg) => {
            assert!(!cfg.header_name.is_empty());
            assert!(cfg.l1_slots >= 1);
            for path in ["/", "/payments", "/payments?x=1", ""] {
                for method in ["POST", "PATCH", "GET"] {
                    let _ = cfg.route_for(method, path);
                }
            }
        }
        Err(e) => assert!(!e.field.is_empty(), "an error names a field: {e}"),
    }
});
