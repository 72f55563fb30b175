//! The filter's plugin configuration (JSON), built from the demo's route and a secret so that
//! each test states only the fields it is about.

use serde_json::{json, Map, Value};

/// A plugin configuration under construction; [`Plugin::json`] gives the text Envoy passes on.
#[derive(Clone, Debug)]
pub struct Plugin {
    fields: Map<String, Value>,
}

impl Plugin {
    /// The demo's route (`POST /payments`, the key required) signed with `secret`.
    pub fn payments(secret: &str) -> Plugin {
        Plugin::signed(secret).set(
            "routes",
            json!([{"exact": "/payments", "methods": ["POST"], "required": true}]),
        )
    }

    /// Only the secret: the test sets its own `routes`.
    pub fn signed(secret: &str) -> Plugin {
        Plugin { fields: Map::new() }.set("hmac_secret", secret)
    }

    /// The caller is the value of this request header (e.g. `authorization`).
    pub fn caller_header(self, header: &str) -> Plugin {
        self.set("caller", json!({"header": header}))
    }

    /// Claims go to the `keystore` cluster with this callout timeout and, if given, bearer token.
    pub fn keystore(self, timeout_ms: u64, token: Option<&str>) -> Plugin {
        let mut keystore = json!({"cluster": "keystore", "timeout_ms": timeout_ms});
        if let Some(token) = token {
            keystore["token"] = json!(token);
        }
        self.set("keystore", keystore)
    }

    /// Sets one top-level field (a `null` value stays in the configuration as `null`).
    pub fn set(mut self, field: &str, value: impl Into<Value>) -> Plugin {
        self.fields.insert(field.to_owned(), value.into());
        self
    }

    /// Sets every field of `extra` (a JSON object) over these.
    pub fn merge(mut self, extra: &Value) -> Plugin {
        if let Some(extra) = extra.as_object() {
            for (field, value) in extra {
                self.fields.insert(field.clone(), value.clone());
            }
        }
        self
    }

    /// The configuration as JSON text.
    pub fn json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

impl From<Plugin> for String {
    fn from(plugin: Plugin) -> String {
        plugin.json()
    }
}

/// `base` with the fields of `extra` set over it (both JSON objects), e.g. one route's rule.
pub fn merged(mut base: Value, extra: &Value) -> Value {
    if let (Some(base), Some(extra)) = (base.as_object_mut(), extra.as_object()) {
        for (field, value) in extra {
            base.insert(field.clone(), value.clone());
        }
    }
    base
}
