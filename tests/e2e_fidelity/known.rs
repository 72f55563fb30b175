//! THE table of known differences: every (row, path) pair that is not exact today, with the
//! difference tokens it shows (`compare`) and why. A pair not listed must be exact; a pair listed
//! must differ by exactly these tokens, so a fix fails the suite until its entry goes (and
//! docs/fidelity.md says "fixed").

use std::collections::BTreeSet;

/// One known difference.
pub struct Known {
    pub row: &'static str,
    /// `inline`, `detached`, `routed`, `detached-routed`, or one of them with `-replay`.
    pub path: &'static str,
    pub tokens: &'static [&'static str],
    pub why: &'static str,
}

/// The tokens a row shows on a path: those of its own entry plus those of the path's `*` entry
/// (a difference every row shows on that path).
pub fn expected(row: &str, path: &str) -> BTreeSet<String> {
    KNOWN
        .iter()
        .filter(|k| (k.row == row || k.row == "*") && k.path == path)
        .flat_map(|k| k.tokens.iter().map(|t| (*t).to_owned()))
        .collect()
}

/// Why the row differs on that path (its entries' reasons), for failure messages.
pub fn reasons(row: &str, path: &str) -> Vec<&'static str> {
    KNOWN
        .iter()
        .filter(|k| (k.row == row || k.row == "*") && k.path == path)
        .map(|k| k.why)
        .collect()
}

/// Whether the row has an entry of its own on that path.
pub fn listed(row: &str, path: &str) -> bool {
    KNOWN.iter().any(|k| k.row == row && k.path == path)
}

pub const KNOWN: &[Known] = &[
    Known {
        row: "chunked",
        path: "inline-replay",
        tokens: &["+content-length", "-transfer-encoding", "framing"],
        why: "a stored answer is replayed (and a detached answer sent) as a local reply with a whole body: `content-length` instead of the upstream's chunked framing",
    },
    Known {
        row: "chunked",
        path: "detached",
        tokens: &["+content-length", "-transfer-encoding", "framing", "up:+content-length", "up:-transfer-encoding"],
        why: "a stored answer is replayed (and a detached answer sent) as a local reply with a whole body: `content-length` instead of the upstream's chunked framing; a callout carries its body with `content-length`, never chunked: the upstream gets `content-length` where the router would forward `transfer-encoding: chunked`",
    },
    Known {
        row: "h2-client",
        path: "detached",
        tokens: &["up:+content-length", "up:-transfer-encoding"],
        why: "a callout carries its body with `content-length`, never chunked: the upstream gets `content-length` where the router would forward `transfer-encoding: chunked` (an h2 request without `content-length` is forwarded chunked to an HTTP/1.1 upstream)",
    },
    Known {
        row: "sse-stream",
        path: "inline-replay",
        tokens: &["+content-length", "-transfer-encoding", "framing"],
        why: "a stored answer is replayed (and a detached answer sent) as a local reply with a whole body: `content-length` instead of the upstream's chunked framing",
    },
    Known {
        row: "sse-stream",
        path: "detached",
        tokens: &["+content-length", "-transfer-encoding", "framing", "timing"],
        why: "a callout's answer arrives whole: headers and every event at the end of the stream, as a local reply (detached execution cannot stream; a route that carries streams chooses inline)",
    },
    Known {
        row: "trailers-h1",
        path: "inline-replay",
        tokens: &["+content-length", "-transfer-encoding", "framing", "trailers"],
        why: "a stored answer is replayed (and a detached answer sent) as a local reply with a whole body: `content-length` instead of the upstream's chunked framing, so its stored trailers cannot follow over HTTP/1",
    },
    Known {
        row: "trailers-h2",
        path: "inline-replay",
        tokens: &["+content-length"],
        why: "a local reply carries `content-length` (its stored trailers are sent after its body: HTTP/2 lets a local reply carry them)",
    },
    Known {
        row: "local-reply-config",
        path: "inline-replay",
        tokens: &["body", "~content-length"],
        why: "a replay is a local reply, and the connection manager's `local_reply_config` rewrites local replies: the stored body comes back wrapped in its format",
    },
    Known {
        row: "local-reply-config",
        path: "detached",
        tokens: &["body", "~content-length"],
        why: "the detached answer is a local reply, rewritten by `local_reply_config`",
    },
    Known {
        row: "expect-100-proxied",
        path: "inline-replay",
        tokens: &["up:count"],
        why: "with `Expect: 100-continue` past the connection manager, an inline rule lets the request headers go upstream before the decision (the client waits for the upstream's `100`), so a duplicate's head reaches the upstream, which gets a reset instead of the body when the filter replays",
    },
    Known {
        row: "trailers-h1",
        path: "detached-replay",
        tokens: &["+content-length", "-transfer-encoding", "framing", "trailers"],
        why: "a request with trailers runs inline on a detached rule (Envoy's async client sends no request trailers), so its replay is an inline replay: a local reply framed by `content-length`, without the stored trailers over HTTP/1",
    },
    Known {
        row: "trailers-h2",
        path: "detached-replay",
        tokens: &["+content-length"],
        why: "a request with trailers runs inline on a detached rule (Envoy's async client sends no request trailers), so its replay is an inline replay: a local reply carries `content-length`",
    },
    Known {
        row: "expect-100-proxied",
        path: "detached-replay",
        tokens: &["up:count"],
        why: "a proxied `Expect: 100-continue` runs inline on a detached rule (only the router can bring back the upstream's `100`), so a duplicate's head reaches the upstream, which gets a reset instead of the body when the filter replays, as on an inline rule",
    },
    // Routed replays (`replay: "routed"`): the stored answer comes back as an upstream's, through
    // the replay listener (README, "Routed replays").
    Known {
        row: "expect-100-proxied",
        path: "routed-replay",
        tokens: &["up:count"],
        why: "the request headers went upstream before the decision (the client waits for the upstream's `100`), so the request can no longer be routed: the replay is a local reply, as inline (with the stored `x-envoy-upstream-service-time`)",
    },
    // Detached rules with routed replays: the first answer too comes through the replay listener
    // (`crate::background::routed` in the core).
    Known {
        row: "chunked",
        path: "detached-routed",
        tokens: &["up:+content-length", "up:-transfer-encoding"],
        why: "a callout carries its body with `content-length`, never chunked: the upstream gets `content-length` where the router would forward `transfer-encoding: chunked` (the client's answer is exact: chunked, as the record has no length)",
    },
    Known {
        row: "h2-client",
        path: "detached-routed",
        tokens: &["up:+content-length", "up:-transfer-encoding"],
        why: "a callout carries its body with `content-length`, never chunked (an h2 request without `content-length` is forwarded chunked by the router)",
    },
    Known {
        row: "sse-stream",
        path: "detached-routed",
        tokens: &["timing"],
        why: "a callout's answer arrives whole, so every event reaches the client at the end of the stream (framed chunked, as the upstream's: only the timing differs; a route that carries streams chooses inline)",
    },
    Known {
        row: "expect-100-proxied",
        path: "detached-routed-replay",
        tokens: &["up:count"],
        why: "a proxied `Expect: 100-continue` runs inline on a detached rule and its headers went upstream before the decision, so the replay cannot be routed: a local reply, and the upstream sees the duplicate's head, then a reset",
    },
];
