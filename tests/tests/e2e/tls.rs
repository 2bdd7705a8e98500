//! TLS on the client and peer URLs, side by side with etcd 3.4: certificates signed by a
//! trusted CA, client certificate authentication (with etcdctl's `--cacert --cert --key`
//! and the etcd-client crate), members that talk over TLS and refuse a member whose
//! certificate another CA signed, self-signed certificates (`--auto-tls`,
//! `--peer-auto-tls`); and, Lodestone only, a renewed certificate served without a restart.

use std::process::Output;
use std::time::{Duration, Instant};

use etcd_client::MemberAddOptions;
use lodestone_tests::etcdctl_ok as ok;
use lodestone_tests::pki::{Ca, TlsFiles};
use lodestone_tests::{Cluster, Kind, Options, connect_options, etcdctl, https_get};

lodestone_tests::compat!(
    clients_need_a_certificate_signed_by_the_trusted_ca,
    health_is_served_over_https_on_client_and_metrics_urls,
    members_talk_over_tls_and_refuse_a_stranger,
    auto_tls_serves_self_signed_certificates
);

fn tls_args(t: &TlsFiles) -> Vec<String> {
    vec![
        format!("--cacert={}", t.ca.display()),
        format!("--cert={}", t.cert.display()),
        format!("--key={}", t.key.display()),
    ]
}

fn ctl(endpoint: &str, tls: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = tls.iter().map(String::as_str).collect();
    all.push("--dial-timeout=2s");
    all.extend_from_slice(args);
    etcdctl(&[endpoint.to_string()], &all)
}

async fn clients_need_a_certificate_signed_by_the_trusted_ca(kind: Kind) {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "cluster");
    let rogue = Ca::new(pki.path(), "rogue");
    let server = ca.issue("server", "server");
    let client = ca.issue("client", "client");
    let stranger = rogue.issue("stranger", "client");
    let c = Cluster::start(
        kind,
        Options {
            client_tls: Some(server),
            ..Default::default()
        },
    )
    .await;
    let ep = c.members[0].client_url();
    assert!(ep.starts_with("https://"));

    // etcdctl with the CA and a client certificate the CA signed.
    assert_eq!(ok(ctl(&ep, &tls_args(&client), &["put", "k", "v"])).trim(), "OK");
    assert_eq!(
        ok(ctl(&ep, &tls_args(&client), &["get", "k", "--print-value-only"])).trim(),
        "v"
    );

    // Refused: no client certificate, one from another CA, or no TLS at all.
    let ca_only = vec![format!("--cacert={}", client.ca.display())];
    for (what, tls) in [
        ("no client certificate", ca_only),
        (
            "a certificate another CA signed",
            vec![
                format!("--cacert={}", client.ca.display()),
                format!("--cert={}", stranger.cert.display()),
                format!("--key={}", stranger.key.display()),
            ],
        ),
        ("plain text", vec![]),
    ] {
        let plain_ep = ep.replace("https://", "http://");
        let target = if tls.is_empty() { &plain_ep } else { &ep };
        let out = ctl(target, &tls, &["put", "k", "stranger"]);
        assert!(!out.status.success(), "{what}: etcdctl put succeeded");
    }
    // The etcd-client crate: with the client certificate it works, without one it is refused.
    let mut cl = c.client().await;
    assert_eq!(cl.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    let anonymous = etcd_client::Client::connect(
        [ep.clone()],
        Some(
            connect_options(None).with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&client.ca).unwrap())),
            ),
        ),
    )
    .await;
    if let Ok(mut anonymous) = anonymous {
        assert!(anonymous.put("k", "anonymous", None).await.is_err());
    }
    // Nothing the refused clients sent reached the store.
    let r = cl.get("k", None).await.unwrap();
    assert_eq!((r.kvs()[0].value(), r.kvs()[0].version()), (&b"v"[..], 1));
}

async fn members_talk_over_tls_and_refuse_a_stranger(kind: Kind) {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "peers");
    let rogue = Ca::new(pki.path(), "rogue");
    let peer = ca.issue("peer", "member");
    let stranger = rogue.issue("stranger", "member");
    let mut c = Cluster::start(
        kind,
        Options {
            peer_tls: Some(peer.clone()),
            ..Options::members(3)
        },
    )
    .await;
    assert!(c.members[0].peer_url().starts_with("https://"));
    // Replication works over TLS: a write through one member is read through another.
    c.client_of(0).await.put("over", "tls", None).await.unwrap();
    let r = c.client_of(2).await.get("over", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), b"tls");

    // A member whose certificate another CA signed is added, then started: the others
    // refuse its connections, so it never joins.
    let mut cl = c.client().await;
    let slot = c.add_member_slot();
    let url = c.members[slot].peer_url();
    // etcd refuses changes until every member has been connected for a few seconds
    // ("unhealthy cluster"), so this retries that answer.
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        match cl
            .member_add([url.as_str()], Some(MemberAddOptions::new().with_is_learner()))
            .await
        {
            Ok(a) => break a,
            Err(e) if e.to_string().contains("unhealthy cluster") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("member add: {e}"),
        }
    };
    let id = added.member().unwrap().id();
    let ic: Vec<String> = added
        .member_list()
        .iter()
        .flat_map(|m| {
            let name = if m.id() == id {
                c.members[slot].name.clone()
            } else {
                m.name().to_string()
            };
            m.peer_urls()
                .iter()
                .map(move |u| format!("{name}={u}"))
                .collect::<Vec<_>>()
        })
        .collect();
    c.members[slot].set_flag("--peer-cert-file", &stranger.cert.display().to_string());
    c.members[slot].set_flag("--peer-key-file", &stranger.key.display().to_string());
    c.start_joining(slot, &ic.join(","));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let list = cl.member_list().await.unwrap();
    let joined = list.members().iter().find(|m| m.id() == id).unwrap();
    assert!(
        joined.name().is_empty() && joined.client_urls().is_empty(),
        "the stranger started as a member: {joined:?}"
    );
    let logs: String = c.members[..slot].iter().map(|m| m.log()).collect();
    assert!(
        logs.contains("rejected connection"),
        "no member logged the refused connection"
    );
    // The cluster serves on, and the stranger holds none of its data.
    cl.put("after", "stranger", None).await.unwrap();
    let plain = format!("127.0.0.1:{}", c.members[slot].client_port);
    let out = etcdctl(&[plain], &["--dial-timeout=1s", "--command-timeout=2s", "get", "over"]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("tls"),
        "the stranger served the cluster's data"
    );
}

async fn auto_tls_serves_self_signed_certificates(kind: Kind) {
    let mut c = Cluster::prepare(
        kind,
        Options {
            extra: vec!["--auto-tls".into(), "--peer-auto-tls".into()],
            ..Options::members(3)
        },
    );
    for m in &mut c.members {
        m.client_https = true;
        m.peer_https = true;
    }
    let initial: Vec<String> = c
        .members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect();
    for m in &mut c.members {
        let (client, peer) = (m.client_url(), m.peer_url());
        m.set_flag("--listen-client-urls", &client);
        m.set_flag("--advertise-client-urls", &client);
        m.set_flag("--listen-peer-urls", &peer);
        m.set_flag("--initial-advertise-peer-urls", &peer);
        m.set_flag("--initial-cluster", &initial.join(","));
    }
    c.spawn_all();
    let insecure = vec![
        "--insecure-transport=false".to_string(),
        "--insecure-skip-tls-verify".to_string(),
    ];
    let ep = c.members[0].client_url();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ctl(&ep, &insecure, &["put", "auto", "tls"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the auto-TLS cluster never served: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            c.members[0].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Another member, reached over its own self-signed certificate, has the write.
    let other = c.members[2].client_url();
    let got = ok(ctl(&other, &insecure, &["get", "auto", "--print-value-only"]));
    assert_eq!(got.trim(), "tls");
    // A client that checks certificates refuses the self-signed one.
    let out = ctl(&ep, &[], &["get", "auto"]);
    assert!(
        !out.status.success(),
        "a verifying client accepted a self-signed certificate"
    );
    for side in ["client", "peer"] {
        let dir = c.members[0].data_dir.join("fixtures").join(side);
        assert!(
            dir.join("cert.pem").exists() && dir.join("key.pem").exists(),
            "{side} certificate kept in {dir:?}"
        );
    }
}

/// Lodestone only: a certificate renewed on disk is what the next connection gets, with no
/// restart (etcd reads its key pair at each handshake too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let pki = tempfile::tempdir().unwrap();
    let first = Ca::new(pki.path(), "first");
    let second = Ca::new(pki.path(), "second");
    let server = first.issue("server", "server");
    let client = first.issue("client", "client");
    let c = Cluster::start(
        Kind::Lodestone,
        Options {
            client_tls: Some(server.clone()),
            ..Default::default()
        },
    )
    .await;
    let ep = c.members[0].client_url();
    let trusting = |ca: &Ca| {
        vec![
            format!("--cacert={}", ca.ca_file().display()),
            format!("--cert={}", client.cert.display()),
            format!("--key={}", client.key.display()),
        ]
    };
    ok(ctl(&ep, &trusting(&first), &["put", "k", "1"]));
    assert!(!ctl(&ep, &trusting(&second), &["get", "k"]).status.success());

    // Renew: the same files now hold a certificate the second CA signed.
    let renewed = second.issue("renewed", "server");
    std::fs::copy(&renewed.key, &server.key).unwrap();
    std::fs::copy(&renewed.cert, &server.cert).unwrap();
    ok(ctl(&ep, &trusting(&second), &["put", "k", "2"]));
    assert!(!ctl(&ep, &trusting(&first), &["get", "k"]).status.success());
}

/// Lodestone only: a trusted CA file replaced on disk (a CA rotation) decides which client
/// certificates the next connection accepts, with no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_trusted_ca_is_used_without_a_restart() {
    let pki = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(pki.path(), "old");
    let new_ca = Ca::new(pki.path(), "new");
    let server = old_ca.issue("server", "server");
    let old_client = old_ca.issue("old-client", "client");
    let new_client = new_ca.issue("new-client", "client");
    // The member's trusted CA file is a copy the test can replace.
    let trusted = pki.path().join("trusted.pem");
    std::fs::copy(old_ca.ca_file(), &trusted).unwrap();
    let c = Cluster::start(
        Kind::Lodestone,
        Options {
            client_tls: Some(TlsFiles {
                ca: trusted.clone(),
                ..server
            }),
            ..Default::default()
        },
    )
    .await;
    let ep = c.members[0].client_url();
    let as_client = |t: &TlsFiles| {
        vec![
            format!("--cacert={}", old_ca.ca_file().display()),
            format!("--cert={}", t.cert.display()),
            format!("--key={}", t.key.display()),
        ]
    };
    ok(ctl(&ep, &as_client(&old_client), &["put", "k", "1"]));
    assert!(!ctl(&ep, &as_client(&new_client), &["put", "k", "2"]).status.success());

    std::fs::copy(new_ca.ca_file(), &trusted).unwrap();
    ok(ctl(&ep, &as_client(&new_client), &["put", "k", "3"]));
    assert!(!ctl(&ep, &as_client(&old_client), &["put", "k", "4"]).status.success());
    let got = ok(ctl(&ep, &as_client(&new_client), &["get", "k", "--print-value-only"]));
    assert_eq!(got.trim(), "3", "only the accepted clients wrote");
}

/// `/health` on an https client URL and on an https `--listen-metrics-urls` (which takes the
/// client certificate and its rules, as etcd's does), over HTTP/1.1 as curl and probes speak it.
async fn health_is_served_over_https_on_client_and_metrics_urls(kind: Kind) {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "cluster");
    let server = ca.issue("server", "server");
    let client = ca.issue("client", "client");
    let mut c = Cluster::prepare(
        kind,
        Options {
            client_tls: Some(server),
            ..Default::default()
        },
    );
    let metrics = format!("https://127.0.0.1:{}", c.members[0].metrics_port);
    c.members[0].set_flag("--listen-metrics-urls", &metrics);
    c.launch().await;
    for base in [c.members[0].client_url(), metrics] {
        let (status, body) = https_get(&format!("{base}/health"), &client, true)
            .await
            .unwrap_or_else(|e| panic!("{base}/health: {e}"));
        assert_eq!(status, 200, "{base}/health: {body}");
        assert!(body.contains("\"health\":\"true\""), "{base}/health: {body}");
        // Client certificate authentication covers these endpoints too.
        match https_get(&format!("{base}/health"), &client, false).await {
            Err(_) => {}
            Ok((status, body)) => panic!("{base}/health without a certificate answered {status}: {body}"),
        }
    }
}

/// Lodestone only: `lodestone snapshot save` (the operator's backup Job) saves from https
/// client URLs with `--cacert --cert --key`, and refuses to trust a server it cannot check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_save_over_tls_checks_the_server_and_presents_a_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "cluster");
    let rogue = Ca::new(pki.path(), "rogue");
    let server = ca.issue("server", "server");
    let client = ca.issue("client", "client");
    let c = Cluster::start(
        Kind::Lodestone,
        Options {
            client_tls: Some(server),
            ..Default::default()
        },
    )
    .await;
    let ep = c.members[0].client_url();
    let mut cl = c.client().await;
    cl.put("k", "v", None).await.unwrap();
    let out = pki.path().join("snapshots");
    let save = |file: &str, flags: &[String]| {
        std::process::Command::new(lodestone_tests::lodestone_bin())
            .args(["snapshot", "save", out.join(file).to_str().unwrap(), "--endpoints", &ep])
            .args(flags)
            .output()
            .unwrap()
    };

    let saved = save("ok.db", &tls_args(&client));
    assert!(saved.status.success(), "{}", String::from_utf8_lossy(&saved.stderr));
    let report: serde_json::Value = serde_json::from_slice(&saved.stdout).unwrap();
    assert!(report["revision"].as_i64().unwrap() >= 2, "{report}");

    // No CA to check the server against: refused before dialing, saying what to give.
    let no_ca = save("no-ca.db", &[]);
    assert!(!no_ca.status.success());
    assert!(
        String::from_utf8_lossy(&no_ca.stderr).contains("--cacert"),
        "{}",
        String::from_utf8_lossy(&no_ca.stderr)
    );
    // A server another CA signed is not trusted; no client certificate is refused by the
    // server. Neither leaves a file.
    let mut wrong_ca = tls_args(&client);
    wrong_ca[0] = format!("--cacert={}", rogue.ca_file().display());
    let ca_only = vec![format!("--cacert={}", client.ca.display())];
    for (what, flags) in [("an untrusted server", wrong_ca), ("no client certificate", ca_only)] {
        let refused = save("refused.db", &flags);
        assert!(!refused.status.success(), "{what}: saved");
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("no endpoint streamed a snapshot"),
            "{what}: {}",
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(!out.join("refused.db").exists(), "{what}");
    }
}
