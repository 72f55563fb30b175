//! Reads a key from a gRPC request message without its schema: the body is one length-prefixed
//! message (a flag byte, a 4-byte big-endian length, the message), and the message is protobuf's
//! wire format, a sequence of tagged fields. A route can name a top-level string field by number
//! (AIP-155's `request_id`); this module finds it and checks the whole message on the way, so a
//! body that is not one well-formed uncompressed message is refused with the reason.

use std::fmt;

/// Why a key could not be read from a request message; each is an `INVALID_ARGUMENT` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than the prefix or its length announce.
    Truncated,
    /// The compressed flag is set: the filter reads only uncompressed messages.
    Compressed,
    /// A flag byte other than 0 or 1.
    BadFlag(u8),
    /// More bytes after the first message: not a unary request.
    SeveralMessages,
    /// The message is not protobuf's wire format.
    Malformed(&'static str),
    /// The field is there with another wire type than a length-delimited string.
    NotAString(u8),
    /// The field is length-delimited but its bytes are not UTF-8.
    NotUtf8,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => write!(f, "the request message is truncated"),
            WireError::Compressed => write!(
                f,
                "the request message is compressed; the key field is read only from uncompressed messages"
            ),
            WireError::BadFlag(flag) => write!(f, "the message prefix has an unknown flag {flag}"),
            WireError::SeveralMessages => {
                write!(f, "the request body holds more than one message")
            }
            WireError::Malformed(why) => write!(f, "the request message is not valid protobuf: {why}"),
            WireError::NotAString(wire_type) => write!(
                f,
                "the key field is not a string (wire type {wire_type}, a string is 2)"
            ),
            WireError::NotUtf8 => write!(f, "the key field is not UTF-8 text"),
        }
    }
}

const PREFIX: usize = 5;
/// Groups nested deeper than this are refused rather than followed.
const MAX_GROUP_DEPTH: usize = 32;

/// The one message of a unary request body.
pub fn single_message(body: &[u8]) -> Result<&[u8], WireError> {
    let Some((prefix, rest)) = body.split_first_chunk::<PREFIX>() else {
        return Err(WireError::Truncated);
    };
    match prefix[0] {
        0 => {}
        1 => return Err(WireError::Compressed),
        flag => return Err(WireError::BadFlag(flag)),
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
    let len = usize::try_from(len).map_err(|_| WireError::Truncated)?;
    match rest.len().cmp(&len) {
        std::cmp::Ordering::Less => Err(WireError::Truncated),
        std::cmp::Ordering::Greater => Err(WireError::SeveralMessages),
        std::cmp::Ordering::Equal => Ok(rest),
    }
}

/// The value of top-level string field `field` in the one message of `body`; the last one wins
/// when it appears more than once, as protobuf parsers do. `None`: the field is absent (or
/// empty, which protobuf cannot tell apart from absent).
pub fn string_field(body: &[u8], field: u32) -> Result<Option<&str>, WireError> {
    let mut reader = Reader {
        bytes: single_message(body)?,
    };
    let mut found = None;
    while !reader.bytes.is_empty() {
        let (number, wire_type) = reader.tag()?;
        if number == field {
            if wire_type != 2 {
                return Err(WireError::NotAString(wire_type));
            }
            let value = reader.delimited()?;
            found = Some(std::str::from_utf8(value).map_err(|_| WireError::NotUtf8)?);
        } else {
            reader.skip(number, wire_type, 0)?;
        }
    }
    Ok(found.filter(|value| !value.is_empty()))
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError::Malformed("a field runs past the end"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for i in 0..10 {
            let [byte] = self.take(1)? else {
                return Err(WireError::Malformed("a field runs past the end"));
            };
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(WireError::Malformed("a varint overflows 64 bits"));
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Malformed("a varint is longer than 10 bytes"))
    }

    fn tag(&mut self) -> Result<(u32, u8), WireError> {
        let tag = self.varint()?;
        let number = u32::try_from(tag >> 3)
            .ok()
            .filter(|n| (1..=0x1fff_ffff).contains(n))
            .ok_or(WireError::Malformed("a field number is out of range"))?;
        let wire_type = u8::try_from(tag & 7).unwrap_or(u8::MAX);
        Ok((number, wire_type))
    }

    fn delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.varint()?)
            .map_err(|_| WireError::Malformed("a length is too large"))?;
        self.take(len)
    }

    /// Skips the value of field `number`; a group is skipped up to its matching end tag.
    fn skip(&mut self, number: u32, wire_type: u8, depth: usize) -> Result<(), WireError> {
        match wire_type {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.delimited().map(drop),
            5 => self.take(4).map(drop),
            3 => {
                if depth >= MAX_GROUP_DEPTH {
                    return Err(WireError::Malformed("groups are nested too deep"));
                }
                loop {
                    if self.bytes.is_empty() {
                        return Err(WireError::Malformed("a group has no end"));
                    }
                    let (inner, inner_type) = self.tag()?;
                    if inner_type == 4 {
                        return if inner == number {
                            Ok(())
                        } else {
                            Err(WireError::Malformed(
                                "a group ends with another field's tag",
                            ))
                        };
                    }
                    self.skip(inner, inner_type, depth + 1)?;
                }
            }
            4 => Err(WireError::Malformed("a group ends where none started")),
            _ => Err(WireError::Malformed("an unknown wire type")),
        }
    }
}

#[cfg(test)]
mod tests;
