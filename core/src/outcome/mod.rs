//! How an attempt ended, decided from what Envoy reports about the response: the status, and the
//! response flags Envoy sets when it answered in the upstream's place (route timeout, reset,
//! connection failure, ...). The class decides what happens to the key: see the README's
//! behaviour table. [`callout`] answers the same question for a detached request, from what the
//! root context sees of its own callout.

pub mod callout;

/// Envoy's response flags (the `response.flags` property, a little-endian u64 bitmask).
pub mod flags {
    pub const FAILED_LOCAL_HEALTH_CHECK: u64 = 0x1;
    pub const NO_HEALTHY_UPSTREAM: u64 = 0x2;
    pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 0x4;
    pub const LOCAL_RESET: u64 = 0x8;
    pub const UPSTREAM_REMOTE_RESET: u64 = 0x10;
    pub const UPSTREAM_CONNECTION_FAILURE: u64 = 0x20;
    pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 0x40;
    pub const UPSTREAM_OVERFLOW: u64 = 0x80;
    pub const NO_ROUTE_FOUND: u64 = 0x100;
    pub const FAULT_INJECTED: u64 = 0x400;
    pub const RATE_LIMITED: u64 = 0x800;
    pub const UNAUTHORIZED_EXTERNAL_SERVICE: u64 = 0x1000;
    pub const RATE_LIMIT_SERVICE_ERROR: u64 = 0x2000;
    pub const DOWNSTREAM_CONNECTION_TERMINATION: u64 = 0x4000;
    pub const STREAM_IDLE_TIMEOUT: u64 = 0x10000;
    pub const INVALID_ENVOY_REQUEST_HEADERS: u64 = 0x20000;
    pub const DOWNSTREAM_PROTOCOL_ERROR: u64 = 0x40000;
    pub const UPSTREAM_MAX_STREAM_DURATION_REACHED: u64 = 0x80000;
    pub const NO_FILTER_CONFIG_FOUND: u64 = 0x200000;
    pub const DURATION_TIMEOUT: u64 = 0x400000;
    pub const UPSTREAM_PROTOCOL_ERROR: u64 = 0x800000;
    pub const NO_CLUSTER_FOUND: u64 = 0x1000000;
    pub const OVERLOAD_MANAGER: u64 = 0x2000000;
    pub const DNS_RESOLUTION_FAILED: u64 = 0x4000000;
    pub const DROP_OVERLOAD: u64 = 0x8000000;

    /// The request was sent, or may have been, and the answer did not come back whole.
    pub const MAY_HAVE_EXECUTED: u64 = UPSTREAM_REQUEST_TIMEOUT
        | LOCAL_RESET
        | UPSTREAM_REMOTE_RESET
        | UPSTREAM_CONNECTION_TERMINATION
        | DOWNSTREAM_CONNECTION_TERMINATION
        | STREAM_IDLE_TIMEOUT
        | UPSTREAM_MAX_STREAM_DURATION_REACHED
        | DURATION_TIMEOUT
        | UPSTREAM_PROTOCOL_ERROR;

    /// Envoy (or a filter after this one) answered before any upstream saw the request.
    pub const NEVER_SENT: u64 = FAILED_LOCAL_HEALTH_CHECK
        | NO_HEALTHY_UPSTREAM
        | UPSTREAM_CONNECTION_FAILURE
        | UPSTREAM_OVERFLOW
        | NO_ROUTE_FOUND
        | FAULT_INJECTED
        | RATE_LIMITED
        | UNAUTHORIZED_EXTERNAL_SERVICE
        | RATE_LIMIT_SERVICE_ERROR
        | INVALID_ENVOY_REQUEST_HEADERS
        | DOWNSTREAM_PROTOCOL_ERROR
        | NO_FILTER_CONFIG_FOUND
        | NO_CLUSTER_FOUND
        | OVERLOAD_MANAGER
        | DNS_RESOLUTION_FAILED
        | DROP_OVERLOAD;
}

/// Why the outcome of an attempt is unknown (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownCause {
    /// The client went away (or timed out) after the request was forwarded.
    StreamEnded,
    /// The response started but its body never finished.
    BodyCut,
    /// Envoy answered in the upstream's place after sending the request (route timeout, reset).
    EnvoyAnswered { flags: u64 },
    /// The stream ended while the record was being stored.
    StoreInterrupted,
    /// A proxy on the way (a sidecar) answered with Envoy's reset or timeout text after the
    /// request may have reached the service ([`callout::ending`] reads it).
    ProxyAnswered { status: u16 },
}

/// What a response says about the attempt that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    /// The upstream answered: status rules decide whether it is kept.
    FromUpstream,
    /// Envoy answered, and no upstream saw the request: the key is free again.
    NotExecuted,
    /// Envoy answered after the request may have reached the upstream.
    Unknown(UnknownCause),
}

/// Classifies a response from its response flags (0 when the upstream answered itself).
pub fn classify(response_flags: u64) -> ResponseClass {
    if response_flags & flags::MAY_HAVE_EXECUTED != 0 {
        ResponseClass::Unknown(UnknownCause::EnvoyAnswered {
            flags: response_flags,
        })
    } else if response_flags & flags::NEVER_SENT != 0 {
        ResponseClass::NotExecuted
    } else {
        ResponseClass::FromUpstream
    }
}

/// Decodes the `response.flags` property: a little-endian u64 (absent or malformed: no flags).
pub fn decode_flags(raw: Option<&[u8]>) -> u64 {
    raw.and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_timeout_and_resets_are_unknown() {
        for f in [
            flags::UPSTREAM_REQUEST_TIMEOUT,
            flags::UPSTREAM_REMOTE_RESET,
            flags::UPSTREAM_CONNECTION_TERMINATION,
            flags::LOCAL_RESET,
            flags::UPSTREAM_REMOTE_RESET | flags::UPSTREAM_CONNECTION_FAILURE,
        ] {
            assert!(
                matches!(classify(f), ResponseClass::Unknown(_)),
                "flags {f:#x}"
            );
        }
    }

    #[test]
    fn connection_failures_and_local_refusals_never_executed() {
        for f in [
            flags::UPSTREAM_CONNECTION_FAILURE,
            flags::NO_HEALTHY_UPSTREAM,
            flags::UPSTREAM_OVERFLOW,
            flags::NO_ROUTE_FOUND,
            flags::RATE_LIMITED,
            // Retries exhausted on connection failures: still never sent.
            flags::UPSTREAM_CONNECTION_FAILURE | 0x8000,
        ] {
            assert_eq!(classify(f), ResponseClass::NotExecuted, "flags {f:#x}");
        }
        assert_eq!(classify(0), ResponseClass::FromUpstream);
        // A flag this filter does not know (e.g. a delay was injected) says nothing.
        assert_eq!(classify(0x200), ResponseClass::FromUpstream);
    }

    #[test]
    fn flags_decode_from_little_endian_bytes() {
        assert_eq!(decode_flags(Some(&4u64.to_le_bytes())), 4);
        assert_eq!(decode_flags(Some(b"\x20\0\0\0\0\0\0\0")), 0x20);
        assert_eq!(decode_flags(Some(b"short")), 0);
        assert_eq!(decode_flags(None), 0);
    }
}
