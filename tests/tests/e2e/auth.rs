//! etcd's Auth side by side with etcd 3.4: users, roles and permissions through the
//! etcd-client crate and etcdctl, every auth error row with its exact code and message,
//! permission checks on every KV request (nested txns, compares, untaken branches, watches),
//! admin-only RPCs, simple and JWT tokens, and the CN of a client certificate as the user.
//! Lodestone only: the checks etcd 3.4.23 lacks (its later security advisories), AuthStatus,
//! and auth across members and restarts.

use std::time::Duration;

use ::lodestone::proto::etcdserverpb::auth_client::AuthClient;
use ::lodestone::proto::etcdserverpb::kv_client::KvClient;
use ::lodestone::proto::etcdserverpb::{AuthStatusRequest, AuthenticateRequest, PutRequest, RangeRequest};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Permission, PutOptions, Txn, TxnOp, WatchOptions};
use lodestone_tests::pki::Ca;
use lodestone_tests::{Cluster, Kind, Options, assert_status, connect_with, etcdctl};
use lodestone_tests::{etcdctl_failed as failed, etcdctl_ok as ok};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::Channel;

lodestone_tests::compat!(
    auth_rpcs_answer_etcds_errors,
    etcdctl_manages_users_roles_and_permissions,
    permissions_cover_every_kv_request,
    tokens_and_passwords,
    admin_rpcs_need_the_root_role,
    client_certificate_cn_is_the_user,
    jwt_tokens_carry_the_auth_revision,
);

const ROOT_PW: &str = "rootpw";

async fn as_user(c: &Cluster, user: &str, password: &str) -> Client {
    connect_with(
        &[c.members[0].endpoint()],
        c.connect_options().with_user(user, password),
    )
    .await
}

/// Adds `root` with the root role and enables auth (what `etcdctl auth enable` does).
async fn enable_auth(cl: &mut Client) {
    cl.user_add("root", ROOT_PW, None).await.unwrap();
    cl.role_add("root").await.unwrap();
    cl.user_grant_role("root", "root").await.unwrap();
    cl.auth_enable().await.unwrap();
}

/// A user `name` whose role `name-role` grants `perms`.
async fn add_user(root: &mut Client, name: &str, perms: Vec<Permission>) {
    root.user_add(name, "pw", None).await.unwrap();
    let role = format!("{name}-role");
    root.role_add(role.as_str()).await.unwrap();
    for p in perms {
        root.role_grant_permission(role.as_str(), p).await.unwrap();
    }
    root.user_grant_role(name, role.as_str()).await.unwrap();
}

/// Sends `token` metadata (or nothing) with every request: what a client with a token, a
/// forged one, or none at all sends.
#[derive(Clone)]
struct Token(Option<String>);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &self.0 {
            req.metadata_mut()
                .insert("token", MetadataValue::try_from(t.as_str()).unwrap());
        }
        Ok(req)
    }
}

async fn channel(c: &Cluster, i: usize) -> Channel {
    Channel::from_shared(format!("http://{}", c.members[i].endpoint()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap()
}

async fn raw_kv(
    c: &Cluster,
    i: usize,
    token: Option<String>,
) -> KvClient<tonic::service::interceptor::InterceptedService<Channel, Token>> {
    KvClient::with_interceptor(channel(c, i).await, Token(token))
}

async fn token_of(c: &Cluster, i: usize, user: &str, password: &str) -> String {
    let mut a = AuthClient::new(channel(c, i).await);
    a.authenticate(AuthenticateRequest {
        name: user.into(),
        password: password.into(),
    })
    .await
    .unwrap()
    .into_inner()
    .token
}

fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    }
}

fn assert_grpc(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, message: &str) {
    let e = r.expect_err("the request was accepted");
    assert_eq!((e.code(), e.message()), (code, message));
}

async fn auth_rpcs_answer_etcds_errors(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;

    let e = cl
        .auth_client()
        .authenticate("root".into(), "x".into())
        .await
        .unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: authentication is not enabled");
    let e = cl.auth_enable().await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: root user does not exist");
    cl.user_add("root", ROOT_PW, None).await.unwrap();
    let e = cl.auth_enable().await.unwrap_err();
    assert_status(
        e,
        Code::FailedPrecondition,
        "etcdserver: root user does not have root role",
    );

    let e = cl.user_add("", "pw", None).await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = cl.user_add("root", "pw", None).await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: user name already exists");
    let e = cl.role_add("").await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: role name is empty");
    cl.role_add("r").await.unwrap();
    let e = cl.role_add("r").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: role name already exists");
    let e = cl.user_grant_role("nobody", "r").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: user name not found");
    let e = cl.user_grant_role("root", "nope").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: role name not found");
    let e = cl.user_revoke_role("root", "r").await.unwrap_err();
    assert_status(
        e,
        Code::FailedPrecondition,
        "etcdserver: role is not granted to the user",
    );
    let e = cl.user_get("nobody").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: user name not found");
    let e = cl.user_delete("nobody").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: user name not found");
    let e = cl.role_get("nope").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: role name not found");
    let e = cl.role_delete("nope").await.unwrap_err();
    assert_status(e, Code::FailedPrecondition, "etcdserver: role name not found");
    let e = cl.role_revoke_permission("r", "k", None).await.unwrap_err();
    assert_status(
        e,
        Code::FailedPrecondition,
        "etcdserver: permission is not granted to the role",
    );

    // Grants and reads.
    cl.role_grant_permission("r", Permission::read_write("a/").with_prefix())
        .await
        .unwrap();
    cl.role_grant_permission("r", Permission::read("b")).await.unwrap();
    // A second grant on the same range replaces the type.
    cl.role_grant_permission("r", Permission::write("b")).await.unwrap();
    let perms = cl.role_get("r").await.unwrap().permissions();
    let summary: Vec<(String, String, i32)> = perms
        .iter()
        .map(|p| {
            (
                p.key_str().unwrap().into(),
                p.range_end_str().unwrap().into(),
                p.get_type(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("a/".into(), "a0".into(), 2), ("b".into(), "".into(), 1)],
        "sorted by key, one entry per range"
    );
    cl.user_add("alice", "pw", None).await.unwrap();
    cl.user_grant_role("alice", "r").await.unwrap();
    cl.user_grant_role("alice", "r").await.unwrap();
    assert_eq!(cl.user_get("alice").await.unwrap().roles(), ["r"]);
    assert_eq!(cl.user_list().await.unwrap().users(), ["alice", "root"]);
    assert_eq!(cl.role_list().await.unwrap().roles(), ["r"]);

    // root with the root role: auth goes on.
    cl.user_grant_role("root", "root").await.unwrap();
    cl.auth_enable().await.unwrap();
    cl.auth_enable().await.unwrap_err();
    let mut root = as_user(&c, "root", ROOT_PW).await;
    root.auth_enable().await.unwrap();
    let e = root.user_delete("root").await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: invalid auth management");
    let e = root.user_revoke_role("root", "root").await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: invalid auth management");

    // Deleting a role takes it from its users.
    root.role_delete("r").await.unwrap();
    assert!(root.user_get("alice").await.unwrap().roles().is_empty());
    root.user_delete("alice").await.unwrap();
    assert_eq!(root.user_list().await.unwrap().users(), ["root"]);

    root.auth_disable().await.unwrap();
    // With auth off again, anyone may write.
    cl.put("free", "v", None).await.unwrap();
}

async fn etcdctl_manages_users_roles_and_permissions(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let eps = c.endpoints();
    let ctl = |args: &[&str]| etcdctl(&eps, args);
    let root = format!("--user=root:{ROOT_PW}");

    assert_eq!(
        ok(ctl(&["user", "add", &format!("root:{ROOT_PW}")])),
        "User root created\n"
    );
    // etcdctl adds the root role and grants it when the server says it is missing.
    assert_eq!(ok(ctl(&["auth", "enable"])), "Authentication Enabled\n");
    assert!(failed(ctl(&["put", "k", "v"])).contains("etcdserver: user name is empty"));
    assert!(
        failed(ctl(&["--user=root:wrong", "get", "k"]))
            .contains("etcdserver: authentication failed, invalid user ID or password")
    );
    assert_eq!(ok(ctl(&[&root, "put", "k", "v"])), "OK\n");
    assert_eq!(ok(ctl(&[&root, "role", "add", "app"])), "Role app created\n");
    assert_eq!(
        ok(ctl(&[
            &root,
            "role",
            "grant-permission",
            "--prefix=true",
            "app",
            "readwrite",
            "app/"
        ])),
        "Role app updated\n"
    );
    assert_eq!(
        ok(ctl(&[&root, "role", "grant-permission", "app", "read", "config"])),
        "Role app updated\n"
    );
    assert_eq!(
        ok(ctl(&[&root, "role", "get", "app"])),
        "Role app\nKV Read:\n\t[app/, app0) (prefix app/)\n\tconfig\nKV Write:\n\t[app/, app0) (prefix app/)\n"
    );
    assert_eq!(ok(ctl(&[&root, "user", "add", "svc:pw"])), "User svc created\n");
    assert_eq!(
        ok(ctl(&[&root, "user", "grant-role", "svc", "app"])),
        "Role app is granted to user svc\n"
    );
    assert_eq!(ok(ctl(&[&root, "user", "get", "svc"])), "User: svc\nRoles: app\n");
    assert_eq!(ok(ctl(&[&root, "user", "list"])), "root\nsvc\n");
    assert_eq!(ok(ctl(&[&root, "role", "list"])), "app\nroot\n");

    let svc = "--user=svc:pw";
    assert_eq!(ok(ctl(&[svc, "put", "app/x", "1"])), "OK\n");
    assert_eq!(ok(ctl(&[svc, "get", "config"])), "");
    assert_eq!(ok(ctl(&[svc, "get", "app/", "--prefix", "--print-value-only"])), "1\n");
    assert!(failed(ctl(&[svc, "put", "config", "x"])).contains("etcdserver: permission denied"));
    assert!(failed(ctl(&[svc, "get", "k"])).contains("etcdserver: permission denied"));
    assert!(failed(ctl(&[svc, "get", "app", "--prefix"])).contains("etcdserver: permission denied"));
    assert!(failed(ctl(&[svc, "del", "k"])).contains("etcdserver: permission denied"));
    assert!(failed(ctl(&[svc, "user", "list"])).contains("etcdserver: permission denied"));
    assert!(failed(ctl(&[svc, "auth", "disable"])).contains("etcdserver: permission denied"));
    // `endpoint health` reads the key "health": permission denied counts as healthy.
    assert!(String::from_utf8_lossy(&ctl(&[svc, "endpoint", "health"]).stderr).contains("is healthy"));
    // Nothing the refused requests asked for happened.
    assert_eq!(ok(ctl(&[&root, "get", "k", "--print-value-only"])), "v\n");
    assert_eq!(ok(ctl(&[&root, "get", "config", "--print-value-only"])), "");

    assert_eq!(
        ok(ctl(&[&root, "role", "revoke-permission", "app", "config"])),
        "Permission of key config is revoked from role app\n"
    );
    let out = lodestone_tests::etcdctl_stdin(
        &eps,
        &[&root, "user", "passwd", "svc", "--interactive=false"],
        "newpw\n",
    );
    assert_eq!(ok(&out), "Password updated\n");
    assert!(failed(ctl(&[svc, "get", "app/x"])).contains("authentication failed"));
    assert_eq!(
        ok(ctl(&["--user=svc:newpw", "get", "app/x", "--print-value-only"])),
        "1\n"
    );
    assert_eq!(
        ok(ctl(&[&root, "user", "revoke-role", "svc", "app"])),
        "Role app is revoked from user svc\n"
    );
    assert_eq!(ok(ctl(&[&root, "user", "delete", "svc"])), "User svc deleted\n");
    assert_eq!(ok(ctl(&[&root, "role", "delete", "app"])), "Role app deleted\n");
    assert_eq!(ok(ctl(&[&root, "auth", "disable"])), "Authentication Disabled\n");
    assert_eq!(ok(ctl(&["get", "k", "--print-value-only"])), "v\n");
}

async fn permissions_cover_every_kv_request(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    enable_auth(&mut cl).await;
    let mut root = as_user(&c, "root", ROOT_PW).await;
    root.put("secret", "s", None).await.unwrap();
    add_user(&mut root, "alice", vec![Permission::read_write("a/").with_prefix()]).await;
    let mut alice = as_user(&c, "alice", "pw").await;
    let denied = |e: etcd_client::Error| assert_status(e, Code::PermissionDenied, "etcdserver: permission denied");

    alice.put("a/1", "v", None).await.unwrap();
    assert_eq!(
        alice
            .get("a/", Some(GetOptions::new().with_prefix()))
            .await
            .unwrap()
            .count(),
        1
    );
    denied(alice.put("b", "v", None).await.unwrap_err());
    denied(alice.get("secret", None).await.unwrap_err());
    denied(alice.get("a", Some(GetOptions::new().with_prefix())).await.unwrap_err());
    denied(
        alice
            .get("a/", Some(GetOptions::new().with_from_key()))
            .await
            .unwrap_err(),
    );
    denied(alice.delete("secret", None).await.unwrap_err());

    // Txn: compares, both branches and nested txns are checked, whichever branch runs.
    let allowed = Txn::new()
        .when([Compare::value("a/1", CompareOp::Equal, "v")])
        .and_then([TxnOp::put("a/2", "v", None)]);
    assert!(alice.txn(allowed).await.unwrap().succeeded());
    let compare = Txn::new()
        .when([Compare::value("secret", CompareOp::Equal, "s")])
        .and_then([TxnOp::put("a/3", "v", None)]);
    denied(alice.txn(compare).await.unwrap_err());
    let untaken = Txn::new()
        .when([Compare::value("a/1", CompareOp::Equal, "v")])
        .and_then([TxnOp::put("a/3", "v", None)])
        .or_else([TxnOp::delete("secret", None)]);
    denied(alice.txn(untaken).await.unwrap_err());

    // A watch outside the grant is created and cancelled at once.
    let mut events = alice.watch("secret", None).await.unwrap();
    let r = events.message().await.unwrap().unwrap();
    assert!(r.created() && r.canceled(), "{r:?}");
    assert_eq!(
        r.cancel_reason(),
        "rpc error: code = PermissionDenied desc = etcdserver: permission denied"
    );
    let mut events = alice
        .watch("a/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let r = events.message().await.unwrap().unwrap();
    assert!(r.created() && !r.canceled(), "{r:?}");
    root.put("a/9", "w", None).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), events.message())
        .await
        .expect("no event")
        .unwrap()
        .unwrap();
    assert_eq!(r.events()[0].kv().unwrap().key(), b"a/9");

    // Nothing the refused requests asked for happened.
    let s = root.get("secret", None).await.unwrap();
    assert_eq!(s.kvs()[0].value(), b"s");
    assert_eq!(s.kvs()[0].version(), 1);
    assert!(root.get("b", None).await.unwrap().kvs().is_empty());
    assert!(root.get("a/3", None).await.unwrap().kvs().is_empty());

    // A revoked permission counts at once.
    root.role_revoke_permission(
        "alice-role",
        "a/",
        Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let mut alice = as_user(&c, "alice", "pw").await;
    denied(alice.get("a/1", None).await.unwrap_err());
}

async fn tokens_and_passwords(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    enable_auth(&mut cl).await;

    // No credentials: the anonymous user every check refuses, and nothing changes.
    let e = cl.put("k", "v", None).await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = cl.get("k", None).await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = cl.user_list().await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");

    // Wrong passwords and unknown users read the same.
    for (user, pw) in [("root", "nope"), ("ghost", "pw"), ("", "")] {
        let e = cl.auth_client().authenticate(user.into(), pw.into()).await.unwrap_err();
        assert_status(
            e,
            Code::InvalidArgument,
            "etcdserver: authentication failed, invalid user ID or password",
        );
    }

    // A forged token.
    let mut forged = raw_kv(&c, 0, Some("forged.1".into())).await;
    assert_grpc(
        forged.put(put("k")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );

    // A real token works until its user's password changes.
    let token = token_of(&c, 0, "root", ROOT_PW).await;
    let mut kv = raw_kv(&c, 0, Some(token.clone())).await;
    kv.put(put("k")).await.unwrap();
    let mut root = as_user(&c, "root", ROOT_PW).await;
    root.user_add("bob", "old", None).await.unwrap();
    root.user_grant_role("bob", "root").await.unwrap();
    let bob_token = token_of(&c, 0, "bob", "old").await;
    let mut bob = raw_kv(&c, 0, Some(bob_token)).await;
    bob.range(RangeRequest {
        key: b"k".to_vec().into(),
        ..Default::default()
    })
    .await
    .unwrap();
    root.user_change_password("bob", "new").await.unwrap();
    let e = cl
        .auth_client()
        .authenticate("bob".into(), "old".into())
        .await
        .unwrap_err();
    assert_status(
        e,
        Code::InvalidArgument,
        "etcdserver: authentication failed, invalid user ID or password",
    );
    as_user(&c, "bob", "new").await.get("k", None).await.unwrap();
}

async fn admin_rpcs_need_the_root_role(kind: Kind) {
    let c = Cluster::start(kind, Options::default()).await;
    let mut cl = c.client().await;
    enable_auth(&mut cl).await;
    let mut root = as_user(&c, "root", ROOT_PW).await;
    add_user(&mut root, "alice", vec![Permission::read_write("a/").with_prefix()]).await;
    let mut alice = as_user(&c, "alice", "pw").await;
    let denied = |e: etcd_client::Error| assert_status(e, Code::PermissionDenied, "etcdserver: permission denied");
    // etcd 3.4 answers its maintenance RPCs' refusal untranslated (fixed in later releases);
    // Lodestone answers etcd's PermissionDenied as everywhere else.
    let maintenance_denied = |e: etcd_client::Error| match kind {
        Kind::Etcd => assert_status(e, Code::Unknown, "auth: permission denied"),
        Kind::Lodestone => denied(e),
    };

    maintenance_denied(alice.defragment().await.unwrap_err());
    maintenance_denied(alice.hash_kv(0).await.unwrap_err());
    maintenance_denied(alice.snapshot().await.map(|_| ()).unwrap_err());
    denied(alice.member_add(["http://127.0.0.1:1"], None).await.unwrap_err());
    denied(alice.user_add("mallory", "pw", None).await.unwrap_err());
    denied(
        alice
            .role_grant_permission("alice-role", Permission::read_write("").with_all_keys())
            .await
            .unwrap_err(),
    );
    denied(alice.user_grant_role("alice", "root").await.unwrap_err());
    denied(alice.auth_disable().await.unwrap_err());
    // Status is for health checks: anyone may ask.
    alice.status().await.unwrap();
    // root may do all of it.
    root.defragment().await.unwrap();
    root.hash_kv(0).await.unwrap();
    root.user_get("alice").await.unwrap();
    assert_eq!(root.user_list().await.unwrap().users(), ["alice", "root"]);
}

async fn client_certificate_cn_is_the_user(kind: Kind) {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "cluster");
    let server = ca.issue("server", "server");
    let alice_cert = ca.issue("alice", "alice");
    let root_cert = ca.issue("root", "root");
    let c = Cluster::start(
        kind,
        Options {
            client_tls: Some(server),
            ..Default::default()
        },
    )
    .await;
    let ep = c.members[0].client_url();
    let tls = |t: &lodestone_tests::pki::TlsFiles| lodestone_tests::connect_options(Some(t));
    let mut cl = connect_with(std::slice::from_ref(&ep), tls(&root_cert)).await;
    enable_auth(&mut cl).await;
    // The certificate's CN is the user: root's certificate needs no password.
    cl.put("k", "v", None).await.unwrap();
    cl.role_add("a").await.unwrap();
    cl.role_grant_permission("a", Permission::read_write("a/").with_prefix())
        .await
        .unwrap();
    cl.user_add("alice", "pw", None).await.unwrap();
    cl.user_grant_role("alice", "a").await.unwrap();
    let mut alice = connect_with(std::slice::from_ref(&ep), tls(&alice_cert)).await;
    alice.put("a/1", "v", None).await.unwrap();
    let e = alice.get("k", None).await.unwrap_err();
    assert_status(e, Code::PermissionDenied, "etcdserver: permission denied");
    // A password login wins over the certificate.
    let mut alice_as_root = connect_with(std::slice::from_ref(&ep), tls(&alice_cert).with_user("root", ROOT_PW)).await;
    alice_as_root.get("k", None).await.unwrap();
    // etcdctl with a certificate and no --user.
    let out = etcdctl(
        std::slice::from_ref(&ep),
        &[
            &format!("--cacert={}", alice_cert.ca.display()),
            &format!("--cert={}", alice_cert.cert.display()),
            &format!("--key={}", alice_cert.key.display()),
            "get",
            "a/1",
            "--print-value-only",
        ],
    );
    assert_eq!(ok(&out), "v\n");
}

async fn jwt_tokens_carry_the_auth_revision(kind: Kind) {
    let keys = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (private, public) = (keys.path().join("jwt.key"), keys.path().join("jwt.pub"));
    std::fs::write(&private, pair.serialize_pem()).unwrap();
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let spec = format!(
        "--auth-token=jwt,pub-key={},priv-key={},sign-method=ES256,ttl=5m",
        public.display(),
        private.display()
    );
    let c = Cluster::start(
        kind,
        Options {
            extra: vec![spec],
            ..Default::default()
        },
    )
    .await;
    let mut cl = c.client().await;
    enable_auth(&mut cl).await;
    let token = token_of(&c, 0, "root", ROOT_PW).await;
    assert_eq!(token.matches('.').count(), 2, "a JWT: {token}");
    let mut kv = raw_kv(&c, 0, Some(token.clone())).await;
    kv.put(put("k")).await.unwrap();
    // Any auth change moves the revision: a token issued before it is refused.
    let mut root = as_user(&c, "root", ROOT_PW).await;
    root.role_add("new").await.unwrap();
    assert_grpc(
        kv.put(put("k")).await,
        Code::InvalidArgument,
        "etcdserver: revision of auth store is old",
    );
    let mut fresh = raw_kv(&c, 0, Some(token_of(&c, 0, "root", ROOT_PW).await)).await;
    fresh.put(put("k")).await.unwrap();
    let mut tampered = raw_kv(&c, 0, Some(format!("{token}x"))).await;
    assert_grpc(
        tampered.put(put("k")).await,
        Code::Unauthenticated,
        "etcdserver: invalid auth token",
    );
}

// ---- Lodestone only ----

/// etcd's later advisories, fixed here but not in etcd 3.4.23: `prev_kv` and lease
/// attachment inside txns, lease key names, from-key watches on a single-key grant, empty
/// permission ranges, and MemberList, Alarm and Lease RPCs without a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_etcds_later_advisories_added() {
    let c = Cluster::start(Kind::Lodestone, Options::default()).await;
    let mut cl = c.client().await;
    enable_auth(&mut cl).await;
    let mut root = as_user(&c, "root", ROOT_PW).await;
    root.put("secret", "s", None).await.unwrap();
    add_user(
        &mut root,
        "alice",
        vec![
            Permission::read_write("a/").with_prefix(),
            Permission::write("w"),
            Permission::read("k"),
        ],
    )
    .await;
    let mut alice = as_user(&c, "alice", "pw").await;
    let denied = |e: etcd_client::Error| assert_status(e, Code::PermissionDenied, "etcdserver: permission denied");

    // Nested txns are checked, in both branches (GHSA-rfx7-8w68-q57q).
    let nested = Txn::new().and_then([TxnOp::txn(Txn::new().and_then([TxnOp::get("secret", None)]))]);
    denied(alice.txn(nested).await.unwrap_err());
    let nested_write = Txn::new().and_then([TxnOp::txn(Txn::new().or_else([TxnOp::put("secret", "x", None)]))]);
    denied(alice.txn(nested_write).await.unwrap_err());

    // prev_kv reads: a write-only key cannot be read through a put or delete.
    alice.put("w", "1", None).await.unwrap();
    denied(
        alice
            .put("w", "2", Some(PutOptions::new().with_prev_key()))
            .await
            .unwrap_err(),
    );
    let t = Txn::new().and_then([TxnOp::put("w", "3", Some(PutOptions::new().with_prev_key()))]);
    denied(alice.txn(t).await.unwrap_err());
    denied(
        alice
            .delete("w", Some(etcd_client::DeleteOptions::new().with_prev_key()))
            .await
            .unwrap_err(),
    );

    // Leases: joining a lease that holds someone else's key, revoking it, or listing its keys.
    let lease = root.lease_grant(60, None).await.unwrap().id();
    root.put("secret", "s", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    denied(
        alice
            .put("a/x", "v", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap_err(),
    );
    let t = Txn::new().and_then([TxnOp::put("a/x", "v", Some(PutOptions::new().with_lease(lease)))]);
    denied(alice.txn(t).await.unwrap_err());
    denied(alice.lease_revoke(lease).await.unwrap_err());
    denied(
        alice
            .lease_time_to_live(lease, Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()))
            .await
            .unwrap_err(),
    );
    alice.lease_time_to_live(lease, None).await.unwrap();
    let own = alice.lease_grant(60, None).await.unwrap().id();
    alice
        .put("a/y", "v", Some(PutOptions::new().with_lease(own)))
        .await
        .unwrap();
    alice.lease_revoke(own).await.unwrap();
    assert!(root.get("a/y", None).await.unwrap().kvs().is_empty());
    assert_eq!(root.get("secret", None).await.unwrap().kvs()[0].lease(), lease);

    // A single-key grant does not cover a from-key watch (GHSA-xg4h-6gfc-h4m8).
    let mut events = alice
        .watch("k", Some(WatchOptions::new().with_from_key()))
        .await
        .unwrap();
    let r = events.message().await.unwrap().unwrap();
    assert!(r.canceled(), "{r:?}");
    let mut events = alice.watch("k", None).await.unwrap();
    assert!(!events.message().await.unwrap().unwrap().canceled());

    // Empty permission ranges are refused (etcd #15621).
    let e = root
        .role_grant_permission("alice-role", Permission::read("b").with_range_end("a"))
        .await
        .unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: invalid auth management");

    // Without a user: no member list, alarms or leases.
    let e = cl.member_list().await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = cl
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await
        .unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = cl.lease_grant(60, None).await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    let e = cl.leases().await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    // With one they are fine; changing alarms needs root.
    alice.member_list().await.unwrap();
    alice
        .alarm(etcd_client::AlarmAction::Get, etcd_client::AlarmType::None, None)
        .await
        .unwrap();
    denied(
        alice
            .alarm(
                etcd_client::AlarmAction::Deactivate,
                etcd_client::AlarmType::Nospace,
                None,
            )
            .await
            .unwrap_err(),
    );
    // Compaction needs a user, any user.
    let e = cl.compact(1, None).await.unwrap_err();
    assert_status(e, Code::InvalidArgument, "etcdserver: user name is empty");
    alice.compact(1, None).await.unwrap();

    // v3lock and v3election: a recipe on a name needs the permissions of its keys (`<name>/`).
    let session = alice.lease_grant(60, None).await.unwrap().id();
    let opts = || Some(etcd_client::LockOptions::new().with_lease(session));
    denied(alice.lock("b", opts()).await.unwrap_err());
    let held = alice.lock("a", opts()).await.unwrap();
    assert!(held.key().starts_with(b"a/"));
    denied(alice.unlock("secret").await.unwrap_err());
    alice.unlock(held.key()).await.unwrap();
    denied(alice.campaign("b", "me", session).await.unwrap_err());
    denied(alice.leader("b").await.unwrap_err());
    let e = alice.leader("a").await.unwrap_err();
    assert_status(e, Code::Unknown, "election: no leader");
}

/// AuthStatus (etcd 3.5's RPC), auth that survives a restart, and a simple token issued by
/// one member that every member accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_is_replicated_and_durable() {
    let mut c = Cluster::start(Kind::Lodestone, Options::members(3)).await;
    let mut cl = c.client().await;
    let mut status = AuthClient::new(channel(&c, 1).await);
    let s = status.auth_status(AuthStatusRequest {}).await.unwrap().into_inner();
    assert!(!s.enabled);
    let before = s.auth_revision;
    enable_auth(&mut cl).await;
    let s = status.auth_status(AuthStatusRequest {}).await.unwrap().into_inner();
    assert!(s.enabled);
    assert_eq!(s.auth_revision, before + 4, "user add, role add, grant, enable");

    // A token from member 2 works on members 1 and 3 at once.
    let token = token_of(&c, 1, "root", ROOT_PW).await;
    for i in [0, 2, 1] {
        raw_kv(&c, i, Some(token.clone())).await.put(put("k")).await.unwrap();
    }
    let mut anonymous = raw_kv(&c, 2, None).await;
    assert_grpc(
        anonymous.put(put("k")).await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );

    // A restarted member keeps auth (its tokens are gone: clients authenticate again).
    c.kill(2);
    c.restart(2);
    c.wait_healthy(Duration::from_secs(20)).await;
    let mut anonymous = raw_kv(&c, 2, None).await;
    assert_grpc(
        anonymous
            .range(RangeRequest {
                key: b"k".to_vec().into(),
                ..Default::default()
            })
            .await,
        Code::InvalidArgument,
        "etcdserver: user name is empty",
    );
    let mut again = raw_kv(&c, 2, Some(token_of(&c, 2, "root", ROOT_PW).await)).await;
    again.put(put("k")).await.unwrap();
    let s = AuthClient::new(channel(&c, 2).await)
        .auth_status(AuthStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.enabled);
    assert_eq!(s.auth_revision, before + 4);
}
