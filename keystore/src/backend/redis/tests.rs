use super::*;

#[test]
fn urls_are_logged_without_their_password() {
    assert_eq!(
        redact("rediss://keystore:s3cr3t@redis:6380"),
        "rediss://keystore:***@redis:6380"
    );
    assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
    assert_eq!(redact("redis://h:1"), "redis://h:1");
    let e = RedisBackend::single(
        &["redis://u:pw-xyz@h:1".into(), "x".into()],
        Duration::from_millis(1),
    );
    assert!(e.is_err());
    let e = RedisBackend::single(
        &["rediss://u:pw-xyz@h:1/#insecure".into()],
        Duration::from_millis(1),
    )
    .err()
    .unwrap();
    assert!(!e.to_string().contains("pw-xyz"), "{e}");
}
