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
