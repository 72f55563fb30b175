//! The serde shape of each request before validation: every field optional (absent and null
//! alike), so that [`crate::Request::from_wire`] can name a missing field instead of the
//! deserializer reporting it for the whole message. Unknown fields are ignored, for forward
//! compatibility.

use serde::Deserialize;

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

/// `POST /v1/renew-batch`, unvalidated.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RenewBatch {
    pub renewals: Option<Vec<Renew>>,
}
