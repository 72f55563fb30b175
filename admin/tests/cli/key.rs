//! Naming the record: `key` derives the record key as the filter does, and input that names no
//! record is refused, naming what is wrong.

use super::*;

/// `key`: the record key under each secret, as the filter derives it.
#[test]
fn key_prints_the_record_key_under_each_secret() {
    let setup = Setup::new();
    let text = stdout(&admin(&setup, None, "key", "\"abc\"", &[]));
    contains(&text, ROUTE);
    contains(
        &text,
        &format!("secret 0 (current)    {}", record_key(CURRENT, "abc").hex()),
    );
    contains(
        &text,
        &format!(
            "secret 1 (previous)   {}",
            record_key(PREVIOUS, "abc").hex()
        ),
    );
    assert!(
        !text.contains(CALLER),
        "the caller's credential is not printed"
    );
    // A bare token is the same key as the quoted string.
    let bare = stdout(&admin(&setup, None, "key", "abc", &[]));
    assert_eq!(bare, text);
}

/// Input that names no record gets an error naming what is wrong, and a usage exit code.
#[test]
fn bad_input_is_named() {
    let setup = Setup::new();
    let config = setup.config_path().to_str().unwrap().to_owned();
    let args = |config: &str, path: &str, key: &str| -> Vec<String> {
        [
            "--config", config, "--path", path, "--caller", CALLER, "--key", key,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |args: &[String], env_secret: bool| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_idempotency-admin"));
        cmd.arg("key")
            .args(args)
            .env("KEYSTORE_TOKEN", V1_TOKEN)
            .env_remove("IDEMPOTENCY_ADMIN_CALLER");
        if env_secret {
            cmd.env("IDEM_SECRET", CURRENT);
        } else {
            cmd.env_remove("IDEM_SECRET");
        }
        failure(&cmd.output().unwrap(), 2)
    };
    contains(
        &run(&args(&config, "/orders", "k"), true),
        "--method POST --path /orders: no rule",
    );
    contains(
        &run(&args(&config, "/payments", "\"k"), true),
        "--key \"k: the key is not a valid structured-field string",
    );
    contains(
        &run(&args(&config, "/payments", ""), true),
        "--key : the key is empty",
    );
    let err = run(&args(&config, "/payments", "k"), false);
    contains(&err, "hmac_secrets[0].env");
    contains(&err, "IDEM_SECRET");
    let mut with_source = args(&config, "/payments", "k");
    with_source.extend(["--caller-source".into(), "header:cookie".into()]);
    contains(
        &run(&with_source, true),
        "--caller-source header:cookie is not",
    );
    let broken = setup.dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"routes": [{"prefx": "/p"}]}"#).unwrap();
    contains(
        &run(&args(broken.to_str().unwrap(), "/payments", "k"), true),
        "routes[0].prefx",
    );
    contains(
        &run(&args("/nonexistent/plugin.json", "/payments", "k"), true),
        "--config /nonexistent/plugin.json",
    );
    let out = show_at(&setup, "k", "keystore:8081", ADMIN_TOKEN);
    contains(&failure(&out, 2), "--keystore keystore:8081: give http://");
}
