//! Which requests the filter covers, and what it needs to know about a covered one: the rule, the
//! record key (caller and key, keyed-hashed) and the fingerprint of method, path, headers and body.

use super::key_field::{derive_keys, KeyFromBody};
use super::{Admitted, Flow, Phase, Stream};
use crate::config::RouteRule;
use crate::config::{CallerSource, Execution, Mode};
use crate::fingerprint::Fingerprinter;
use crate::grpc;
use crate::host::Host;
use crate::key::{parse_key_header, IdempotencyKey};
use crate::metrics::Metric;
use crate::problem::Problem;
use crate::scope::{Caller, RecordKey};

fn header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

impl Stream {
    /// Decides coverage from the request headers. `None`: not covered (the phase stays
    /// passthrough) or answered locally (the phase is answered).
    pub(super) fn admit(&mut self, host: &dyn Host) -> Option<Admitted> {
        let worker = std::rc::Rc::clone(&self.worker);
        let cfg = &worker.cfg;
        // Two lookups decide coverage; the whole header map is copied into the VM only when covered.
        let pseudo = |name| {
            String::from_utf8_lossy(&host.request_header(name).unwrap_or_default()).into_owned()
        };
        let (method, path) = (pseudo(":method"), pseudo(":path"));
        let Some(mut rule) = cfg.route_for(&method, &path).cloned() else {
            self.count(host, Metric::NotCovered);
            return None;
        };
        // `Expect: 100-continue` reaches a filter only when the connection manager proxies it
        // (`proxy_100_continue: true`). Its client sends the body after the upstream's `100`,
        // which only the router can bring back (a callout sends nothing before it has the body,
        // and a filter cannot send a `1xx`): a detached rule runs such a request inline, with its
        // headers let through as on any inline rule (docs/fidelity.md, README "detached").
        // Read once for a covered request: every header below comes from this copy.
        let headers = host.request_headers();
        let expects_continue = expects_continue(&headers);
        if matches!(rule.execution, Execution::Detached { .. }) && expects_continue {
            log::info!("{method} {path}: `Expect: 100-continue` proxied; executing inline");
            rule.execution = Execution::Inline;
        }
        self.observe = rule.mode == Mode::Observe;
        // The first value, as Envoy's single-header read gives it.
        self.grpc = header(&headers, "content-type").is_some_and(grpc::is_grpc);
        // A rule that names a message field reads the key from the body (`key_field.rs`).
        let key = match rule.key_field {
            Some(_) => None,
            None => Some(self.header_key(host, &rule, &method, &headers)?),
        };
        // The first source that names the caller wins; none: the named anonymous scope, or 401.
        let caller = cfg.callers.iter().find_map(|source| {
            let value = match source {
                CallerSource::Header(name) => header(&headers, name).map(<[u8]>::to_vec),
                CallerSource::Property(path) => host.property(path),
            }
            .filter(|v| !v.is_empty())?;
            Some((source.label(), value))
        });
        let caller = match (&caller, &cfg.anonymous_scope) {
            (Some((source, value)), _) => Caller::Source { source, value },
            (None, Some(scope)) => Caller::Anonymous { scope },
            (None, None) => {
                self.count(host, Metric::Unauthenticated);
                self.answer(
                    host,
                    Problem::Unauthenticated,
                    "this route needs an authenticated caller",
                );
                return None;
            }
        };
        let secret = cfg.secrets.current();
        let scope = rule.path.scope();
        let (record_key, previous, key_from_body) = match (&key, rule.key_field) {
            (None, Some(field)) => (
                // Derived once the body is read; until then nothing uses the record key.
                RecordKey::derive(secret, &scope, &caller, ""),
                Vec::new(),
                Some(KeyFromBody::new(field, scope, &caller)),
            ),
            _ => {
                let text = key.as_ref().map_or("", IdempotencyKey::as_str);
                let (current, previous) = derive_keys(cfg, &scope, &caller, text);
                (current, previous, None)
            }
        };
        let fp_headers: Vec<(&str, Vec<&[u8]>)> = cfg
            .fingerprint_headers
            .iter()
            .map(|name| {
                let values = headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_slice())
                    .collect();
                (name.as_str(), values)
            })
            .collect();
        let detached_headers = match (&rule.execution, rule.mode) {
            // Observe mode forwards through the router, as without the filter.
            (Execution::Inline, _) | (_, Mode::Observe) => None,
            (Execution::Detached { .. }, Mode::Enforce) => Some(headers.clone()),
        };
        Some(Admitted {
            rule,
            key: record_key,
            fingerprinter: Fingerprinter::new(secret, &method, &path, &fp_headers),
            previous,
            detached_headers,
            body_seen: 0,
            key_from_body,
            expects_continue,
        })
    }

    /// The key from the key header. `None`: not covered (no key, optional rule) or answered
    /// (missing on a required rule, invalid).
    fn header_key(
        &mut self,
        host: &dyn Host,
        rule: &RouteRule,
        method: &str,
        headers: &[(String, Vec<u8>)],
    ) -> Option<IdempotencyKey> {
        let cfg = &self.worker.cfg;
        let key_values = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&cfg.header_name))
            .map(|(_, v)| v.as_slice());
        match parse_key_header(key_values) {
            Ok(Some(key)) => Some(key),
            Ok(None) if rule.required => {
                self.count(host, Metric::MissingKey);
                let detail = format!(
                    "{method} {} requires the {} header",
                    rule.path.scope(),
                    cfg.header_name
                );
                self.answer(host, Problem::MissingKey, &detail);
                None
            }
            Ok(None) => {
                self.count(host, Metric::NotCovered);
                None
            }
            Err(e) => {
                self.count(host, Metric::InvalidKey);
                self.answer(host, Problem::InvalidKey, &e.to_string());
                None
            }
        }
    }

    /// The flow of the headers callback when [`Stream::admit`] decided without a claim.
    pub(super) fn flow_after_admission(&self) -> Flow {
        match self.phase {
            Phase::Answered => Flow::Pause,
            _ => Flow::Continue,
        }
    }

    pub(super) fn body_too_large(&mut self, host: &dyn Host) -> Flow {
        self.count(host, Metric::TooLarge);
        let detail = format!(
            "the body is larger than {} bytes",
            self.worker.cfg.max_body_bytes
        );
        self.answer(host, Problem::BodyTooLarge, &detail)
    }

    pub(super) fn finish_body(&mut self, host: &dyn Host) -> Flow {
        let Phase::ReadingBody(admitted) = std::mem::replace(&mut self.phase, Phase::Passthrough)
        else {
            return Flow::Continue;
        };
        let mut admitted = *admitted;
        let limit = self.worker.cfg.max_body_bytes;
        // The body is read into the VM: its bytes come from the budget first. An inline request
        // gives them back once fingerprinted; a detached one keeps them until it is dispatched.
        let headers = admitted
            .detached_headers
            .as_deref()
            .map_or(0, crate::settlement::header_bytes);
        let bytes = admitted.body_seen.min(limit).saturating_add(headers);
        // Envoy copies the body into memory the VM must grow for: check that it can, fallibly,
        // since a failed allocation there would abort the VM.
        let room = crate::budget::try_buffer(admitted.body_seen.min(limit));
        let held = match (self.worker.budget.take(bytes), room) {
            (Ok(held), Ok(_)) => held,
            _ => return self.over_budget(host, "the request body", bytes),
        };
        let body = match host.request_body(limit.saturating_add(1)) {
            Ok(body) => body,
            Err(e) => {
                // Fingerprinting an unread body as empty would let another payload replay this one.
                self.count(host, Metric::StoreError);
                log::error!("request body could not be read ({e}); refusing the request");
                return self.answer(
                    host,
                    Problem::BodyUnreadable,
                    "the request body could not be read",
                );
            }
        };
        if body.len() > limit {
            return self.body_too_large(host);
        }
        // A stream of messages is not a call the filter can replay: it goes on untouched, counted.
        // A rule that reads its key from the message declares its method unary, so there several
        // messages are an invalid request instead.
        let several =
            grpc::wire::single_message(&body) == Err(grpc::wire::WireError::SeveralMessages);
        if self.grpc && several && admitted.key_from_body.is_none() {
            self.count(host, Metric::GrpcStreaming);
            return Flow::Continue;
        }
        if let Some(pending) = admitted.key_from_body.take() {
            if let Err(flow) = self.key_from_body(host, &mut admitted, &pending, &body) {
                return flow;
            }
        }
        admitted.fingerprinter.update_body(&body);
        if let Some(headers) = admitted.detached_headers.take() {
            self.detached_request = Some((headers, body));
            self.held = Some(held);
        }
        self.look_up_previous(host, admitted)
    }
}

/// Whether the request asks for `100 Continue` before sending its body (its first `expect`
/// field, as Envoy's single-header read gives it).
fn expects_continue(headers: &[(String, Vec<u8>)]) -> bool {
    headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("expect"))
        .is_some_and(|(_, value)| value.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
}
