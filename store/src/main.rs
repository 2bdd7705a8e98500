//! The `lodestone` binary: parses etcd-named flags, starts a member, and stops it cleanly on
//! SIGTERM or SIGINT.

use clap::Parser;
use lodestone::config::Config;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's allocator: the write path allocates and frees many small
/// buffers on several threads (gRPC frames, entries, RocksDB batches), and glibc's malloc
/// spent a tenth of a member's CPU in its free-list upkeep (`malloc_consolidate`,
/// `unlink_chunk`) under a 64-client put load.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn init_logging(cfg: &Config) {
    let filter = EnvFilter::try_from_env("LODESTONE_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{},openraft=warn", cfg.log_level)));
    // Colours only on a terminal: logs redirected to files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if cfg.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn signals(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = int.recv() => tracing::info!("received SIGINT"),
    }
    token.cancel();
}

/// `lodestone snapshot restore|save ...`: a tool, then exit.
fn snapshot_tool() -> ! {
    use lodestone::restore::{SnapshotCli, SnapshotCommand, restore};
    let args = std::env::args().enumerate().filter(|(i, _)| *i != 1).map(|(_, a)| a);
    let cli = SnapshotCli::parse_from(args);
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    match cli.command {
        SnapshotCommand::Restore(r) => match restore(&r) {
            Ok(done) if !done.restored => {
                println!(
                    "nothing restored: {} has data or the member joins an existing cluster",
                    done.data_dir.display()
                );
                std::process::exit(0)
            }
            Ok(done) => {
                println!(
                    "restored snapshot {} (revision {}) into {}; start the member with the same --name, --initial-cluster, \
                     --initial-cluster-token and --initial-advertise-peer-urls and --initial-cluster-state new",
                    r.file.display(),
                    done.revision,
                    done.data_dir.display()
                );
                std::process::exit(0)
            }
            Err(e) => {
                eprintln!("lodestone snapshot restore: {e}");
                std::process::exit(1)
            }
        },
        SnapshotCommand::Save(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            match runtime.block_on(lodestone::backup::save(&args)) {
                Ok(saved) => {
                    let json = serde_json::to_string(&saved).expect("json");
                    println!("{json}");
                    if let Some(report) = &args.report
                        && let Err(e) = std::fs::write(report, &json)
                    {
                        eprintln!(
                            "lodestone snapshot save: saved, but cannot write the report to {}: {e}",
                            report.display()
                        );
                        std::process::exit(1)
                    }
                    std::process::exit(0)
                }
                Err(e) => {
                    eprintln!("lodestone snapshot save: {e}");
                    std::process::exit(1)
                }
            }
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("snapshot") {
        snapshot_tool();
    }
    let cfg = Config::parse();
    init_logging(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lodestone")
        .build()
        .expect("start runtime");
    let code = rt.block_on(async {
        let token = CancellationToken::new();
        tokio::spawn(signals(token.clone()));
        match lodestone::api::serve::run(cfg, token).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("lodestone: {e}");
                1
            }
        }
    });
    std::process::exit(code);
}
