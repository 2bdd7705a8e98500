//! A small network for the fault suite: one Linux network namespace per member, all on one
//! bridge, so that the network between members can really break.
//!
//! Member `i` lives in namespace `lsn<pid>x<n>-<i>` at `10.<a>.<b>.<10+i>`; the bridge
//! `lsb<pid>x<n>` holds `10.<a>.<b>.1`, so the test process (in the host's namespace) reaches
//! every member directly. Cutting member `i` off from member `j` installs a blackhole route
//! to `j` inside `i`'s namespace and one to `i` inside `j`'s: packets between them go
//! nowhere, in both directions, while both still answer clients. Healing removes the routes;
//! connections that survived the cut carry on, as after a real outage.
//!
//! This needs root (namespaces, links and routes) and iproute2's `ip`. Everything is
//! removed on drop, and a lab left behind by a killed run is removed by the next one.

use std::net::Ipv4Addr;
use std::process::Command;

/// The namespaces and the bridge of one run.
pub struct Lab {
    /// `<pid>x<n>`: the process and its n-th lab, so names never repeat within a process
    /// (the kernel removes a deleted namespace's links asynchronously).
    id: String,
    subnet: [u8; 3],
    size: usize,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip` (Debian package iproute2): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

impl Lab {
    /// Creates namespaces for `size` members. Fails with a message saying what is missing
    /// when not run as root or without `ip`.
    pub fn new(size: usize) -> Result<Lab, String> {
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            })
            .unwrap_or_default();
        if uid != "0" {
            return Err(
                "the fault suite needs root: it builds network namespaces (`ip netns`) to \
                        partition members; run it as root (CI does)"
                    .into(),
            );
        }
        // Labs of one process (tests run in parallel) are made one at a time, so that each
        // sees the subnets of those before it as taken.
        static CREATING: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
        let mut made = CREATING.lock().unwrap_or_else(|e| e.into_inner());
        Lab::remove_abandoned();
        let pid = std::process::id();
        let id = format!("{pid}x{}", *made % 100);
        *made += 1;
        let used = ip_output(&["-4", "-o", "addr"]);
        let subnet = (0..250u32)
            .map(|n| [10, 200 + ((pid + n) % 50) as u8, ((pid / 50 + n) % 256) as u8])
            .find(|s| !used.contains(&format!("inet {}.{}.{}.", s[0], s[1], s[2])))
            .ok_or("no free 10.x.y.0/24 subnet for the lab")?;
        let lab = Lab {
            id: id.clone(),
            subnet,
            size,
        };
        let bridge = lab.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}/24", lab.host()), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for i in 0..size {
            let ns = lab.namespace(i);
            let veth = format!("lsv{id}-{i}");
            ip(&["netns", "add", &ns])?;
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/24", lab.address(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// Removes namespaces and bridges of runs whose process is gone.
    fn remove_abandoned() {
        for line in ip_output(&["netns", "list"]).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(pid) = name.strip_prefix("lsn").and_then(|r| r.split('x').next())
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = ip(&["netns", "del", name]);
            }
        }
        for line in ip_output(&["-o", "link", "show", "type", "bridge"]).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if let Some(pid) = name.strip_prefix("lsb").and_then(|r| r.split('x').next())
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = ip(&["link", "del", name]);
            }
        }
    }

    fn bridge(&self) -> String {
        format!("lsb{}", self.id)
    }

    fn namespace(&self, i: usize) -> String {
        format!("lsn{}-{i}", self.id)
    }

    /// The test process's address on the bridge.
    pub fn host(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// Member `i`'s address.
    pub fn address(&self, i: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 10 + i as u8)
    }

    /// A command that runs `program` inside member `i`'s namespace (`ip netns exec` execs
    /// it, so the child's pid is the program's own and signals reach it directly).
    pub fn command(&self, i: usize, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.namespace(i)]).arg(program);
        c
    }

    /// Cuts the link between members `i` and `j`, both ways.
    pub fn cut(&self, i: usize, j: usize) -> Result<(), String> {
        for (from, to) in [(i, j), (j, i)] {
            let route = format!("{}/32", self.address(to));
            ip(&["-n", &self.namespace(from), "route", "replace", "blackhole", &route])?;
        }
        Ok(())
    }

    /// Cuts member `i` off from every other member (clients still reach it).
    pub fn isolate(&self, i: usize) -> Result<(), String> {
        (0..self.size).filter(|&j| j != i).try_for_each(|j| self.cut(i, j))
    }

    /// Removes every cut.
    pub fn heal(&self) -> Result<(), String> {
        (0..self.size).try_for_each(|i| ip(&["-n", &self.namespace(i), "route", "flush", "type", "blackhole"]))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.size {
            let _ = ip(&["link", "del", &format!("lsv{}-{i}", self.id)]);
            let _ = ip(&["netns", "del", &self.namespace(i)]);
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}
