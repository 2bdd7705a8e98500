//! `lodestone-lazyfs BACKING MOUNTPOINT`: mounts the lazy filesystem (see the library) and
//! takes commands on standard input, one per line, answering each on standard output:
//!
//! - `drop-unsynced` → `dropped <files> <bytes>`: forget every write not yet fsynced.
//! - `disk-full on` / `disk-full off` → `ok`: new data and files fail with ENOSPC, or not.
//! - `links off` / `links on` → `ok`: hard links fail with EPERM (a filesystem without
//!   them), or not.
//!
//! It prints `mounted` once the mount is ready, and unmounts and exits when its standard
//! input closes. Needs root and `/dev/fuse`.

use std::io::{BufRead, Write};
use std::path::PathBuf;

fn main() {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [backing, mountpoint] = args.as_slice() else {
        eprintln!("usage: lodestone-lazyfs BACKING MOUNTPOINT");
        std::process::exit(2);
    };
    let fs = match lodestone_lazyfs::LazyFs::mount(backing, mountpoint) {
        Ok(fs) => fs,
        Err(e) => {
            eprintln!("lodestone-lazyfs: {e}");
            std::process::exit(1);
        }
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "mounted");
    let _ = out.flush();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let answer = match line.trim() {
            "drop-unsynced" => {
                let d = fs.drop_unsynced();
                format!("dropped {} {}", d.files, d.bytes)
            }
            "disk-full on" => {
                fs.set_full(true);
                "ok".to_string()
            }
            "disk-full off" => {
                fs.set_full(false);
                "ok".to_string()
            }
            "links off" => {
                fs.set_links(false);
                "ok".to_string()
            }
            "links on" => {
                fs.set_links(true);
                "ok".to_string()
            }
            other => format!("error unknown command {other:?}"),
        };
        let _ = writeln!(out, "{answer}");
        let _ = out.flush();
    }
    // Dropping the mount unmounts it.
    drop(fs);
}
