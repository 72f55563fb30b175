//! Batch amplification: renew-batch and batch bodies built to cost the server far more than the
//! client; and a batch whose entries are hostile one by one, which costs only those entries.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{alone, exchange, hex64, start, TOKEN};

const JSON: &str = "application/json";
const POSTCARD: &str = "application/vnd.idempotency.v1+postcard";
/// A compact body: its marker, then a varint count of 1,000,000.
const A_MILLION: [u8; 4] = [0x01, 0xc0, 0x84, 0x3d];

/// A batch endpoint: the list its JSON body carries, and its refusal of a list past 256.
struct Endpoint {
    path: &'static str,
    list: &'static str,
    too_many: &'static str,
}

const RENEW_BATCH: Endpoint = Endpoint {
    path: "/v1/renew-batch",
    list: "renewals",
    too_many: "renewals: must hold 1 to 256 renewals",
};

const BATCH: Endpoint = Endpoint {
    path: "/v1/batch",
    list: "entries",
    too_many: "entries: must hold 1 to 256 entries",
};

impl Endpoint {
    /// A JSON body whose list holds `entries` (each a JSON value).
    fn body<T: AsRef<str>>(&self, entries: &[T]) -> Vec<u8> {
        let entries: Vec<&str> = entries.iter().map(AsRef::as_ref).collect();
        format!("{{\"{}\":[{}]}}", self.list, entries.join(",")).into_bytes()
    }

    /// A JSON body of empty entries (`{}`), `size` bytes or a few more.
    fn empties(&self, size: usize) -> Vec<u8> {
        let mut body = format!("{{\"{}\":[", self.list).into_bytes();
        while body.len() < size {
            body.extend_from_slice(b"{},");
        }
        body.extend_from_slice(b"{}]}");
        body
    }

    fn request(&self, content_type: &str, body: &[u8], declare_length: bool) -> Vec<u8> {
        post(self.path, content_type, body, declare_length)
    }

    /// 300 empty entries, and a compact body declaring a million: each refused on the count.
    async fn assert_count_refused(&self, at: SocketAddr) {
        let within = Duration::from_secs(1);
        let few = self.body(&["{}"; 300]);
        let json = self.request(JSON, &few, true);
        answer_is(at, &json, within, 400, Some(self.too_many)).await;
        let compact = self.request(POSTCARD, &A_MILLION, true);
        answer_is(at, &compact, within, 400, Some(self.too_many)).await;
    }
}

/// Sends `request` and asserts the answer's status and, if given, a part of its body; returns
/// the body.
async fn answer_is(
    at: SocketAddr,
    request: &[u8],
    within: Duration,
    status: u16,
    says: Option<&str>,
) -> String {
    let (got, body) = exchange(at, request, within).await.unwrap();
    assert_eq!(got, status, "{body}");
    if let Some(says) = says {
        assert!(body.contains(says), "{body}");
    }
    body
}

fn post(path: &str, content_type: &str, body: &[u8], declare_length: bool) -> Vec<u8> {
    let length = if declare_length {
        format!("content-length: {}\r\n", body.len())
    } else {
        "transfer-encoding: chunked\r\n".to_owned()
    };
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {TOKEN}\r\n\
         content-type: {content_type}\r\n{length}connection: close\r\n\r\n"
    )
    .into_bytes();
    if declare_length {
        request.extend_from_slice(body);
    } else {
        request.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
        request.extend_from_slice(b"\r\n0\r\n\r\n");
    }
    request
}

/// 4 MiB of `{}` entries is refused on its length (declared or not) in milliseconds; a body
/// within the bound with 300 empty entries is refused at the 257th, naming the bound; a compact
/// body declaring a million renewals is refused on the count. Forty of them in a row leave RSS
/// and `/readyz` as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_batch_amplification_is_refused_before_parsing() {
    let _alone = alone().await;
    let ks = start(&[]).await;
    let base = ks.rss_mib();
    let empties = RENEW_BATCH.empties(4 * 1024 * 1024);
    let mut slowest = Duration::ZERO;
    for round in 0..40 {
        let start = Instant::now();
        let request = RENEW_BATCH.request(JSON, &empties, round % 2 == 0);
        let too_long = Some("limit of 524288 bytes");
        answer_is(ks.addr, &request, Duration::from_secs(2), 413, too_long).await;
        slowest = slowest.max(start.elapsed());
    }
    let after = ks.rss_mib();
    RENEW_BATCH.assert_count_refused(ks.addr).await;
    ks.assert_ready().await;
    eprintln!(
        "renew-batch amplification: 40 bodies of 4 MiB of {{}} refused, slowest in \
         {slowest:?}; RSS {base:.1} MiB before, {after:.1} MiB after"
    );
    assert!(after - base < 48.0, "{base} -> {after}");
}

/// `/v1/batch`: a body past `--max-body-bytes` (its bound, since a batch carries records) is
/// refused on its length; 3 MiB of empty entries within it are refused at the 257th, as are 300;
/// a compact body declaring a million entries on the count. Forty rounds leave RSS as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_amplification_is_refused_before_parsing() {
    let _alone = alone().await;
    let ks = start(&[]).await;
    let base = ks.rss_mib();
    // Past the body bound: refused on the length; within it: read, and refused at entry 257.
    let over = BATCH.empties(8 * 1024 * 1024);
    let within = BATCH.empties(3 * 1024 * 1024);
    let mut slowest = Duration::ZERO;
    for round in 0..40 {
        let request = BATCH.request(JSON, &over, round % 2 == 0);
        answer_is(ks.addr, &request, Duration::from_secs(2), 413, None).await;
        let start = Instant::now();
        let request = BATCH.request(JSON, &within, true);
        let too_many = Some(BATCH.too_many);
        answer_is(ks.addr, &request, Duration::from_secs(2), 400, too_many).await;
        slowest = slowest.max(start.elapsed());
    }
    let after = ks.rss_mib();
    BATCH.assert_count_refused(ks.addr).await;
    ks.assert_ready().await;
    eprintln!(
        "batch amplification: 40 bodies of 8 MiB refused (413) and 40 of 3 MiB of {{}} (400, \
         slowest {slowest:?}); RSS {base:.1} MiB before, {after:.1} MiB after"
    );
    assert!(after - base < 48.0, "{base} -> {after}");
}

/// Hostile entries among good ones (deep nesting, a wrong type, an unknown call, a huge token,
/// a string where an entry should be): each is its own 400 and the good entries are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_entries_are_their_own_errors() {
    let _alone = alone().await;
    let ks = start(&[]).await;
    let key = hex64(1);
    let good = format!(r#"{{"op":"lookup","key":"{key}","fingerprint":"{key}"}}"#);
    let deep = format!(
        r#"{{"op":"claim","key":{}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    let entries = [
        good.clone(),
        deep,
        format!(r#"{{"op":"lookup","key":"{key}","fingerprint":7}}"#),
        r#"{"op":"purge"}"#.to_owned(),
        format!(
            r#"{{"op":"release","key":"{key}","token":"{}"}}"#,
            "t".repeat(100_000)
        ),
        r#""claim""#.to_owned(),
        good,
    ];
    let request = BATCH.request(JSON, &BATCH.body(&entries), true);
    let answer = answer_is(ks.addr, &request, Duration::from_secs(2), 200, None).await;
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let statuses: Vec<u64> = v["answers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 400, 400, 400, 400, 400, 200], "{answer}");
    assert_eq!(
        v["answers"][4]["body"]["error"],
        "token: must be 1 to 256 characters"
    );
    // Nesting past serde_json's depth limit is not an entry at all: the envelope fails.
    let deeper = BATCH.body(&[format!("{}1{}", "[".repeat(200), "]".repeat(200))]);
    let request = BATCH.request(JSON, &deeper, true);
    answer_is(ks.addr, &request, Duration::from_secs(2), 400, None).await;
    ks.assert_ready().await;
}
