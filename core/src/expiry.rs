//! The in-band expiry of a key: answers that create or replay a record say until when the key is
//! honoured, so a client knows how long its retries are safe. The value is an HTTP-date
//! (IMF-fixdate) of the record's expiry, the same on the first answer and on every replay.

use crate::host::Headers;
use std::time::{Duration, UNIX_EPOCH};

/// The last second an HTTP-date can name (9999-12-31T23:59:59Z).
const LAST_HTTP_DATE_S: u64 = 253_402_300_799;

/// `expires_ms` (milliseconds since the Unix epoch) as an IMF-fixdate. Whole seconds, rounded
/// down: the key is still honoured at the instant named. Beyond year 9999 (a saturated expiry),
/// the last date there is.
pub fn http_date(expires_ms: u64) -> String {
    let secs = (expires_ms / 1000).min(LAST_HTTP_DATE_S);
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

/// Sets `name` to the expiry in `headers`, replacing any field of that name (an upstream's own
/// would contradict the record's).
pub fn set_header(headers: &mut Headers, name: &str, expires_ms: u64) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    headers.push((name.to_string(), http_date(expires_ms).into_bytes()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_imf_fixdate() {
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // RFC 9110's own example.
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        // A leap day, and milliseconds rounded down.
        assert_eq!(http_date(951_782_400_999), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn replaces_a_field_of_the_same_name() {
        let mut headers = vec![
            ("Idempotency-Expires".to_string(), b"never".to_vec()),
            ("x-a".to_string(), b"1".to_vec()),
        ];
        set_header(&mut headers, "idempotency-expires", 0);
        assert_eq!(
            headers,
            vec![
                ("x-a".to_string(), b"1".to_vec()),
                (
                    "idempotency-expires".to_string(),
                    b"Thu, 01 Jan 1970 00:00:00 GMT".to_vec()
                ),
            ]
        );
    }
}
