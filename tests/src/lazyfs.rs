//! The fault suite's handle on a `lodestone-lazyfs` process: a mount whose unsynced writes
//! can be dropped, as a power cut drops the page cache (see the `lodestone-lazyfs` crate).
//! The filesystem runs in a process of its own, as LazyFS does, and takes its commands on a
//! pipe.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// A mounted lazy filesystem; unmounted on drop.
pub struct LazyMount {
    child: Child,
    commands: Option<ChildStdin>,
    answers: BufReader<ChildStdout>,
    mountpoint: PathBuf,
}

/// `lodestone-lazyfs`, beside the `lodestone` binary the suite runs.
fn binary() -> PathBuf {
    let p = crate::lodestone_bin().with_file_name("lodestone-lazyfs");
    assert!(
        p.is_file(),
        "{} not found: build it with `cargo build -p lodestone-lazyfs` (the README's test command does)",
        p.display()
    );
    p
}

impl LazyMount {
    /// Mounts a lazy view of `backing` at `mountpoint`.
    pub fn start(backing: &Path, mountpoint: &Path) -> Result<LazyMount, String> {
        let mut child = Command::new(binary())
            .arg(backing)
            .arg(mountpoint)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start lodestone-lazyfs: {e}"))?;
        let commands = child.stdin.take();
        let mut answers = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        answers.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "mounted" {
            let _ = child.wait();
            return Err(format!(
                "lodestone-lazyfs did not mount {} (see its error above)",
                mountpoint.display()
            ));
        }
        Ok(LazyMount {
            child,
            commands,
            answers,
            mountpoint: mountpoint.to_path_buf(),
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    fn command(&mut self, command: &str) -> Result<String, String> {
        let stdin = self.commands.as_mut().ok_or("lazyfs closed")?;
        writeln!(stdin, "{command}").map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.answers.read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(line)
    }

    /// Fills the disk (writes and new files fail with ENOSPC), or frees it.
    pub fn set_full(&mut self, full: bool) -> Result<(), String> {
        let answer = self.command(if full { "disk-full on" } else { "disk-full off" })?;
        match answer.trim() {
            "ok" => Ok(()),
            other => Err(format!("lodestone-lazyfs answered {other:?}")),
        }
    }

    /// Refuses hard links with EPERM (`false`), as a filesystem without them does, or makes
    /// them again.
    pub fn set_links(&mut self, links: bool) -> Result<(), String> {
        let answer = self.command(if links { "links on" } else { "links off" })?;
        match answer.trim() {
            "ok" => Ok(()),
            other => Err(format!("lodestone-lazyfs answered {other:?}")),
        }
    }

    /// Drops every write not yet fsynced; returns (files, bytes) dropped. Call it with the
    /// writer dead.
    pub fn drop_unsynced(&mut self) -> Result<(u64, u64), String> {
        let line = self.command("drop-unsynced")?;
        let mut it = line.split_whitespace();
        match (
            it.next(),
            it.next().and_then(|v| v.parse().ok()),
            it.next().and_then(|v| v.parse().ok()),
        ) {
            (Some("dropped"), Some(files), Some(bytes)) => Ok((files, bytes)),
            _ => Err(format!("lodestone-lazyfs answered {line:?}")),
        }
    }
}

impl Drop for LazyMount {
    fn drop(&mut self) {
        // Closing its input makes it unmount and exit.
        self.commands.take();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
    }
}
