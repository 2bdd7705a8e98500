//! etcd's default listeners, side by side with etcd 3.4: with no `--listen-metrics-urls`,
//! a member opens no port besides its client and peer URLs and serves its HTTP endpoints
//! (`/health`, `/version`, `/metrics`) on the client URLs, so three members started with
//! etcd's flags on one host all come up. (With the flag, the extra listener serves the same
//! endpoints: `cluster.rs`.)

use lodestone_tests::{Cluster, Kind, Options, http_get};

lodestone_tests::compat!(three_members_on_one_host_serve_http_on_their_client_urls);

async fn three_members_on_one_host_serve_http_on_their_client_urls(kind: Kind) {
    let c = Cluster::start(
        kind,
        Options {
            metrics_listener: false,
            ..Options::members(3)
        },
    )
    .await;
    c.wait_published().await;
    for m in &c.members {
        assert!(
            m.flag("--listen-metrics-urls").is_none(),
            "the harness passed a metrics listener"
        );
        let url = m.client_url();
        let (code, body) = http_get(&format!("{url}/health"));
        assert_eq!(code, 200, "{}: /health answered {body}", m.name);
        let health: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(health["health"], "true", "{body}");

        let (code, body) = http_get(&format!("{url}/version"));
        assert_eq!(code, 200);
        let version: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            version["etcdserver"].as_str().is_some_and(|v| v.starts_with("3.4"))
                && version["etcdcluster"].as_str().is_some_and(|v| v.starts_with("3.4")),
            "{body}"
        );

        let (code, text) = http_get(&format!("{url}/metrics"));
        assert_eq!(code, 200);
        assert!(
            text.contains("etcd_server_has_leader 1"),
            "{}",
            &text[..text.len().min(500)]
        );
    }
    // gRPC still works on the same port.
    let mut cl = c.client().await;
    cl.put("k", "v", None).await.unwrap();
    assert_eq!(cl.get("k", None).await.unwrap().kvs()[0].value(), b"v");
}
