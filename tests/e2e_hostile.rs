//! The hostile input catalog: malformed and hostile requests (keys, bodies, headers, methods and
//! paths), data-driven, through one Envoy with the filter (and the memory key store) in front of
//! payments-demo. Each case is sent twice on fresh connections (a raw HTTP/1.1 client, or h2c
//! with trailers) and checks:
//! - the answer's status is the one in the table, on both sends;
//! - how many times the upstream executed it: a case marked as executing runs once and its
//!   second send is a replay; any other runs zero times;
//!
//! and after the whole catalog: the upstream never ran a request twice (each case's body marker
//! appears at most once in the payments list), Envoy is alive (`/ready` LIVE), and its log holds
//! no `panicked` and no `critical` line. Every case prints a `HOSTILE|...` row (`--nocapture`):
//! `docs/hostile.md` is built from them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod hardening;
mod support;

use std::collections::HashMap;

use hardening::*;
use support::*;

/// Request bodies over this get 413 in this catalog.
const LIMIT: usize = 1024;

/// How the body goes on the wire.
#[derive(Clone)]
enum Body {
    /// With `content-length`.
    Length(Vec<u8>),
    /// `transfer-encoding: chunked`, no `content-length`, in 100-byte chunks.
    Chunked(Vec<u8>),
    /// Both `content-length` and `transfer-encoding: chunked` (a smuggling attempt).
    LengthAndChunked(Vec<u8>),
    /// h2c, the body in two DATA frames, then trailers.
    H2Trailers(Vec<u8>),
}

/// One request of the catalog.
#[derive(Clone)]
struct Req {
    method: String,
    target: String,
    version: &'static str,
    /// Name and value bytes, sent as given (after the defaults).
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether to send `authorization: Bearer hostile-caller`.
    caller: bool,
    body: Body,
}

impl Req {
    /// `POST /payments` with the caller, JSON content type, and this case's body.
    fn post(body: Vec<u8>) -> Req {
        Req {
            method: "POST".into(),
            target: "/payments".into(),
            version: "HTTP/1.1",
            headers: Vec::new(),
            caller: true,
            body: Body::Length(body),
        }
    }

    fn key(self, value: impl AsRef<[u8]>) -> Req {
        self.header("idempotency-key", value)
    }

    fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Req {
        self.headers
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    fn method(mut self, method: &str) -> Req {
        self.method = method.into();
        self
    }

    fn target(mut self, target: impl Into<String>) -> Req {
        self.target = target.into();
        self
    }

    fn body(mut self, body: Body) -> Req {
        self.body = body;
        self
    }

    fn raw(&self) -> Vec<u8> {
        let mut out = format!("{} {} {}\r\n", self.method, self.target, self.version).into_bytes();
        let mut line = |name: &[u8], value: &[u8]| {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        };
        line(b"host", b"127.0.0.1");
        line(b"connection", b"close");
        line(b"content-type", b"application/json");
        if self.caller {
            line(b"authorization", b"Bearer hostile-caller");
        }
        for (name, value) in &self.headers {
            line(name, value);
        }
        let body = match &self.body {
            Body::Length(body) => {
                line(b"content-length", body.len().to_string().as_bytes());
                body.clone()
            }
            Body::Chunked(body) => {
                line(b"transfer-encoding", b"chunked");
                chunked(body)
            }
            Body::LengthAndChunked(body) => {
                line(b"content-length", body.len().to_string().as_bytes());
                line(b"transfer-encoding", b"chunked");
                chunked(body)
            }
            Body::H2Trailers(_) => unreachable!("h2 requests are not raw"),
        };
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        out
    }
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in body.chunks(100) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// One row of the catalog: the request, the status expected on both sends, and whether it
/// executes (once; the second send replays).
struct Case {
    group: &'static str,
    name: String,
    req: Req,
    expect: u16,
    executes: bool,
}

/// What came back.
struct Answer {
    status: u16,
    replayed: bool,
    problem_type: Option<String>,
    from_upstream: bool,
    body: Vec<u8>,
    /// The answer carried a `set-cookie`.
    set_cookie: bool,
}

impl Answer {
    fn who(&self) -> String {
        if let Some(kind) = &self.problem_type {
            let kind = kind.rsplit(':').next().unwrap_or(kind);
            format!("filter `{kind}`")
        } else if self.replayed {
            "filter (replay)".into()
        } else if self.from_upstream {
            "upstream".into()
        } else {
            "Envoy".into()
        }
    }
}

async fn run(envoy: &Envoy, req: &Req) -> Answer {
    if let Body::H2Trailers(body) = &req.body {
        let headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8(n.clone()).unwrap(),
                    String::from_utf8(v.clone()).unwrap(),
                )
            })
            .chain([
                ("content-type".into(), "application/json".into()),
                ("authorization".into(), "Bearer hostile-caller".into()),
            ])
            .collect();
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let resp = h2c_with_trailers(
            envoy.port,
            &req.method,
            &req.target,
            &headers,
            body,
            &[("x-checksum", "0")],
        )
        .await;
        let problem_type = resp
            .header("content-type")
            .filter(|t| t.starts_with("application/problem+json"))
            .map(|_| resp.json()["type"].as_str().unwrap_or_default().to_owned());
        return Answer {
            status: resp.status,
            replayed: resp.replayed(),
            problem_type,
            from_upstream: resp.header("x-envoy-upstream-service-time").is_some(),
            body: resp.body.to_vec(),
            set_cookie: resp.headers.contains_key("set-cookie"),
        };
    }
    let resp = raw_http(envoy.port, &req.raw())
        .await
        .unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.target));
    let problem_type = resp.is_problem().then(|| {
        serde_json::from_slice::<serde_json::Value>(&resp.body).unwrap()["type"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    });
    Answer {
        status: resp.status,
        replayed: resp.replayed(),
        problem_type,
        from_upstream: resp.header("x-envoy-upstream-service-time").is_some(),
        set_cookie: resp.header("set-cookie").is_some(),
        body: resp.body,
    }
}

/// A JSON body carrying `marker`, padded with spaces to exactly `size` bytes (if given).
fn json_body(marker: &str, size: Option<usize>) -> Vec<u8> {
    let mut body = format!(r#"{{"amount":1,"case":"{marker}"}}"#).into_bytes();
    if let Some(size) = size {
        assert!(size >= body.len());
        body.truncate(body.len() - 1);
        body.resize(size - 1, b' ');
        body.push(b'}');
    }
    body
}

/// The catalog. `m(i)` is the body marker of case `i`; keys are unique per case unless shared on purpose.
fn catalog(port: u16, run: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut next = 0;
    let mut add = |group: &'static str,
                   name: &str,
                   build: &dyn Fn(String, String) -> Req,
                   expect: u16,
                   executes: bool| {
        next += 1;
        let marker = format!("case-{next}-{run}");
        let key = format!("k{next}-{run}");
        cases.push(Case {
            group,
            name: name.to_owned(),
            req: build(marker, key),
            expect,
            executes,
        });
    };
    let post = |m: &str| Req::post(json_body(m, None));
    let shared = format!("shared-{run}");

    // --- keys ---
    add("key", "no key (required)", &|m, _| post(&m), 400, false);
    add("key", "empty value", &|m, _| post(&m).key(""), 400, false);
    add(
        "key",
        "empty sf-string `\"\"`",
        &|m, _| post(&m).key("\"\""),
        400,
        false,
    );
    add(
        "key",
        "whitespace only",
        &|m, _| post(&m).key("   "),
        400,
        false,
    );
    add(
        "key",
        "255 characters (the longest valid)",
        &|m, k| post(&m).key(format!("{k}-{}", "x".repeat(255 - k.len() - 1))),
        201,
        true,
    );
    add(
        "key",
        "256 characters",
        &|m, k| post(&m).key(format!("{k}-{}", "x".repeat(256 - k.len() - 1))),
        400,
        false,
    );
    add(
        "key",
        "255 characters quoted (257 on the wire)",
        &|m, k| post(&m).key(format!("\"{k}-{}\"", "q".repeat(255 - k.len() - 1))),
        201,
        true,
    );
    add(
        "key",
        "8 KiB key",
        &|m, k| post(&m).key(format!("{k}{}", "x".repeat(8192))),
        400,
        false,
    );
    add(
        "key",
        "tab inside (`ab<TAB>cd`)",
        &|m, k| post(&m).key(format!("{k}\tcd")),
        400,
        false,
    );
    add(
        "key",
        "control character 0x01",
        &|m, k| post(&m).key(format!("{k}\x01")),
        400,
        false,
    );
    add(
        "key",
        "DEL 0x7f",
        &|m, k| post(&m).key(format!("{k}\x7f")),
        400,
        false,
    );
    add(
        "key",
        "NUL byte",
        &|m, k| post(&m).key([k.as_bytes(), b"\0x"].concat()),
        400,
        false,
    );
    add(
        "key",
        "non-UTF-8 bytes (0xff 0xfe)",
        &|m, k| post(&m).key([k.as_bytes(), &[0xff, 0xfe]].concat()),
        400,
        false,
    );
    add(
        "key",
        "UTF-8, not ASCII (`clé`)",
        &|m, k| post(&m).key(format!("{k}-clé")),
        400,
        false,
    );
    add(
        "key",
        "sf-string `\"k\"`",
        &|m, k| post(&m).key(format!("\"{k}\"")),
        201,
        true,
    );
    add(
        "key",
        "unterminated sf-string `\"k`",
        &|m, k| post(&m).key(format!("\"{k}")),
        400,
        false,
    );
    add(
        "key",
        "stray quote `k\"`",
        &|m, k| post(&m).key(format!("{k}\"")),
        400,
        false,
    );
    add(
        "key",
        "single quotes `'k'` (a bare token)",
        &|m, k| post(&m).key(format!("'{k}'")),
        201,
        true,
    );
    add(
        "key",
        "escaped quote `\"a\\\"b\"`",
        &|m, k| post(&m).key(format!("\"{k}\\\"b\"")),
        201,
        true,
    );
    add(
        "key",
        "escaped backslash `\"a\\\\b\"`",
        &|m, k| post(&m).key(format!("\"{k}\\\\b\"")),
        201,
        true,
    );
    add(
        "key",
        "invalid escape `\"a\\nb\"`",
        &|m, k| post(&m).key(format!("\"{k}\\nb\"")),
        400,
        false,
    );
    add(
        "key",
        "backslash in a bare key",
        &|m, k| post(&m).key(format!("{k}\\b")),
        400,
        false,
    );
    add(
        "key",
        "sf-string with parameter `\"k\";a=1`",
        &|m, k| post(&m).key(format!("\"{k}\";a=1")),
        400,
        false,
    );
    add(
        "key",
        "bare token with parameter `k;a=1`",
        &|m, k| post(&m).key(format!("{k};a=1")),
        400,
        false,
    );
    add(
        "key",
        "sf-list `\"k1\", \"k2\"`",
        &|m, k| post(&m).key(format!("\"{k}\", \"{k}2\"")),
        400,
        false,
    );
    add(
        "key",
        "comma list of the same key `k, k`",
        &|m, k| post(&m).key(format!("{k}, {k}")),
        400,
        false,
    );
    add(
        "key",
        "space inside a bare key",
        &|m, k| post(&m).key(format!("{k} x")),
        400,
        false,
    );
    add(
        "key",
        "surrounding whitespace (trimmed)",
        &|m, k| post(&m).key(format!("   {k}   ")),
        201,
        true,
    );
    add(
        "key",
        "two fields, equal values",
        &|m, k| post(&m).key(&k).key(&k),
        201,
        true,
    );
    add(
        "key",
        "two fields, bare and quoted (same key)",
        &|m, k| post(&m).key(&k).key(format!("\"{k}\"")),
        201,
        true,
    );
    add(
        "key",
        "two fields, different values",
        &|m, k| post(&m).key(&k).key(format!("{k}-2")),
        400,
        false,
    );
    add(
        "key",
        "two fields, one valid one empty",
        &|m, k| post(&m).key(&k).key(""),
        400,
        false,
    );
    add(
        "key",
        "header name in capitals (`IDEMPOTENCY-KEY`)",
        &|m, k| post(&m).header("IDEMPOTENCY-KEY", &k),
        201,
        true,
    );
    add(
        "key",
        "look-alike header `idempotency_key` (underscore)",
        &|m, k| post(&m).header("idempotency_key", &k),
        400,
        false,
    );
    add(
        "key",
        "very long header: 60 KiB value",
        &|m, k| post(&m).key(format!("{k}{}", "y".repeat(60 * 1024))),
        431,
        false,
    );

    // --- bodies ---
    add(
        "body",
        "empty body (`content-length: 0`): upstream says 400, stored",
        &|_, k| Req::post(Vec::new()).key(&k),
        400,
        true,
    );
    add(
        "body",
        "exactly at the limit (1024 bytes)",
        &|m, k| Req::post(json_body(&m, Some(LIMIT))).key(&k),
        201,
        true,
    );
    add(
        "body",
        "one byte over the limit (1025)",
        &|m, k| Req::post(json_body(&m, Some(LIMIT + 1))).key(&k),
        413,
        false,
    );
    add(
        "body",
        "2 MiB with content-length",
        &|m, k| Req::post(json_body(&m, Some(2 << 20))).key(&k),
        413,
        false,
    );
    add(
        "body",
        "chunked, no content-length, under the limit",
        &|m, k| {
            post(&m)
                .key(&k)
                .body(Body::Chunked(json_body(&m, Some(900))))
        },
        201,
        true,
    );
    add(
        "body",
        "chunked, no content-length, over the limit",
        &|m, k| {
            post(&m)
                .key(&k)
                .body(Body::Chunked(json_body(&m, Some(5000))))
        },
        413,
        false,
    );
    add(
        "body",
        "content-length and chunked together (smuggling)",
        &|m, k| {
            post(&m)
                .key(&k)
                .body(Body::LengthAndChunked(json_body(&m, None)))
        },
        400,
        false,
    );
    add(
        "body",
        "HTTP/2 with trailers",
        &|m, k| post(&m).key(&k).body(Body::H2Trailers(json_body(&m, None))),
        201,
        true,
    );
    add(
        "body",
        "HTTP/2 with trailers, over the limit",
        &|m, k| {
            post(&m)
                .key(&k)
                .body(Body::H2Trailers(json_body(&m, Some(3000))))
        },
        413,
        false,
    );
    add(
        "body",
        "invalid JSON (the filter does not care; upstream 400, stored)",
        &|m, k| Req::post(format!("{{not json {m}").into_bytes()).key(&k),
        400,
        true,
    );
    add(
        "body",
        "binary body with NUL bytes (upstream 400, stored)",
        &|m, k| Req::post([m.as_bytes(), &[0, 1, 2, 0xff]].concat()).key(&k),
        400,
        true,
    );

    // --- headers ---
    add(
        "headers",
        "2,000 headers",
        &|m, k| {
            let mut req = post(&m).key(&k);
            for i in 0..2000 {
                req = req.header(format!("x-h{i}"), "v");
            }
            req
        },
        431,
        false,
    );
    add(
        "headers",
        "one 100 KiB header",
        &|m, k| post(&m).key(&k).header("x-big", "z".repeat(100 * 1024)),
        431,
        false,
    );
    add(
        "headers",
        "no caller (no anonymous scope: refused)",
        &|m, k| {
            let mut r = post(&m).key(&k);
            r.caller = false;
            r
        },
        401,
        false,
    );
    add(
        "headers",
        "empty authorization (no caller: refused)",
        &|m, k| {
            let mut r = post(&m).key(&k).header("authorization", "");
            r.caller = false;
            r
        },
        401,
        false,
    );
    add(
        "headers",
        "authorization of spaces only (no caller: refused)",
        &|m, k| {
            let mut r = post(&m).key(&k).header("authorization", "    ");
            r.caller = false;
            r
        },
        401,
        false,
    );
    add(
        "headers",
        "the answer sets a cookie (stored without it)",
        &|m, k| {
            post(&m)
                .key(&k)
                .header("x-demo-set-cookie", "session=hostile")
        },
        201,
        true,
    );
    add(
        "headers",
        "two authorization headers",
        &|m, k| post(&m).key(&k).header("authorization", "Bearer other"),
        201,
        true,
    );
    add(
        "headers",
        "obsolete line folding in the key header",
        &|m, k| post(&m).header("idempotency-key", format!("{k}\r\n  folded")),
        400,
        false,
    );
    add(
        "headers",
        "header name with a space",
        &|m, k| post(&m).key(&k).header("x bad", "v"),
        400,
        false,
    );

    // --- methods and paths ---
    add(
        "path",
        "query `/payments?x=1` (covered: the rule ignores the query)",
        &|m, _| post(&m).target("/payments?x=1").key(&shared),
        201,
        true,
    );
    add(
        "path",
        "same key, query-only difference `?x=2`",
        &|m, _| post(&m).target("/payments?x=2").key(&shared),
        422,
        false,
    );
    add(
        "path",
        "empty query `/payments?`",
        &|m, k| post(&m).target("/payments?").key(&k),
        201,
        true,
    );
    add(
        "path",
        "absolute-form target `http://host/payments`",
        &|m, k| {
            post(&m)
                .target(format!("http://127.0.0.1:{port}/payments"))
                .key(&k)
        },
        201,
        true,
    );
    add(
        "path",
        "`/payments%2F` (not covered; upstream 404)",
        &|m, k| post(&m).target("/payments%2F").key(&k),
        404,
        false,
    );
    add(
        "path",
        "`/%70ayments` (percent-encoded p; normalized: covered)",
        &|m, k| post(&m).target("/%70ayments").key(&k),
        201,
        true,
    );
    add(
        "path",
        "`//payments` (merged: covered)",
        &|m, k| post(&m).target("//payments").key(&k),
        201,
        true,
    );
    add(
        "path",
        "`//payments` without a key (merged: covered, so required)",
        &|m, _| post(&m).target("//payments"),
        400,
        false,
    );
    add(
        "path",
        "`/x/../payments` (normalized: covered)",
        &|m, k| post(&m).target("/x/../payments").key(&k),
        201,
        true,
    );
    add(
        "path",
        "`/payments/../payments` without a key (normalized: covered, so required)",
        &|m, _| post(&m).target("/payments/../payments"),
        400,
        false,
    );
    add(
        "path",
        "`/./payments` (normalized: covered)",
        &|m, k| post(&m).target("/./payments").key(&k),
        201,
        true,
    );
    add(
        "path",
        "`/payments/`",
        &|m, k| post(&m).target("/payments/").key(&k),
        404,
        false,
    );
    add(
        "path",
        "`/PAYMENTS`",
        &|m, k| post(&m).target("/PAYMENTS").key(&k),
        404,
        false,
    );
    add(
        "path",
        "`/payments;x=1`",
        &|m, k| post(&m).target("/payments;x=1").key(&k),
        404,
        false,
    );
    add(
        "path",
        "`/payments#frag`",
        &|m, k| post(&m).target("/payments#frag").key(&k),
        400,
        false,
    );
    add(
        "path",
        "space in the path",
        &|m, k| post(&m).target("/pay ments").key(&k),
        400,
        false,
    );
    add(
        "path",
        "64 KiB path",
        &|m, k| {
            post(&m)
                .target(format!("/payments?q={}", "p".repeat(64 * 1024)))
                .key(&k)
        },
        431,
        false,
    );
    add(
        "method",
        "lowercase `post`",
        &|m, k| post(&m).method("post").key(&k),
        400,
        false,
    );
    add(
        "method",
        "HEAD (not covered)",
        &|_, k| Req::post(Vec::new()).method("HEAD").key(&k),
        200,
        false,
    );
    add(
        "method",
        "OPTIONS (not covered)",
        &|_, k| Req::post(Vec::new()).method("OPTIONS").key(&k),
        405,
        false,
    );
    add(
        "method",
        "PATCH (not in the rule's methods)",
        &|m, k| post(&m).method("PATCH").key(&k),
        405,
        false,
    );
    add(
        "method",
        "GET with a broken key (not covered)",
        &|_, _| Req::post(Vec::new()).method("GET").key("\"broken"),
        200,
        false,
    );
    add(
        "method",
        "unknown method `FOO` (Envoy refuses it)",
        &|m, k| post(&m).method("FOO").key(&k),
        400,
        false,
    );
    add(
        "method",
        "HTTP/1.0",
        &|m, k| {
            let mut r = post(&m).key(&k);
            r.version = "HTTP/1.0";
            r
        },
        426,
        false,
    );
    cases
}

#[tokio::test]
async fn hostile_input_catalog() {
    let upstream = Upstream::start().await;
    let keystore = Keystore::start().await;
    let plugin = Plugin::payments("hostile-secret-0123456789abcdef0123456789abcdef")
        .caller_header("authorization")
        .set("max_body_bytes", LIMIT)
        .keystore(1000, None);
    let mut envoy =
        Envoy::start(&EnvoyOptions::with_filter(upstream.port, plugin).keystore(keystore.port))
            .await;
    let run = &new_key()[..8];
    let cases = catalog(envoy.port, run);
    assert!(cases.len() >= 40, "only {} cases", cases.len());

    let mut failures = Vec::new();
    let mut executed = 0;
    for (i, case) in cases.iter().enumerate() {
        let before_posts = upstream.post_requests().await;
        let before = metrics(&envoy).await;
        let first = run_case(&envoy, &case.req).await;
        let after = metrics(&envoy).await;
        let second = run_case(&envoy, &case.req).await;
        let posts = upstream.post_requests().await - before_posts;
        let mut problems = Vec::new();
        if first.status != case.expect {
            problems.push(format!(
                "first answer {} (expected {})",
                first.status, case.expect
            ));
        }
        if second.status != first.status {
            problems.push(format!(
                "second answer {} after {}",
                second.status, first.status
            ));
        }
        let expected_posts = u64::from(case.executes);
        if posts != expected_posts {
            problems.push(format!(
                "upstream executed {posts}× (expected {expected_posts})"
            ));
        }
        if case.executes && !(second.replayed && second.body == first.body) {
            problems.push("second send was not a replay of the first".into());
        }
        if second.replayed && second.set_cookie {
            problems.push("a replay carried a set-cookie".into());
        }
        if !case.executes && (first.replayed || second.replayed) {
            problems.push("a replay for a case that never executed".into());
        }
        if !problems.is_empty() {
            failures.push(format!(
                "#{} {} / {}: {} — first: {} {:?}",
                i + 1,
                case.group,
                case.name,
                problems.join("; "),
                first.who(),
                String::from_utf8_lossy(&first.body)
            ));
        }
        executed += posts;
        println!(
            "HOSTILE|{}|{}|{}|{}|{}|{}|{}|",
            i + 1,
            case.group,
            case.name.replace('|', "\\|"),
            first.status,
            first.who(),
            if case.executes {
                "1 (retry replayed)"
            } else {
                "0"
            },
            counted(&before, &after).join(", ")
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );

    // Never twice: every case's marker appears in at most one payment.
    let payments = upstream.payments().await;
    let mut per_marker: HashMap<String, usize> = HashMap::new();
    for payment in &payments {
        if let Some(marker) = payment["request"]["case"].as_str() {
            *per_marker.entry(marker.to_owned()).or_default() += 1;
        }
    }
    for (marker, count) in &per_marker {
        assert_eq!(*count, 1, "{marker} was executed {count} times");
    }
    assert_eq!(upstream.post_requests().await, executed);
    assert_envoy_healthy(&mut envoy, "hostile catalog").await;
    println!(
        "HOSTILE-SUMMARY|{} cases, {} sends, {} upstream executions, {} payments",
        cases.len(),
        cases.len() * 2,
        executed,
        payments.len()
    );
}

async fn run_case(envoy: &Envoy, req: &Req) -> Answer {
    run(envoy, req).await
}
