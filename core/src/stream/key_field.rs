//! The key of a rule with `key_field`: a top-level string field of the gRPC request message
//! (AIP-155's `request_id`), read once the body is in ([`crate::grpc::wire`]). Until then the
//! request's record keys are not known; a body that does not give one is refused as an invalid
//! (or, when the field is absent on a required rule, missing) key.

use super::{Admitted, Flow, Stream};
use crate::config::Config;
use crate::grpc::wire;
use crate::host::Host;
use crate::key::parse_key;
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::scope::{Caller, RecordKey};

/// What deriving the record keys needs once the key is read: the field, the rule's scope and the
/// caller (owned: the request's headers are gone by then).
#[derive(Debug)]
pub(super) struct KeyFromBody {
    field: u32,
    scope: String,
    caller: OwnedCaller,
}

#[derive(Debug)]
enum OwnedCaller {
    Source { source: String, value: Vec<u8> },
    Anonymous { scope: String },
}

impl KeyFromBody {
    pub(super) fn new(field: u32, scope: String, caller: &Caller) -> KeyFromBody {
        let caller = match caller {
            Caller::Source { source, value } => OwnedCaller::Source {
                source: (*source).to_string(),
                value: value.to_vec(),
            },
            Caller::Anonymous { scope } => OwnedCaller::Anonymous {
                scope: (*scope).to_string(),
            },
        };
        KeyFromBody {
            field,
            scope,
            caller,
        }
    }
}

/// The record key under the current secret and under each previous one (rotation).
pub(super) fn derive_keys(
    cfg: &Config,
    scope: &str,
    caller: &Caller,
    key: &str,
) -> (RecordKey, Vec<RecordKey>) {
    let current = RecordKey::derive(cfg.secrets.current(), scope, caller, key);
    let previous = cfg
        .secrets
        .previous()
        .map(|s| RecordKey::derive(s, scope, caller, key))
        .collect();
    (current, previous)
}

impl Stream {
    /// Reads the key from `body` and sets `admitted`'s record keys; `Err`: the request was
    /// refused (its flow), counted as a missing or invalid key.
    pub(super) fn key_from_body(
        &mut self,
        host: &dyn Host,
        admitted: &mut Admitted,
        pending: &KeyFromBody,
        body: &[u8],
    ) -> Result<(), Flow> {
        let field = pending.field;
        let text = match wire::string_field(body, field) {
            Ok(Some(text)) => text,
            Ok(None) => {
                self.count(host, Metric::MissingKey);
                let detail = format!("the request message has no key in field {field}");
                return Err(self.answer(host, Problem::MissingKey, &detail));
            }
            Err(e) => {
                self.count(host, Metric::InvalidKey);
                let detail = format!("the key is read from field {field}: {e}");
                return Err(self.answer(host, Problem::InvalidKey, &detail));
            }
        };
        // The same rules as a key header's bare value: 1 to 255 printable ASCII characters.
        let key = match parse_key(text.as_bytes()) {
            Ok(key) => key,
            Err(e) => {
                self.count(host, Metric::InvalidKey);
                let detail = format!("the key in field {field}: {e}");
                return Err(self.answer(host, Problem::InvalidKey, &detail));
            }
        };
        let caller = match &pending.caller {
            OwnedCaller::Source { source, value } => Caller::Source { source, value },
            OwnedCaller::Anonymous { scope } => Caller::Anonymous { scope },
        };
        let (current, previous) =
            derive_keys(&self.worker.cfg, &pending.scope, &caller, key.as_str());
        admitted.key = current;
        admitted.previous = previous;
        Ok(())
    }
}
