//! The serde shape of each request before validation: every field optional (absent and null
//! alike), so that [`crate::Request::from_wire`] can name a missing field instead of the
//! deserializer reporting it for the whole message. Unknown fields are ignored, for forward
//! compatibility.

use serde::de::Deserializer;
use serde::Deserialize;

use crate::bounded::{BoundedVec, Listed};
use crate::limits::{MAX_BATCH_ENTRIES, MAX_RENEW_BATCH};

/// `POST /v1/claim`, unvalidated.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Claim {
    pub key: Option<String>,
    pub fingerprint: Option<String>,
    pub lease_ms: Option<u64>,
    pub wait_ms: Option<u64>,
    pub token: Option<String>,
    pub abandoned: Option<String>,
    pub retention_ms: Option<u64>,
}

/// `POST /v1/lookup`, unvalidated.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Lookup {
    pub key: Option<String>,
    pub fingerprint: Option<String>,
    pub abandoned: Option<String>,
}

/// `POST /v1/complete`, unvalidated; the record is already decoded from its text form.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Complete {
    pub key: Option<String>,
    pub token: Option<String>,
    #[serde(default, with = "crate::record_bytes::option")]
    pub record: Option<Vec<u8>>,
    pub retention_ms: Option<u64>,
}

/// `POST /v1/release`, unvalidated.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Release {
    pub key: Option<String>,
    pub token: Option<String>,
}

/// `POST /v1/renew`, unvalidated.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Renew {
    pub key: Option<String>,
    pub token: Option<String>,
    pub lease_ms: Option<u64>,
}

impl Listed for Renew {
    const PLURAL: &'static str = "renewals";
}

/// `POST /v1/renew-batch`, unvalidated; a list of more than [`MAX_RENEW_BATCH`] renewals is
/// refused while it is read ([`crate::bounded`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RenewBatch {
    pub renewals: Option<BoundedVec<Renew, MAX_RENEW_BATCH>>,
}

/// `POST /v1/batch`, unvalidated: each entry kept as JSON, to be read as the call its `op` names
/// ([`crate::batch`]); a list of more than [`MAX_BATCH_ENTRIES`] entries is refused while it is read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Batch {
    pub entries: Option<BoundedVec<JsonEntry, MAX_BATCH_ENTRIES>>,
}

/// One JSON entry before it is read as its call's body.
#[derive(Debug, Clone)]
pub struct JsonEntry(pub serde_json::Value);

impl Listed for JsonEntry {
    const PLURAL: &'static str = "entries";
}

impl<'de> Deserialize<'de> for JsonEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(Self)
    }
}
