//! `lodestone-operator`: `run` the controller, or print the `crd` YAML.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lodestone_operator::controller::{self, Context};
use lodestone_operator::leader::Election;
use lodestone_operator::members::{EtcdMembers, EtcdProbe};
use lodestone_operator::metrics::Metrics;
use lodestone_operator::platform::KubePlatform;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser, Debug)]
#[command(
    name = "lodestone-operator",
    version,
    about = "Runs Lodestone clusters on Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions as YAML.
    Crd,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of the health and metrics listener.
    #[arg(long, env = "LODESTONE_OPERATOR_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Watch only this namespace (all namespaces when unset).
    #[arg(long, env = "LODESTONE_OPERATOR_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Elect a leader among replicas through a Lease; turn off only for a single replica.
    #[arg(long, env = "LODESTONE_OPERATOR_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LODESTONE_OPERATOR_LEASE_NAME", default_value = "lodestone-operator")]
    lease_name: String,
    /// Namespace of the leader-election Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// This replica's identity in the election.
    #[arg(long, env = "POD_NAME", default_value = "lodestone-operator")]
    identity: String,
    /// Log format: text or json.
    #[arg(long, env = "LODESTONE_OPERATOR_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", lodestone_operator::crd::all_yaml()?);
            Ok(())
        }
        Command::Run(args) => run(args).await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    if args.log_format == "json" {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "starting lodestone-operator");

    let shutdown = CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let metrics = Arc::new(Metrics::new());
    tracker.spawn({
        let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
        async move {
            if let Err(err) = lodestone_operator::http::serve(args.metrics_addr, metrics, shutdown.clone()).await {
                tracing::error!(error = %err, "health and metrics listener failed");
                shutdown.cancel();
            }
        }
    });
    tracker.spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    });

    let client = kube::Client::try_default()
        .await
        .context("failed to configure the Kubernetes client (in-cluster or KUBECONFIG)")?;
    let platform = Arc::new(KubePlatform::new(client.clone(), args.identity.clone()));
    let ctx = Arc::new(Context::new(
        platform,
        Arc::new(EtcdProbe),
        Arc::new(EtcdMembers),
        metrics.clone(),
    ));

    let mut result = Ok(());
    if args.leader_elect {
        let mut election = Election::start(client.clone(), &args.lease_namespace, &args.lease_name, &args.identity)
            .await
            .context("failed to start leader election")?;
        tracing::info!(lease = %args.lease_name, identity = %args.identity, "waiting to become leader");
        let leading = tokio::select! {
            acquired = election.acquired() => acquired,
            _ = shutdown.cancelled() => false,
        };
        if leading {
            tracing::info!("became leader");
            metrics.leader.set(1);
            let controller_stop = shutdown.child_token();
            let controller = tokio::spawn(controller::run(
                ctx,
                client.clone(),
                args.watch_namespace,
                controller_stop.clone(),
            ));
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = election.lost() => {
                    // Another replica may already reconcile: stop at once and let the pod
                    // restart into the election.
                    result = Err(anyhow::anyhow!("lost the leader lease"));
                }
            }
            controller_stop.cancel();
            let _ = controller.await;
            metrics.leader.set(0);
        }
        election.release().await;
    } else {
        metrics.leader.set(1);
        controller::run(ctx, client, args.watch_namespace, shutdown.clone()).await;
    }
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
