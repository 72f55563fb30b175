//! The gRPC key-field reader over any body: it never panics, a value it returns is the bytes of a
//! length-delimited field inside the one message, and the first byte says the field number it
//! looks for (so every field number and wire type gets its turn).
#![no_main]

use idempotency_filter::grpc::wire::{single_message, string_field};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&field, body)) = data.split_first() else {
        return;
    };
    let field = u32::from(field % 20) + 1;
    match string_field(body, field) {
        Ok(Some(value)) => {
            let message = single_message(body).expect("a value comes from one message");
            let start = value.as_ptr() as usize - message.as_ptr() as usize;
            assert!(start + value.len() <= message.len(), "the value lies inside the message");
            assert!(!value.is_empty());
        }
        Ok(None) => {
            assert!(single_message(body).is_ok(), "no key, yet one message");
        }
        Err(_) => {}
    }
});
