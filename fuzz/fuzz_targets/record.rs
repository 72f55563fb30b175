//! The record codec. Any blob decodes or is refused; what decodes re-encodes to a blob that decodes
//! to the same record. The same bytes also build a record (structured input) that must round-trip
//! byte-exact, since a replay is the stored response, and whose sealed form opens only for its own
//! record key under its own secret: no change to a sealed blob opens.
#![no_main]

use idempotency_filter::config::Secrets;
use idempotency_filter::record::{Outcome, Record, StoredResponse};
use idempotency_filter::scope::RecordKey;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-fuzz-secret-fuzz-sec";

fn built(data: &[u8]) -> arbitrary::Result<Record> {
    let mut u = Unstructured::new(data);
    let outcome = match u8::arbitrary(&mut u)? % 3 {
        0 => Outcome::Replayable(StoredResponse {
            status: u16::arbitrary(&mut u)?,
            headers: Vec::<(String, Vec<u8>)>::arbitrary(&mut u)?,
            body: Vec::<u8>::arbitrary(&mut u)?,
            trailers: Vec::<(String, Vec<u8>)>::arbitrary(&mut u)?,
            trailers_only: bool::arbitrary(&mut u)?,
        }),
        1 => Outcome::NotReplayable,
        _ => Outcome::Unknown {
            hold_until_ms: u64::arbitrary(&mut u)?,
        },
    };
    Ok(Record {
        fingerprint: <[u8; 32]>::arbitrary(&mut u)?,
        created_ms: u64::arbitrary(&mut u)?,
        expires_ms: u64::arbitrary(&mut u)?,
        outcome,
    })
}

fuzz_target!(|data: &[u8]| {
    let key = RecordKey([9; 32]);
    let secrets = Secrets::from_bytes(vec![SECRET.to_vec()]);
    if let Ok(record) = Record::decode(data) {
        let again = record.encode();
        assert_eq!(Record::decode(&again).as_ref(), Ok(&record));
    }
    // Bytes nobody sealed never open (the chance of hitting the MAC is 2^-256).
    assert!(Record::open(data, &key, &secrets).is_err(), "unsealed bytes opened");
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
        let sealed = record.seal(&key, SECRET);
        assert_eq!(Record::open(&sealed, &key, &secrets).as_ref(), Ok(&record));
        assert!(Record::open(&sealed, &RecordKey([8; 32]), &secrets).is_err());
        if let Some(&flip) = data.first() {
            let mut forged = sealed.clone();
            let i = usize::from(flip) % forged.len();
            forged[i] ^= 0x5a;
            assert!(Record::open(&forged, &key, &secrets).is_err(), "a changed blob opened");
        }
    }
});
