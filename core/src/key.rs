//! The `Idempotency-Key` value: a Structured Field string (RFC 8941 §3.3.3), or a bare token accepted
//! as the same key. Everything here works on bytes, so a non-UTF-8 header is an answer, not a panic.

use std::fmt;

/// Longest key accepted, in characters after unquoting.
pub const MAX_KEY_LEN: usize = 255;

/// A validated key: 1 to 255 printable ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a key was refused; the text goes into the 400 problem's `detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong(usize),
    NotPrintableAscii,
    BrokenString(&'static str),
    Parameters,
    Conflicting,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Empty => write!(f, "the key is empty"),
            KeyError::TooLong(n) => write!(
                f,
                "the key has {n} characters; at most {MAX_KEY_LEN} are allowed"
            ),
            KeyError::NotPrintableAscii => {
                write!(f, "the key must be printable ASCII characters only")
            }
            KeyError::BrokenString(why) => {
                write!(f, "the key is not a valid structured-field string: {why}")
            }
            KeyError::Parameters => write!(f, "the key must not carry structured-field parameters"),
            KeyError::Conflicting => write!(f, "the request carries several different keys"),
        }
    }
}

/// Parses every value of the key header. `Ok(None)` when there is none; several equal values count as one.
pub fn parse_key_header<'a, I>(values: I) -> Result<Option<IdempotencyKey>, KeyError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut found: Option<IdempotencyKey> = None;
    for raw in values {
        let key = parse_key(raw)?;
        match &found {
            Some(prev) if *prev != key => return Err(KeyError::Conflicting),
            _ => found = Some(key),
        }
    }
    Ok(found)
}

/// Parses one header value.
pub fn parse_key(raw: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let value = trim_ows(raw);
    let text = match value.first() {
        None => return Err(KeyError::Empty),
        Some(b'"') => parse_sf_string(value)?,
        Some(_) => parse_bare(value)?,
    };
    if text.is_empty() {
        return Err(KeyError::Empty);
    }
    if text.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(text.len()));
    }
    Ok(IdempotencyKey(text))
}

fn trim_ows(raw: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = raw.iter().position(|b| !is_ows(b)).unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    raw.get(start..end).unwrap_or_default()
}

/// `"..."` with `\"` and `\\` escapes; only SP and visible ASCII inside; nothing after the closing quote.
fn parse_sf_string(value: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(value.len());
    let mut bytes = value.iter().skip(1);
    loop {
        match bytes.next() {
            None => return Err(KeyError::BrokenString("no closing quote")),
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(char::from(c)),
                Some(_) => {
                    return Err(KeyError::BrokenString(
                        "a backslash may only escape `\"` or `\\`",
                    ))
                }
                None => return Err(KeyError::BrokenString("no closing quote")),
            },
            Some(b'"') => break,
            Some(&c) if (0x20..=0x7e).contains(&c) => out.push(char::from(c)),
            Some(_) => return Err(KeyError::NotPrintableAscii),
        }
    }
    match bytes.next() {
        None => Ok(out),
        Some(b';') => Err(KeyError::Parameters),
        Some(_) => Err(KeyError::BrokenString("characters after the closing quote")),
    }
}

/// A bare value: visible ASCII without the characters that would make it a list, a string or parameters.
fn parse_bare(value: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(value.len());
    for &c in value {
        match c {
            b';' => return Err(KeyError::Parameters),
            b'"' | b'\\' | b',' => {
                return Err(KeyError::BrokenString(
                    "a bare key may not hold `\"`, `\\` or `,`",
                ))
            }
            0x21..=0x7e => out.push(char::from(c)),
            _ => return Err(KeyError::NotPrintableAscii),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(raw: &[u8]) -> String {
        parse_key(raw).unwrap().as_str().to_string()
    }

    #[test]
    fn quoted_and_bare_are_the_same_key() {
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(ok(format!("\"{uuid}\"").as_bytes()), uuid);
        assert_eq!(ok(uuid.as_bytes()), uuid);
        assert_eq!(ok(format!("  \"{uuid}\"\t").as_bytes()), uuid);
    }

    #[test]
    fn escapes_and_spaces_inside_quotes() {
        assert_eq!(ok(br#""a\"b\\c d""#), "a\"b\\c d");
    }

    #[test]
    fn length_limits() {
        assert_eq!(ok("x".repeat(255).as_bytes()).len(), 255);
        assert_eq!(
            parse_key("x".repeat(256).as_bytes()),
            Err(KeyError::TooLong(256))
        );
        assert_eq!(
            parse_key(format!("\"{}\"", "y".repeat(256)).as_bytes()),
            Err(KeyError::TooLong(256))
        );
        assert_eq!(parse_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_key(b"   "), Err(KeyError::Empty));
        assert_eq!(parse_key(b"\"\""), Err(KeyError::Empty));
    }

    #[test]
    fn refuses_broken_and_hostile_values() {
        for bad in [
            &b"\"abc"[..],
            b"\"abc\"x",
            b"\"a\\nb\"",
            b"\"a\x01b\"",
            b"a\x7fb",
            b"\xff\xfe",
            b"\"\xc3\xa9\"",
            b"a b",
            b"a,b",
            b"\"a\", \"b\"",
            b"ab\"",
        ] {
            assert!(parse_key(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_key(b"\"a\";p=1"), Err(KeyError::Parameters));
        assert_eq!(parse_key(b"a;p=1"), Err(KeyError::Parameters));
    }

    #[test]
    fn several_fields() {
        let none: [&[u8]; 0] = [];
        assert_eq!(parse_key_header(none), Ok(None));
        let same: [&[u8]; 2] = [b"\"k\"", b"k"];
        assert_eq!(parse_key_header(same).unwrap().unwrap().as_str(), "k");
        let differ: [&[u8]; 2] = [b"\"k\"", b"\"j\""];
        assert_eq!(parse_key_header(differ), Err(KeyError::Conflicting));
    }
}
