//! The filter's parser of key-store replies. The first byte picks the HTTP status (or a reset);
//! the rest is the body. Whatever arrives is a reply or an error, never a panic; a completed
//! reply carries a record that round-trips through the codec.
#![no_main]

use idempotency_filter::keystore_client::{parse_ack, parse_claim, ClaimReply};
use idempotency_filter::record::Record;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = match selector % 8 {
        0 => None,
        1 | 2 | 3 => Some(200),
        4 => Some(409),
        5 => Some(503),
        6 => Some(504),
        _ => Some(u16::from(selector)),
    };
    match parse_claim(status, body) {
        Ok(ClaimReply::Claimed { token }) => assert!(!token.is_empty()),
        Ok(ClaimReply::Completed(record)) => {
            assert_eq!(Record::decode(&record.encode()), Ok(record));
        }
        Ok(_) | Err(_) => {}
    }
    if parse_claim(status, body).is_ok() {
        assert_eq!(status, Some(200), "only a 200 is a claim reply");
    }
    if parse_ack(status, body).is_ok() {
        assert!(matches!(status, Some(200 | 409)), "{status:?}");
    }
});
