//! Test fixtures: the shipped samples as resources, member views, and a verifier standing in
//! for the Kubernetes API server (kube's tower-test mock pattern).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};

use crate::controller::Context;
use crate::crd::LodestoneCluster;
use crate::members::{MemberHealth, MemberProbe, MembersView, ObservedMember};
use crate::metrics::Metrics;

pub const UID: &str = "6f1c2d3e-0000-4000-8000-00000000c1a5";
pub const GENERATION: i64 = 2;

/// A sample from `deploy/samples`, as the API server would return it.
pub fn sample(file: &str) -> LodestoneCluster {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/samples")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| panic!("read {}", path.display()));
    let mut cluster: LodestoneCluster = serde_saphyr::from_str(&text).expect("sample parses");
    cluster.metadata.uid = Some(UID.to_string());
    cluster.metadata.generation = Some(GENERATION);
    cluster.metadata.namespace.get_or_insert_with(|| "default".to_string());
    cluster
}

/// A formed cluster's view: members named `names` with IDs 0xa1, 0xa2, ...; cluster ID 0xc1a5;
/// `leader` indexes `names` (`None`: no member knows a leader); `unreachable` members did not
/// answer Status.
pub fn view(names: &[&str], leader: Option<usize>, unreachable: &[&str]) -> MembersView {
    let leader_id = leader.map(|i| 0xa1 + i as u64);
    let members: Vec<ObservedMember> = names
        .iter()
        .enumerate()
        .map(|(i, name)| ObservedMember {
            id: 0xa1 + i as u64,
            name: name.to_string(),
            peer_urls: vec![format!("http://{name}:2380")],
            client_urls: vec![format!("http://{name}:2379")],
            learner: false,
            status: (!unreachable.contains(name)).then(|| MemberHealth {
                leader: leader_id.unwrap_or(0),
                applied_index: 100,
                raft_term: 2,
                revision: 42,
                version: "3.4.0".to_string(),
                errors: Vec::new(),
            }),
        })
        .collect();
    MembersView {
        cluster_id: Some(0xc1a5),
        leader: leader_id,
        revision: Some(42),
        version: Some("3.4.0".to_string()),
        members,
    }
}

/// A probe that returns a fixed view and counts its calls.
#[derive(Default)]
pub struct FakeProbe {
    pub view: MembersView,
    pub calls: AtomicUsize,
}

impl MemberProbe for FakeProbe {
    fn observe(
        &self,
        _endpoints: Vec<String>,
        _tls: Option<crate::members::ClientTls>,
    ) -> BoxFuture<'static, MembersView> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let view = self.view.clone();
        Box::pin(async move { view })
    }
}

/// Membership calls that succeed (a learner is added as id 0xabc) and are recorded as text.
#[derive(Default)]
pub struct FakeMembers {
    pub calls: std::sync::Mutex<Vec<String>>,
    /// Promotions answer NotCaughtUp this many times first.
    pub not_caught_up: AtomicUsize,
}

impl FakeMembers {
    fn record(&self, call: String) {
        self.calls.lock().expect("calls").push(call);
    }
}

impl crate::members::Members for FakeMembers {
    fn add_learner(
        &self,
        endpoints: Vec<String>,
        _tls: Option<crate::members::ClientTls>,
        peer_url: String,
    ) -> BoxFuture<'static, Result<u64, crate::members::ChangeError>> {
        self.record(format!("add_learner {peer_url} via {}", endpoints.join(",")));
        Box::pin(async { Ok(0xabc) })
    }

    fn promote(
        &self,
        _endpoints: Vec<String>,
        _tls: Option<crate::members::ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), crate::members::ChangeError>> {
        self.record(format!("promote {id:x}"));
        let lagging = self
            .not_caught_up
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        Box::pin(async move {
            if lagging {
                Err(crate::members::ChangeError::NotCaughtUp)
            } else {
                Ok(())
            }
        })
    }

    fn remove(
        &self,
        _endpoints: Vec<String>,
        _tls: Option<crate::members::ClientTls>,
        id: u64,
    ) -> BoxFuture<'static, Result<(), crate::members::ChangeError>> {
        self.record(format!("remove {id:x}"));
        Box::pin(async { Ok(()) })
    }

    fn move_leader(
        &self,
        leader_endpoint: String,
        _tls: Option<crate::members::ClientTls>,
        to: u64,
    ) -> BoxFuture<'static, Result<(), crate::members::ChangeError>> {
        self.record(format!("move_leader {leader_endpoint} to {to:x}"));
        Box::pin(async { Ok(()) })
    }
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Plays the API server: each `expect` takes the next request the controller sends, checks
/// its method and path, and answers it.
pub struct ApiServerVerifier(Handle);

/// A request the controller made.
pub struct Seen {
    pub path: String,
    pub body: Value,
    respond: tower_test::mock::SendResponse<Response<Body>>,
}

impl Seen {
    pub fn reply(self, status: StatusCode, body: Value) {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("json")))
            .expect("response");
        self.respond.send_response(response);
    }

    /// Answers with the request's own body, as the API server does for an apply or create.
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(StatusCode::OK, body);
    }

    pub fn not_found(self) {
        self.reply(
            StatusCode::NOT_FOUND,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        );
    }
}

impl ApiServerVerifier {
    /// The next request, which must have this method and a path starting with `path`.
    pub async fn expect(&mut self, method: &str, path: &str) -> Seen {
        let (request, respond) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {method} {path}"))
            .unwrap_or_else(|| panic!("client dropped before {method} {path}"));
        let seen_method = request.method().to_string();
        let seen_path = request.uri().to_string();
        assert_eq!(seen_method, method, "unexpected request {seen_method} {seen_path}");
        assert!(seen_path.starts_with(path), "expected {method} {path}, got {seen_path}");
        let bytes = request.into_body().collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Seen {
            path: seen_path,
            body,
            respond,
        }
    }

    /// Asserts the controller sends nothing more for a while.
    pub async fn expect_silence(&mut self) {
        if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(300), self.0.next_request()).await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

/// A controller context whose client talks to the returned verifier.
pub fn context(probe: Arc<FakeProbe>) -> (Arc<Context>, ApiServerVerifier) {
    context_with(probe, Arc::new(FakeMembers::default()))
}

/// [`context`] with membership calls recorded by `members`.
pub fn context_with(probe: Arc<FakeProbe>, members: Arc<FakeMembers>) -> (Arc<Context>, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let platform = Arc::new(crate::platform::KubePlatform::new(client, "test".to_string()));
    let ctx = Context::new(platform, probe, members, Arc::new(Metrics::new()));
    (Arc::new(ctx), ApiServerVerifier(handle))
}
