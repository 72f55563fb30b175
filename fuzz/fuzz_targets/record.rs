//! The record codec. Any blob decodes or is refused; what decodes re-encodes to a blob that decodes
//! to the same record. The same bytes also build a record (structured input) that must round-trip
//! byte-exact, since a replay is the stored response.
#![no_main]

use idempotency_filter::record::{Record, StoredResponse};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

fn built(data: &[u8]) -> arbitrary::Result<Record> {
    let mut u = Unstructured::new(data);
    let response = if bool::arbitrary(&mut u)? {
        Some(StoredResponse {
            status: u16::arbitrary(&mut u)?,
            headers: Vec::<(String, Vec<u8>)>::arbitrary(&mut u)?,
            body: Vec::<u8>::arbitrary(&mut u)?,
        })
    } else {
        None
    };
    Ok(Record {
        fingerprint: <[u8; 32]>::arbitrary(&mut u)?,
        created_ms: u64::arbitrary(&mut u)?,
        expires_ms: u64::arbitrary(&mut u)?,
        response,
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        let again = record.encode();
        assert_eq!(Record::decode(&again).as_ref(), Ok(&record));
        assert_eq!(again.first(), data.first(), "the version byte is kept");
    }
    if let Ok(record) = built(data) {
        let blob = record.encode();
        assert_eq!(Record::decode(&blob).as_ref(), Ok(&record));
        for cut in [0, 1, blob.len() / 2, blob.len().saturating_sub(1)] {
            if let Some(prefix) = blob.get(..cut) {
                if cut < blob.len() {
                    assert!(Record::decode(prefix).is_err(), "a truncated blob decoded");
                }
            }
        }
    }
});
