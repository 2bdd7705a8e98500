//! `lodestone-faults`: the fault suite's long run. Runs `--rounds` fresh clusters, each
//! under traffic through `--cycles` random faults, checks every history, and prints the
//! figures: cycles survived, operations checked, violations. Exits non-zero on any
//! violation. Needs root (network namespaces). `--lose-unsynced` puts every member's data on
//! a lazy filesystem that forgets unsynced writes whenever the member is killed (build
//! `lodestone-lazyfs` too: `cargo build -p lodestone-lazyfs`). `--peer-tls on|off` has the
//! members talk over TLS or not; by default each round's seed decides. `--hard-links on|off`
//! (with `--lose-unsynced`) has the lazy filesystem make hard links or refuse them, so that
//! every snapshot build writes the whole file; by default one round in four refuses them.
//!
//! ```sh
//! cargo build --bin lodestone && \
//!   cargo run -p lodestone-tests --bin lodestone-faults -- --rounds 10 --cycles 20
//! ```

use std::time::Instant;

use lodestone_tests::robustness::{Config, run};

fn usage() -> ! {
    eprintln!(
        "usage: lodestone-faults [--rounds N (default 5)] [--cycles N (default 20)] [--seed S] \
         [--rate OPS_PER_S (default 150)] [--clients N (default 6)] [--members N (default 3)] \
         [--lose-unsynced] [--peer-tls on|off] [--hard-links on|off] [--quiet]"
    );
    std::process::exit(2)
}

/// The value of a switch: `on` or `off`.
fn on_off(value: Option<String>) -> bool {
    match value.as_deref() {
        Some("on") => true,
        Some("off") => false,
        _ => usage(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut rounds = 5u64;
    let mut config = Config {
        cycles: 20,
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs()),
        ..Config::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| usage())
        };
        match flag.as_str() {
            "--rounds" => rounds = value(),
            "--cycles" => config.cycles = value() as usize,
            "--seed" => config.seed = value(),
            "--rate" => config.rate = value() as u32,
            "--clients" => config.clients = value() as usize,
            "--members" => config.members = value().clamp(1, 5) as usize,
            "--lose-unsynced" => config.lose_unsynced = true,
            "--peer-tls" => config.peer_tls = Some(on_off(args.next())),
            "--hard-links" => config.hard_links = Some(on_off(args.next())),
            "--quiet" => config.progress = false,
            _ => usage(),
        }
    }
    if config.hard_links == Some(false) && !config.lose_unsynced {
        eprintln!("lodestone-faults: --hard-links off needs --lose-unsynced (its filesystem is what refuses them)");
        std::process::exit(2);
    }
    let started = Instant::now();
    let (mut cycles, mut operations, mut failed) = (0, 0, 0);
    let first_seed = config.seed;
    for round in 0..rounds {
        let config = Config {
            seed: first_seed + round,
            ..config.clone()
        };
        eprintln!("== round {}/{rounds} (seed {})", round + 1, config.seed);
        match run(&config).await {
            Ok(report) => {
                println!("{report}");
                cycles += report.faults.len();
                operations += report.operations;
                if !report.violations.is_empty() {
                    failed += 1;
                }
            }
            Err(e) => {
                eprintln!("lodestone-faults: {e}");
                std::process::exit(2);
            }
        }
    }
    println!(
        "{rounds} rounds in {:.0} s: {cycles} cycles survived, {operations} operations checked, \
         {failed} rounds with violations (seeds from {first_seed})",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
