//! The `Idempotency-Key` parser over one or more header values (split on `\n`, which a header
//! value can never hold). An accepted key is 1 to 255 printable ASCII characters, and quoting it
//! as an sf-string gives back the same key.
#![no_main]

use idempotency_filter::key::{parse_key, parse_key_header, MAX_KEY_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let values: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let Ok(Some(key)) = parse_key_header(values.iter().copied()) else {
        return;
    };
    let text = key.as_str();
    assert!(!text.is_empty() && text.len() <= MAX_KEY_LEN, "{text:?}");
    assert!(text.bytes().all(|b| (0x20..=0x7e).contains(&b)), "{text:?}");
    for v in &values {
        assert_eq!(parse_key(v).as_ref(), Ok(&key), "every field holds the key");
    }
    let mut quoted = String::from("\"");
    for c in text.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    assert_eq!(parse_key(quoted.as_bytes()), Ok(key), "{quoted}");
});
