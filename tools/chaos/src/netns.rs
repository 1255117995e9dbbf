//! The run's network: a switch namespace holding a bridge, and every host
//! (each Redis node, the core services, each gateway, each client, the
//! run's own probe host) in a namespace of its own, joined to the bridge by
//! a veth pair created inside the namespaces (no end ever sits in the
//! host's root namespace). Addresses come from 198.18.0.0/24 (the
//! benchmarking range, 198.18.0.0/15) and no namespace has a default route,
//! so no packet of the run can leave through the host.
//!
//! A partition is the host's link taken down inside its namespace (`tc
//! netem` is not available): its peers see nothing, no FIN, no RST.
//!
//! Names are `ccx<PID>-<host>`: unique per run, and a crashed run's are
//! found by the PID that no longer lives ([`remove_stale`]).

use std::{net::Ipv4Addr, process::Command};

use anyhow::{Context as _, bail};

pub const PREFIX: &str = "ccx";
/// The host's side of every veth pair, inside its namespace.
pub const DEV: &str = "eth0";

pub struct Net {
    /// `ccx<PID>`
    tag: String,
    hosts: Vec<(String, Ipv4Addr)>,
    switch: String,
}

/// Runs `ip ARGS`; an error with its stderr when it fails.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("run ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect()
    })
    .unwrap_or_default()
}

/// Kills every process in namespace `ns` (kill -9) and deletes it.
fn delete_namespace(ns: &str) {
    for _ in 0..3 {
        let pids = Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if pids.is_empty() {
            break;
        }
        let _ = Command::new("kill").arg("-9").args(&pids).status();
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let _ = ip(&["netns", "del", ns]);
}

/// Removes the namespaces (and their processes) of earlier runs whose
/// process is gone: a run killed with -9 could not clean up.
pub fn remove_stale() -> usize {
    let mut removed = 0;
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        delete_namespace(&ns);
        removed += 1;
    }
    removed
}

impl Net {
    /// Makes the switch and every host (name, address), links up.
    pub fn create(hosts: &[(String, Ipv4Addr)]) -> anyhow::Result<Self> {
        let tag = format!("{PREFIX}{}", std::process::id());
        let net = Self {
            switch: format!("{tag}-switch"),
            tag,
            hosts: Vec::new(),
        };
        let mut net = net;
        ip(&["netns", "add", &net.switch])?;
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.switch, "link", "set", "br0", "up"])?;
        for (i, (name, addr)) in hosts.iter().enumerate() {
            let ns = net.ns(name);
            ip(&["netns", "add", &ns])?;
            net.hosts.push((name.clone(), *addr));
            let port = format!("p{i}");
            ip(&[
                "-n",
                &net.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                DEV,
                "netns",
                &ns,
            ])?;
            ip(&[
                "-n",
                &net.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", DEV])?;
            ip(&["-n", &ns, "link", "set", DEV, "up"])?;
        }
        Ok(net)
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.tag)
    }

    /// Takes `host`'s link down (cut from everything) or up again.
    pub fn set_link(&self, host: &str, up: bool) -> anyhow::Result<()> {
        ip(&[
            "-n",
            &self.ns(host),
            "link",
            "set",
            DEV,
            if up { "up" } else { "down" },
        ])
    }

    /// Every host's link up again (the end of the run heals every cut).
    pub fn all_up(&self) {
        for (host, _) in &self.hosts {
            let _ = self.set_link(host, true);
        }
    }

    /// Kills whatever still runs in the namespaces and deletes them.
    pub fn destroy(&self) {
        for (host, _) in self.hosts.iter().rev() {
            delete_namespace(&self.ns(host));
        }
        delete_namespace(&self.switch);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.destroy();
    }
}
