//! The layer rule of `ARCHITECTURE.md`, checked on the source: which module may name which.
//! A change that makes, say, a client service reach into consensus, or MVCC depend on the
//! member, fails here with the file and line.

use std::path::{Path, PathBuf};

/// A path prefix under `store/src/` and what code there must not name.
const RULES: &[(&str, &[&str])] = &[
    // Only consensus names openraft (a log filter's target string is no use of it).
    ("", &["openraft::", "use openraft"]),
    // The client API talks to the member only.
    ("api/", &["crate::raft", "crate::peer::client", "crate::apply"]),
    // The member uses consensus through its facade and never the layers above it.
    (
        "member/",
        &["crate::api", "crate::peer::service", "crate::raft::network"],
    ),
    // The peer transport's envelope and connections sit below consensus.
    (
        "peer/envelope.rs",
        &[
            "crate::member",
            "crate::api",
            "crate::raft",
            "crate::mvcc",
            "crate::apply",
        ],
    ),
    (
        "peer/client.rs",
        &[
            "crate::member",
            "crate::api",
            "crate::raft",
            "crate::mvcc",
            "crate::apply",
        ],
    ),
    (
        "peer/mod.rs",
        &[
            "crate::member",
            "crate::api",
            "crate::raft",
            "crate::mvcc",
            "crate::apply",
        ],
    ),
    // The peer service is an adapter over the member, like the client API.
    ("peer/service.rs", &["crate::raft", "crate::api"]),
    ("raft/", &["crate::member", "crate::api", "crate::peer::service"]),
    ("apply/", &["crate::raft", "crate::member", "crate::api", "crate::peer"]),
    (
        "mvcc/",
        &[
            "crate::raft",
            "crate::member",
            "crate::api",
            "crate::peer",
            "crate::apply",
            "crate::lease",
        ],
    ),
    // Writes do not depend on the lease module (it builds on writes).
    ("mvcc/write.rs", &["super::lease", "mvcc::lease"]),
    (
        "lease.rs",
        &[
            "crate::raft",
            "crate::member",
            "crate::api",
            "crate::peer",
            "crate::mvcc",
        ],
    ),
    // Auth is a foundation: users, roles, permissions and tokens know nothing of storage,
    // consensus or the API.
    (
        "auth/",
        &[
            "crate::raft",
            "crate::member",
            "crate::api",
            "crate::peer",
            "crate::apply",
            "crate::mvcc",
            "crate::lease",
        ],
    ),
    // The foundations below auth.
    (
        "config.rs",
        &["crate::auth", "crate::mvcc", "crate::member", "crate::api"],
    ),
    (
        "error.rs",
        &["crate::auth", "crate::mvcc", "crate::member", "crate::api"],
    ),
    ("net/", &["crate::"]),
];

/// openraft's types under Lodestone's names; naming them is naming openraft.
const OPENRAFT_ALIASES: &[&str] = &[
    "raft::TypeConfig",
    "raft::LogId",
    "raft::Vote",
    "raft::Entry",
    "raft::StoredMembership",
    "raft::SnapshotMeta",
    "raft::Snapshot,",
    "raft::Snapshot;",
    "raft::Raft,",
    "raft::Raft;",
    "raft::RaftMetrics",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's code lines (comments dropped), numbered from 1.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let code = match l.find("//") {
                Some(at) => &l[..at],
                None => l,
            };
            (!code.trim().is_empty()).then(|| (i + 1, code.to_string()))
        })
        .collect()
}

#[test]
fn every_module_names_only_the_layers_it_may() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    assert!(
        files.len() > 40,
        "found only {} source files under {}",
        files.len(),
        root.display()
    );
    let mut violations = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(file).unwrap();
        let lines = code_lines(&text);
        let in_raft = rel.starts_with("raft/");
        for (prefix, forbidden) in RULES {
            // The openraft rule binds everything outside `raft/`.
            if prefix.is_empty() && in_raft {
                continue;
            }
            if !rel.starts_with(prefix) {
                continue;
            }
            for (n, line) in &lines {
                for f in *forbidden {
                    if line.contains(f) {
                        violations.push(format!("src/{rel}:{n}: names `{f}`: {}", line.trim()));
                    }
                }
            }
        }
        if !in_raft {
            for (n, line) in &lines {
                for alias in OPENRAFT_ALIASES {
                    if line.contains(alias) {
                        violations.push(format!("src/{rel}:{n}: names openraft's `{alias}`: {}", line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        violations.is_empty(),
        "the layer rule (ARCHITECTURE.md) is broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_rule_catches_what_it_forbids() {
    // The scan itself: code counts, comments do not.
    let lines = code_lines("use crate::raft::Consensus; // crate::api\n// use openraft::Raft;\n");
    assert_eq!(lines.len(), 1);
    assert!(lines[0].1.contains("crate::raft"));
    assert!(!lines[0].1.contains("crate::api"));
}
