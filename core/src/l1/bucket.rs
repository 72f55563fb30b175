//! One L1 slot's value: a bucket of entries (a claim in flight, or a completed record kept
//! encoded), written with postcard. Reading borrows the records from the slot's bytes, so an
//! operation copies only what it changes.

use crate::fingerprint::Fingerprint;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// An entry's encoded size at most, besides its record's bytes and their length.
pub(super) const ENTRY_BYTES: usize = 112;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum State<'a> {
    InFlight {
        fingerprint: Fingerprint,
        lease_until_ms: u64,
        owner: u64,
    },
    /// The encoded [`Record`], kept encoded so that a lookup decodes only the entry it needs.
    /// Read, it borrows from the slot's bytes: the records a change leaves alone are copied once,
    /// into the slot's new value (`cow_bytes`).
    Completed {
        expires_ms: u64,
        #[serde(borrow, with = "cow_bytes")]
        record: Cow<'a, [u8]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Entry<'a> {
    pub(super) key: [u8; 32],
    /// When the entry was written: eviction order.
    pub(super) written_ms: u64,
    #[serde(borrow)]
    pub(super) state: State<'a>,
}

/// A record's bytes on the wire as `serde_bytes` writes a `Vec<u8>` (the slot layout is
/// unchanged), read without a copy from the slot's value.
mod cow_bytes {
    use serde::{Deserializer, Serializer};
    use std::borrow::Cow;

    // serde's `with` hands the field itself by reference.
    #[allow(clippy::ptr_arg)]
    pub(super) fn serialize<S: Serializer>(v: &Cow<'_, [u8]>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(super) fn deserialize<'de: 'a, 'a, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Cow<'a, [u8]>, D::Error> {
        let bytes: &'de [u8] = serde_bytes::deserialize(d)?;
        Ok(Cow::Borrowed(bytes))
    }
}

impl State<'_> {
    /// The state with its record owned, to outlive the slot's bytes it was read from.
    pub(super) fn into_owned(self) -> State<'static> {
        match self {
            State::InFlight {
                fingerprint,
                lease_until_ms,
                owner,
            } => State::InFlight {
                fingerprint,
                lease_until_ms,
                owner,
            },
            State::Completed { expires_ms, record } => State::Completed {
                expires_ms,
                record: Cow::Owned(record.into_owned()),
            },
        }
    }
}

impl Entry<'_> {
    pub(super) fn is_live(&self, now_ms: u64) -> bool {
        match &self.state {
            State::InFlight { lease_until_ms, .. } => now_ms < *lease_until_ms,
            State::Completed { expires_ms, .. } => now_ms < *expires_ms,
        }
    }

    pub(super) fn size(&self) -> usize {
        match &self.state {
            State::InFlight { .. } => 64,
            State::Completed { record, .. } => 64 + record.len(),
        }
    }
}

pub(super) fn decode_bucket(value: Option<&[u8]>) -> Vec<Entry<'_>> {
    // A slot that does not decode (an older layout, a torn value) is treated as empty: L1 is a cache.
    value
        .filter(|v| !v.is_empty())
        .and_then(|v| postcard::from_bytes(v).ok())
        .unwrap_or_default()
}

pub(super) fn encode_bucket(entries: &[Entry]) -> Vec<u8> {
    // An upper bound of the encoding (an entry takes at most ~100 bytes besides its record).
    let capacity = entries
        .iter()
        .map(|e| match &e.state {
            State::InFlight { .. } => ENTRY_BYTES,
            State::Completed { record, .. } => ENTRY_BYTES + 10 + record.len(),
        })
        .sum::<usize>()
        + 10;
    // Written in place into a buffer of that size (postcard's fastest writer), then cut to length;
    // should the bound ever be short, the growing writer does it.
    let mut out = vec![0u8; capacity];
    match postcard::to_slice(entries, &mut out).map(|used| used.len()) {
        Ok(len) => {
            out.truncate(len);
            out
        }
        Err(_) => postcard::to_allocvec(entries).unwrap_or_default(),
    }
}

pub(super) fn is_owner(e: &Entry, owner: u64) -> bool {
    matches!(e.state, State::InFlight { owner: o, .. } if o == owner)
}
