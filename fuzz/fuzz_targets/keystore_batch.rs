//! The batch (`/v1/batch`) in both body formats: the key store's reader (`Format::read_entries`,
//! which keeps each entry's own result), the strict reader of a caller's batch, and the reader of
//! the key store's batch answer (the filter's side). Whatever arrives is a batch, a batch whose
//! malformed entries are each their own error naming a field, or an envelope error naming a
//! field; never a panic. A batch holds 1 to `MAX_BATCH_ENTRIES` entries; every accepted entry and
//! answer writes back to itself; an answer's status is the one its body goes with.
#![no_main]

use idempotency_protocol::{
    body, json, BatchAnswer, BatchEntry, BatchRequest, BatchResponse, Compact, Format,
    ProtocolError, MAX_BATCH_ENTRIES,
};
use libfuzzer_sys::fuzz_target;

fn named(e: &ProtocolError) {
    assert!(!e.field.is_empty() && !e.problem.is_empty(), "{e:?}");
}

/// What the key store reads from `data` in `format`, checked.
fn entries(format: Format, data: &[u8]) {
    match format.read_entries(data) {
        Ok(read) => {
            assert!((1..=MAX_BATCH_ENTRIES).contains(&read.len()));
            let mut valid = Vec::new();
            for entry in &read {
                match entry {
                    Ok(e) => valid.push(e.clone()),
                    Err(e) => named(e),
                }
            }
            // The strict reader accepts exactly the batches whose entries are all valid.
            let strict = format.decode_request::<BatchRequest>(data);
            if valid.len() == read.len() {
                let batch = BatchRequest { entries: valid };
                assert_eq!(strict.as_ref(), Ok(&batch));
                // Written back, in either format, it reads as itself.
                assert_eq!(BatchRequest::from_compact(&batch.to_compact()).as_ref(), Ok(&batch));
                assert_eq!(json::decode_request::<BatchRequest>(&json::encode(&batch)), Ok(batch));
            } else {
                let e = strict.unwrap_err();
                assert!(e.field.starts_with("entries["), "{e}");
            }
        }
        Err(e) => {
            named(&e);
            assert!(format.decode_request::<BatchRequest>(data).is_err());
        }
    }
}

fn answers(result: Result<BatchResponse, ProtocolError>) {
    match result {
        Ok(r) => {
            assert!(r.answers.len() <= MAX_BATCH_ENTRIES);
            for a in &r.answers {
                let s = a.status();
                match a {
                    BatchAnswer::Error { .. } => assert!((400..=599).contains(&s) && s != 409),
                    _ => assert!(s == 200 || s == 409),
                }
            }
            assert_eq!(BatchResponse::from_compact(&r.to_compact()).as_ref(), Ok(&r));
            assert_eq!(json::decode::<BatchResponse>(&json::encode(&r)), Ok(r));
        }
        Err(e) => named(&e),
    }
}

fuzz_target!(|data: &[u8]| {
    entries(Format::Json, data);
    entries(Format::Compact, data);
    if let Ok(batch) = body::decode_request::<BatchRequest>(data) {
        assert!(batch.entries.iter().all(|e| matches!(
            e,
            BatchEntry::Claim(_) | BatchEntry::Complete(_) | BatchEntry::Release(_) | BatchEntry::Lookup(_)
        )));
    }
    answers(BatchResponse::from_compact(data));
    answers(json::decode::<BatchResponse>(data));
});
