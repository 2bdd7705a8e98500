//! The `lodestone` command line: etcd's defaults with no flags (its listeners included), and
//! every flag readable from `LODESTONE_<FLAG>` environment variables.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lodestone_tests::{connect, free_port, lodestone_bin};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars() {
        if k.starts_with("LODESTONE_") && k != "LODESTONE_BIN" {
            cmd.env_remove(k);
        }
    }
}

async fn wait_serving(endpoint: &str) -> etcd_client::Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = connect(&[endpoint.to_string()]).await;
        if c.get("probe", None).await.is_ok() {
            return c;
        }
        assert!(Instant::now() < deadline, "lodestone at {endpoint} never served");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_flags_runs_a_one_member_default_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(lodestone_bin());
    clean_env(&mut cmd);
    cmd.current_dir(dir.path()).stdout(Stdio::null()).stderr(Stdio::null());
    let _p = Proc(cmd.spawn().unwrap());
    let mut c = wait_serving("127.0.0.1:2379").await;
    c.put("hello", "world", None).await.unwrap();
    assert_eq!(c.get("hello", None).await.unwrap().kvs()[0].value(), b"world");
    let members = c.member_list().await.unwrap();
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].peer_urls(), ["http://127.0.0.1:2380"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while members.members()[0].name() != "default" {
        let m = c.member_list().await.unwrap();
        if m.members()[0].name() == "default" {
            break;
        }
        assert!(Instant::now() < deadline, "member never published its name");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dir.path().join("default.lodestone/member/wal").is_dir());
    assert!(dir.path().join("default.lodestone/member/snap").is_dir());
    // As etcd: HTTP on the client URL, and no listener besides the client and peer ports.
    let (code, body) = lodestone_tests::http_get("http://127.0.0.1:2379/health");
    assert_eq!(code, 200, "{body}");
    assert!(
        std::net::TcpStream::connect("127.0.0.1:2381").is_err(),
        "something listens on 127.0.0.1:2381 by default"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_read_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer, metrics) = (free_port(), free_port(), free_port());
    let wal = dir.path().join("separate-wal");
    let mut cmd = Command::new(lodestone_bin());
    clean_env(&mut cmd);
    cmd.env("LODESTONE_NAME", "envy")
        .env("LODESTONE_DATA_DIR", dir.path().join("data"))
        .env("LODESTONE_WAL_DIR", &wal)
        .env("LODESTONE_LISTEN_CLIENT_URLS", format!("http://127.0.0.1:{client}"))
        .env("LODESTONE_ADVERTISE_CLIENT_URLS", format!("http://127.0.0.1:{client}"))
        .env("LODESTONE_LISTEN_PEER_URLS", format!("http://127.0.0.1:{peer}"))
        .env(
            "LODESTONE_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://127.0.0.1:{peer}"),
        )
        .env("LODESTONE_LISTEN_METRICS_URLS", format!("http://127.0.0.1:{metrics}"))
        .env("LODESTONE_MAX_TXN_OPS", "2")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _p = Proc(cmd.spawn().unwrap());
    let mut c = wait_serving(&format!("127.0.0.1:{client}")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = c.member_list().await.unwrap();
        if m.members()[0].name() == "envy" {
            assert_eq!(m.members()[0].client_urls(), [format!("http://127.0.0.1:{client}")]);
            break;
        }
        assert!(Instant::now() < deadline, "name from LODESTONE_NAME never published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // --wal-dir puts the log in its own directory.
    assert!(wal.is_dir());
    assert!(!dir.path().join("data/member/wal").exists());
    // --max-txn-ops from the environment.
    use etcd_client::{Txn, TxnOp};
    let ops: Vec<TxnOp> = (0..3).map(|i| TxnOp::put(format!("k{i}"), "v", None)).collect();
    lodestone_tests::assert_status(
        c.txn(Txn::new().and_then(ops)).await.unwrap_err(),
        tonic::Code::InvalidArgument,
        "etcdserver: too many operations in txn request",
    );
}

/// TLS flags that cannot work stop the member before it binds anything, with a message
/// naming the flag to fix (and the member exits non-zero).
#[test]
fn impossible_tls_flags_are_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let pki = lodestone_tests::pki::Ca::new(dir.path(), "flags");
    let files = pki.issue("member", "member");
    let (cert, key, ca) = (
        files.cert.display().to_string(),
        files.key.display().to_string(),
        files.ca.display().to_string(),
    );
    let client = format!("https://127.0.0.1:{}", free_port());
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--listen-client-urls".into(), client.clone()],
            "is an https URL but no certificate is configured: give --cert-file and --key-file, or --auto-tls",
        ),
        (
            vec!["--cert-file".into(), cert.clone()],
            "--cert-file and --key-file must be given together",
        ),
        (
            vec!["--peer-client-cert-auth".into(), "--peer-auto-tls".into()],
            "--peer-client-cert-auth needs --peer-trusted-ca-file",
        ),
        (
            vec![
                "--listen-client-urls".into(),
                client.clone(),
                "--cert-file".into(),
                cert.clone(),
                "--key-file".into(),
                key.clone(),
                "--cipher-suites".into(),
                "TLS_RSA_WITH_AES_128_CBC_SHA".into(),
            ],
            "TLS cipher suite \"TLS_RSA_WITH_AES_128_CBC_SHA\" is not supported",
        ),
        (
            vec![
                "--listen-client-urls".into(),
                client.clone(),
                "--cert-file".into(),
                cert.clone(),
                "--key-file".into(),
                ca.clone(),
            ],
            "cannot read",
        ),
        (
            vec!["--tls-min-version".into(), "TLS1.0".into()],
            "expected TLS1.2 or TLS1.3",
        ),
    ];
    for (i, (args, message)) in cases.into_iter().enumerate() {
        let mut cmd = Command::new(lodestone_bin());
        clean_env(&mut cmd);
        let out = cmd
            .args(["--data-dir", &dir.path().join(format!("d{i}")).display().to_string()])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", free_port())])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: started anyway");
        assert!(err.contains(message), "{args:?}: expected {message:?} in:\n{err}");
    }
}
