//! The key store on Redis servers that require TLS and an ACL user: a single node and a
//! three-master cluster, started here with a CA and a server certificate made by `openssl`.
//! The server's certificate is checked (a CA that did not sign it is refused), and a wrong or
//! missing password is refused, on both.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use idempotency_keystore::backend::redis::{RedisBackend, Tls};
use idempotency_keystore::backend::Backend;
use reqwest::StatusCode;
use serde_json::json;

use idempotency_testkit::redis::{free_port, tempdir, wait_until, RedisProcess};

use crate::common::{eventually, hex64, settings, unb64, Keystore};

const USER: &str = "keystore";
const PASSWORD: &str = "tls-acl-test-password-5f2c";

/// A CA, and a certificate for 127.0.0.1 signed by it; plus a second CA that signed nothing.
struct Certs {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Certs {
    fn make() -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("redis-tls-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let d = dir.path();
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=test {ca}"),
                ],
            );
        }
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
            ],
        );
        Certs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls(&self, ca: &str) -> Tls {
        Tls {
            ca_pem: Some(std::fs::read(self.path(ca)).unwrap()),
        }
    }
}

/// A redis-server on a TLS port only (no plain port), with the default user off and one ACL user.
struct TlsRedis {
    port: u16,
    _proc: RedisProcess,
    _data: tempfile::TempDir,
}

impl TlsRedis {
    fn start(certs: &Certs, extra: &[&str]) -> TlsRedis {
        let port = free_port();
        let data = tempdir("redis-tls-data-");
        let mut args: Vec<OsString> = ["--port", "0", "--tls-port", &port.to_string()]
            .into_iter()
            .chain(["--bind", "127.0.0.1"])
            .map(OsString::from)
            .collect();
        for (flag, file) in [
            ("--tls-cert-file", "server.pem"),
            ("--tls-key-file", "server.key"),
            ("--tls-ca-cert-file", "ca.pem"),
        ] {
            args.push(flag.into());
            args.push(certs.path(file).into());
        }
        let password = format!(">{PASSWORD}");
        args.extend(
            [
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--user",
                "default",
                "off",
                "--user",
                USER,
                "on",
                &password,
                "~idem:*",
                "+@all",
            ]
            .into_iter()
            .chain(extra.iter().copied())
            .map(OsString::from),
        );
        let proc = RedisProcess::spawn(data.path(), "redis.log", &args);
        wait_until("TLS redis to answer", Duration::from_secs(10), || {
            cli(certs, port, &["ping"]).as_deref() == Some("PONG")
        });
        TlsRedis {
            port,
            _proc: proc,
            _data: data,
        }
    }
}

/// `redis-cli` over TLS as the ACL user; its trimmed output, if it succeeded.
fn cli(certs: &Certs, port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(["--tls", "-h", "127.0.0.1", "-p", &port.to_string()])
        .arg("--cacert")
        .arg(certs.path("ca.pem"))
        .args(["--user", USER, "--pass", PASSWORD, "--no-auth-warning"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn url(port: u16, user: &str, password: &str) -> String {
    format!("rediss://{user}:{password}@127.0.0.1:{port}")
}

/// Claim, complete and read back a few keys (in several cluster slots), and look one up.
async fn round_trip(backend: Arc<dyn Backend>) {
    let ks = Keystore::start(backend, settings()).await;
    // The first TLS handshakes can take longer than one call's bound on a busy machine: wait until
    // the store answers, as a gateway's readiness probe would.
    eventually(Duration::from_secs(20), "ready over TLS", || async {
        (ks.get("/readyz").await.0 == StatusCode::OK).then_some(())
    })
    .await;
    for i in 0..6u8 {
        let (key, fp) = (hex64(), hex64());
        let token = ks.claim_ok(&key, &fp, 30_000).await;
        let record = [i, 0xff, 0x00, b'r'];
        assert_eq!(
            ks.complete(&key, &token, &record, 60_000).await.0,
            StatusCode::OK
        );
        let (status, body) = ks.claim(&key, &fp, 30_000).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["outcome"], "completed", "{body}");
        assert_eq!(unb64(&body["record"]), record);
        let (_, body) = ks
            .post("/v1/lookup", json!({"key": key, "fingerprint": fp}))
            .await;
        assert_eq!(body["outcome"], "completed", "{body}");
    }
}

/// A backend that must not get through: /readyz says 503 and a claim gets 503.
async fn refused(backend: Arc<dyn Backend>, why: &str) {
    let ks = Keystore::start(backend, settings()).await;
    let (status, _) = ks.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}: ready");
    let (status, body) = ks.claim(&hex64(), &hex64(), 30_000).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}: {body}");
}

fn timeout() -> Duration {
    Duration::from_millis(1500)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_with_tls_and_an_acl_user() {
    let certs = Certs::make();
    let redis = TlsRedis::start(&certs, &[]);
    let ok = RedisBackend::single_with(
        &[url(redis.port, USER, PASSWORD)],
        timeout(),
        &certs.tls("ca.pem"),
    )
    .unwrap();
    round_trip(Arc::new(ok)).await;
    // Only idem:* keys are the user's: the record layout stays inside its ACL.
    assert!(cli(&certs, redis.port, &["--scan"])
        .unwrap()
        .lines()
        .all(|k| k.starts_with("idem:")));

    for (why, urls, tls) in [
        (
            "wrong password",
            url(redis.port, USER, "wrong"),
            certs.tls("ca.pem"),
        ),
        (
            "no user",
            format!("rediss://127.0.0.1:{}", redis.port),
            certs.tls("ca.pem"),
        ),
        (
            "a CA that did not sign the server",
            url(redis.port, USER, PASSWORD),
            certs.tls("other-ca.pem"),
        ),
        (
            "the system roots",
            url(redis.port, USER, PASSWORD),
            Tls::default(),
        ),
        (
            "plain TCP to the TLS port",
            format!("redis://{USER}:{PASSWORD}@127.0.0.1:{}", redis.port),
            Tls::default(),
        ),
    ] {
        let backend = RedisBackend::single_with(&[urls], timeout(), &tls).unwrap();
        refused(Arc::new(backend), why).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_with_tls_and_an_acl_user() {
    let certs = Certs::make();
    let cluster_args = [
        "--cluster-enabled",
        "yes",
        "--tls-cluster",
        "yes",
        "--cluster-node-timeout",
        "2000",
    ];
    let nodes: Vec<TlsRedis> = (0..3)
        .map(|_| TlsRedis::start(&certs, &cluster_args))
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(addrs.iter().map(String::as_str));
    create.push("--cluster-yes");
    cli(&certs, nodes[0].port, &create).expect("redis-cli --cluster create over TLS");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| {
        cli(&certs, n.port, &["cluster", "info"]).is_some_and(|i| i.contains("cluster_state:ok"))
    }) {
        assert!(Instant::now() < deadline, "the TLS cluster did not form");
        std::thread::sleep(Duration::from_millis(100));
    }
    let seeds: Vec<String> = nodes.iter().map(|n| url(n.port, USER, PASSWORD)).collect();
    let ok = RedisBackend::cluster_with(&seeds, timeout(), &certs.tls("ca.pem")).unwrap();
    round_trip(Arc::new(ok)).await;

    let wrong: Vec<String> = nodes.iter().map(|n| url(n.port, USER, "wrong")).collect();
    refused(
        Arc::new(RedisBackend::cluster_with(&wrong, timeout(), &certs.tls("ca.pem")).unwrap()),
        "wrong password",
    )
    .await;
    refused(
        Arc::new(
            RedisBackend::cluster_with(&seeds, timeout(), &certs.tls("other-ca.pem")).unwrap(),
        ),
        "a CA that did not sign the servers",
    )
    .await;
}
