//! The catalog: one row per hostile request, grouped (keys, bodies, headers, methods, paths,
//! versions), with the status expected and whether it executes. A table: long by design.

use super::*;

pub(super) fn json_body(marker: &str, size: Option<usize>) -> Vec<u8> {
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
pub(super) fn catalog(port: u16, run: &str) -> Vec<Case> {
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
