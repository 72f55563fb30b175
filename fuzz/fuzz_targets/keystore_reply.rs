//! The filter's parser of key-store replies. The first byte picks the HTTP status (or a reset);
//! the rest is the body. Whatever arrives is a reply or an error, never a panic; a completed
//! reply carries a record that opened under the configured secret and round-trips through the
//! codec.
#![no_main]

use idempotency_filter::config::{KeystoreConfig, Secrets};
use idempotency_filter::found::Found;
use idempotency_filter::keystore_client::{parse_ack, parse_claim};
use idempotency_filter::record::Record;
use idempotency_filter::scope::RecordKey;
use libfuzzer_sys::fuzz_target;

fn cfg() -> KeystoreConfig {
    KeystoreConfig {
        cluster: "ks".into(),
        authority: "ks".into(),
        timeout_ms: 100,
        token: None,
        path_prefix: "/v1".into(),
        max_record_bytes: 3 << 20,
        body_format: idempotency_protocol::Format::Compact,
        secrets: Secrets::from_bytes(vec![b"fuzz-secret-fuzz-secret-fuzz-sec".to_vec()]),
        batch_max_entries: 32,
        batches_in_flight: 2,
    }
}

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
    let (cfg, key) = (cfg(), RecordKey([5; 32]));
    match parse_claim(&cfg, &key, status, body) {
        Ok(Found::Claimed { token }) => assert!(token.is_some_and(|t| !t.is_empty())),
        Ok(Found::Completed(record)) => {
            assert_eq!(Record::decode(&record.encode()), Ok(record));
        }
        Ok(_) | Err(_) => {}
    }
    if parse_claim(&cfg, &key, status, body).is_ok() {
        assert_eq!(status, Some(200), "only a 200 is a claim reply");
    }
    if parse_ack(status, body).is_ok() {
        assert!(matches!(status, Some(200 | 409)), "{status:?}");
    }
});
