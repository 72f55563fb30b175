//! A catalog request and how it is sent: raw HTTP/1.1 bytes (bodies with a length, chunked, or
//! both), or h2c with trailers; and what came back, told apart by who answered.

use super::*;

/// How the body goes on the wire.
#[derive(Clone)]
pub(super) enum Body {
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
pub(super) struct Req {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) version: &'static str,
    /// Name and value bytes, sent as given (after the defaults).
    pub(super) headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether to send `authorization: Bearer hostile-caller`.
    pub(super) caller: bool,
    pub(super) body: Body,
}

impl Req {
    /// `POST /payments` with the caller, JSON content type, and this case's body.
    pub(super) fn post(body: Vec<u8>) -> Req {
        Req {
            method: "POST".into(),
            target: "/payments".into(),
            version: "HTTP/1.1",
            headers: Vec::new(),
            caller: true,
            body: Body::Length(body),
        }
    }

    pub(super) fn key(self, value: impl AsRef<[u8]>) -> Req {
        self.header("idempotency-key", value)
    }

    pub(super) fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Req {
        self.headers
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    pub(super) fn method(mut self, method: &str) -> Req {
        self.method = method.into();
        self
    }

    pub(super) fn target(mut self, target: impl Into<String>) -> Req {
        self.target = target.into();
        self
    }

    pub(super) fn body(mut self, body: Body) -> Req {
        self.body = body;
        self
    }

    pub(super) fn raw(&self) -> Vec<u8> {
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

pub(super) fn chunked(body: &[u8]) -> Vec<u8> {
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
pub(super) struct Case {
    pub(super) group: &'static str,
    pub(super) name: String,
    pub(super) req: Req,
    pub(super) expect: u16,
    pub(super) executes: bool,
}

/// What came back.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) replayed: bool,
    pub(super) problem_type: Option<String>,
    pub(super) from_upstream: bool,
    pub(super) body: Vec<u8>,
    /// The answer carried a `set-cookie`.
    pub(super) set_cookie: bool,
}

impl Answer {
    pub(super) fn who(&self) -> String {
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

pub(super) async fn run(envoy: &Envoy, req: &Req) -> Answer {
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
