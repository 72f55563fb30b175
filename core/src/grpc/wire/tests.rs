use super::*;

/// One uncompressed length-prefixed message.
fn framed(message: &[u8]) -> Vec<u8> {
    let mut body = vec![0];
    body.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    body.extend_from_slice(message);
    body
}

fn string(number: u8, value: &[u8]) -> Vec<u8> {
    let mut field = vec![number << 3 | 2, u8::try_from(value.len()).unwrap()];
    field.extend_from_slice(value);
    field
}

#[test]
fn finds_a_string_field_among_others() {
    let mut message = vec![0x08, 0x96, 0x01]; // field 1, varint 150
    message.extend(string(2, b"payload"));
    message.extend([0x1d, 1, 2, 3, 4]); // field 3, fixed32
    message.extend([0x21, 1, 2, 3, 4, 5, 6, 7, 8]); // field 4, fixed64
    message.extend(string(5, b"req-123"));
    assert_eq!(string_field(&framed(&message), 5), Ok(Some("req-123")));
    assert_eq!(string_field(&framed(&message), 2), Ok(Some("payload")));
    assert_eq!(string_field(&framed(&message), 9), Ok(None));
}

#[test]
fn the_last_occurrence_wins_and_empty_is_absent() {
    let mut message = string(1, b"first");
    message.extend(string(1, b"second"));
    assert_eq!(string_field(&framed(&message), 1), Ok(Some("second")));
    assert_eq!(string_field(&framed(&string(1, b"")), 1), Ok(None));
    assert_eq!(string_field(&framed(&[]), 1), Ok(None));
}

#[test]
fn groups_are_skipped_to_their_end() {
    // field 2 start group, inner field 1 varint 5, field 2 end group, then field 3 string.
    let mut message = vec![0x13, 0x08, 0x05, 0x14];
    message.extend(string(3, b"k"));
    assert_eq!(string_field(&framed(&message), 3), Ok(Some("k")));
    assert!(matches!(
        string_field(&framed(&[0x13, 0x08, 0x05, 0x1c]), 3),
        Err(WireError::Malformed(_))
    ));
    assert!(matches!(
        string_field(&framed(&[0x13, 0x08]), 3),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn the_field_must_be_a_utf8_string() {
    assert_eq!(
        string_field(&framed(&[0x08, 0x01]), 1),
        Err(WireError::NotAString(0))
    );
    assert_eq!(
        string_field(&framed(&string(1, &[0xff, 0xfe])), 1),
        Err(WireError::NotUtf8)
    );
}

#[test]
fn the_body_must_be_one_uncompressed_message() {
    let message = string(1, b"key");
    let mut compressed = framed(&message);
    compressed[0] = 1;
    assert_eq!(string_field(&compressed, 1), Err(WireError::Compressed));
    let mut odd_flag = framed(&message);
    odd_flag[0] = 7;
    assert_eq!(string_field(&odd_flag, 1), Err(WireError::BadFlag(7)));
    let mut two = framed(&message);
    two.extend(framed(&message));
    assert_eq!(string_field(&two, 1), Err(WireError::SeveralMessages));
    let whole = framed(&message);
    assert_eq!(
        string_field(&whole[..whole.len() - 1], 1),
        Err(WireError::Truncated)
    );
    assert_eq!(string_field(&whole[..3], 1), Err(WireError::Truncated));
    assert_eq!(string_field(b"", 1), Err(WireError::Truncated));
}

#[test]
fn malformed_protobuf_is_refused() {
    for message in [
        &[0x0a, 0x05, b'a'][..], // length past the end
        &[0x08][..],             // varint missing
        &[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
        ][..], // overflow
        &[0x00, 0x01][..],       // field number 0
        &[0x0e][..],             // wire type 6
        &[0x0c][..],             // end group without start
        &[0x09, 1, 2, 3][..],    // fixed64 short
    ] {
        assert!(
            matches!(
                string_field(&framed(message), 9),
                Err(WireError::Malformed(_))
            ),
            "{message:?}"
        );
    }
}

#[test]
fn deep_groups_are_refused_not_followed() {
    let mut message = vec![0x13; 64];
    message.extend(vec![0x14; 64]);
    assert!(matches!(
        string_field(&framed(&message), 1),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn errors_say_why() {
    assert!(WireError::Compressed.to_string().contains("compressed"));
    assert!(WireError::NotAString(0)
        .to_string()
        .contains("not a string"));
}
