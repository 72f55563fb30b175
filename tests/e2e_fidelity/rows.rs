//! The request and response shapes: for each row, the exact request bytes the client sends
//! (to `/fid/<row>`, with an idempotency key of its own) and the exact bytes the upstream
//! answers. docs/fidelity.md describes each row.

use std::time::Duration;

use crate::recorder::Script;

/// How a row's request is sent.
pub enum Send {
    /// These bytes in one write on a new HTTP/1.x connection, then `answers` answers read.
    H1 { bytes: Vec<u8>, answers: usize },
    /// The head, then (after waiting up to 1 s for `100 Continue`) the body.
    H1Expect { head: Vec<u8>, body: Vec<u8> },
    /// An h2c request.
    H2 {
        method: &'static str,
        headers: Vec<(&'static str, Vec<u8>)>,
        body: Vec<u8>,
        trailers: Vec<(&'static str, &'static str)>,
    },
}

pub struct Row {
    pub name: &'static str,
    pub send: Send,
    pub script: Script,
    /// Compare when each body part arrives (streams).
    pub timed: bool,
    /// Sent to the listener with `proxy_100_continue: true`.
    pub proxied_100: bool,
}

impl Row {
    pub fn path(&self) -> String {
        format!("/fid/{}", self.name)
    }
}

/// An HTTP/1.1 request to `/fid/<name>` with a content-length body; `extra` fields go after the
/// key, as they are.
fn post(method: &str, name: &str, extra: &[u8], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "{method} /fid/{name} HTTP/1.1\r\nhost: fidelity.test\r\nidempotency-key: fid-{name}\r\n"
    )
    .into_bytes();
    out.extend_from_slice(extra);
    out.extend_from_slice(
        format!(
            "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
}

fn h1(bytes: Vec<u8>) -> Send {
    Send::H1 { bytes, answers: 1 }
}

/// An answer sent in one piece.
fn answer(bytes: &[u8]) -> Script {
    Script {
        head: bytes.to_vec(),
        ..Script::default()
    }
}

const CREATED: &[u8] = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\nlocation: /fid/1\r\ncontent-length: 11\r\n\r\n{\"id\":\"p1\"}";

/// A gzip member (10-byte header, deflate data, CRC and size) of `{"ok":true}`.
const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xab, 0x56, 0xca, 0xcf, 0x56, 0xb2,
    0x2a, 0x29, 0x2a, 0x4d, 0xad, 0x05, 0x00, 0x6e, 0x4a, 0xa1, 0x9d, 0x0b, 0x00, 0x00, 0x00,
];

/// Server-sent events: this many, this far apart.
const EVENTS: usize = 4;
const EVENT_GAP: Duration = Duration::from_millis(200);

pub fn rows() -> Vec<Row> {
    let body = br#"{"amount":100}"#;
    let mut gzip = b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\nvary: accept-encoding\r\ncontent-length: 31\r\n\r\n".to_vec();
    gzip.extend_from_slice(GZIP_BODY);
    let chunked_request = b"POST /fid/chunked HTTP/1.1\r\nhost: fidelity.test\r\nidempotency-key: fid-chunked\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n7\r\n{\"amoun\r\n7\r\nt\":100}\r\n0\r\n\r\n".to_vec();
    let trailers_request = b"POST /fid/trailers-h1 HTTP/1.1\r\nhost: fidelity.test\r\nidempotency-key: fid-trailers-h1\r\nte: trailers\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\ne\r\n{\"amount\":100}\r\n0\r\nx-checksum: 7f3a\r\n\r\n".to_vec();
    let trailers_answer = answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\nb\r\n{\"ok\":true}\r\n0\r\nx-outcome: settled\r\n\r\n");
    let mut pipelined = post("POST", "pipelined", b"x-n: 1\r\n", body);
    pipelined.extend_from_slice(
        &post("POST", "pipelined", b"x-n: 2\r\n", body)
            .replace_key("fid-pipelined", "fid-pipelined-2"),
    );
    let mut sse = Script {
        head: b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
        ..Script::default()
    };
    for i in 0..EVENTS {
        let event = format!("data: event {i}\n\n");
        let pause = if i == 0 { Duration::ZERO } else { EVENT_GAP };
        sse.parts.push((
            pause,
            format!("{:x}\r\n{event}\r\n", event.len()).into_bytes(),
        ));
    }
    sse.parts.push((Duration::ZERO, b"0\r\n\r\n".to_vec()));
    let mut expect_head = post("POST", "expect-100", b"expect: 100-continue\r\n", body);
    let expect_body = expect_head.split_off(expect_head.len() - body.len());
    let mut proxied_head = post(
        "POST",
        "expect-100-proxied",
        b"expect: 100-continue\r\n",
        body,
    );
    let proxied_body = proxied_head.split_off(proxied_head.len() - body.len());

    vec![
        Row {
            name: "post-json",
            send: h1(post("POST", "post-json", b"authorization: Bearer alice\r\n", body)),
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "te-trailers",
            send: h1(post("POST", "te-trailers", b"te: trailers\r\n", body)),
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "outside-client-says-internal",
            send: h1(post("POST", "outside-client-says-internal", b"x-envoy-internal: true\r\n", body)),
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "chunked",
            send: h1(chunked_request),
            script: Script {
                head: b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                parts: vec![
                    (Duration::ZERO, b"5\r\n{\"id\"\r\n".to_vec()),
                    (Duration::from_millis(20), b"6\r\n:\"p1\"}\r\n0\r\n\r\n".to_vec()),
                ],
                close: false,
            },
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "gzip",
            send: h1(post("POST", "gzip", b"accept-encoding: gzip\r\n", body)),
            script: answer(&gzip),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "no-content-204",
            send: h1(post("POST", "no-content-204", b"", body)),
            script: answer(b"HTTP/1.1 204 No Content\r\nx-trace: 1\r\n\r\n"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "not-modified-304",
            send: h1(post("POST", "not-modified-304", b"if-none-match: \"v1\"\r\n", body)),
            script: answer(b"HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "patch",
            send: h1(post("PATCH", "patch", b"", body)),
            script: answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"p1\"}"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "put",
            send: h1(post("PUT", "put", b"", body)),
            script: answer(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"p1\"}"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "http-1.0",
            send: h1(post("POST", "http-1.0", b"", body).replace_key(" HTTP/1.1\r\n", " HTTP/1.0\r\n")),
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "pipelined",
            send: Send::H1 { bytes: pipelined, answers: 2 },
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "h2-client",
            send: Send::H2 {
                method: "POST",
                headers: vec![
                    ("idempotency-key", b"fid-h2-client".to_vec()),
                    ("content-type", b"application/json".to_vec()),
                    ("x-rep", b"a".to_vec()),
                    ("x-rep", b"b".to_vec()),
                ],
                body: body.to_vec(),
                trailers: Vec::new(),
            },
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "repeated-headers",
            send: h1(post("POST", "repeated-headers", b"x-rep: a\r\nx-other: 1\r\nx-rep: b\r\nx-rep: a\r\n", body)),
            script: answer(b"HTTP/1.1 201 Created\r\nx-rep: 2\r\ncontent-type: application/json\r\nlink: </a>; rel=a\r\nx-rep: 1\r\nlink: </b>; rel=b\r\ncontent-length: 11\r\n\r\n{\"id\":\"p1\"}"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "non-utf8-value",
            send: h1(post("POST", "non-utf8-value", b"x-name: caf\xe9\r\n", body)),
            script: answer(b"HTTP/1.1 201 Created\r\nx-name: caf\xe9\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"p1\"}"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "empty-201-content-type",
            send: h1(post("POST", "empty-201-content-type", b"", body)),
            script: answer(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "sse-stream",
            send: h1(post("POST", "sse-stream", b"accept: text/event-stream\r\n", body)),
            script: sse,
            timed: true,
            proxied_100: false,
        },
        Row {
            name: "expect-100",
            send: Send::H1Expect { head: expect_head, body: expect_body },
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "expect-100-proxied",
            send: Send::H1Expect { head: proxied_head, body: proxied_body },
            script: answer(CREATED),
            timed: false,
            proxied_100: true,
        },
        Row {
            name: "trailers-h1",
            send: h1(trailers_request),
            script: trailers_answer.clone(),
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "trailers-h2",
            send: Send::H2 {
                method: "POST",
                headers: vec![
                    ("idempotency-key", b"fid-trailers-h2".to_vec()),
                    ("te", b"trailers".to_vec()),
                    ("content-type", b"application/json".to_vec()),
                ],
                body: body.to_vec(),
                trailers: vec![("x-checksum", "7f3a")],
            },
            script: trailers_answer,
            timed: false,
            proxied_100: false,
        },
        Row {
            name: "local-reply-config",
            send: h1(post("POST", "local-reply-config", b"x-fidelity-shape: on\r\n", body)),
            script: answer(CREATED),
            timed: false,
            proxied_100: false,
        },
    ]
}

/// Byte-string replacement, for variants of a request.
trait ReplaceKey {
    fn replace_key(self, from: &str, to: &str) -> Vec<u8>;
}

impl ReplaceKey for Vec<u8> {
    fn replace_key(self, from: &str, to: &str) -> Vec<u8> {
        let Some(at) = crate::wire::find(&self, from.as_bytes()) else {
            return self;
        };
        let mut out = self[..at].to_vec();
        out.extend_from_slice(to.as_bytes());
        out.extend_from_slice(&self[at + from.len()..]);
        out
    }
}
