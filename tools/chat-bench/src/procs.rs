//! What the measured processes spent: CPU time and resident memory, read
//! from `/proc` (Linux only) for the processes named with `--pids`.
//!
//! CPU time is `utime + stime` of `/proc/PID/stat`, in clock ticks. The tick
//! rate comes from `getconf CLK_TCK` (the workspace forbids the `unsafe` a
//! `sysconf` call would need); where `getconf` is missing it is taken to be
//! 100, which is what Linux reports on every common architecture.

use std::{collections::BTreeMap, process::Command, time::Instant};

use serde_json::{Value, json};

/// One process to watch: a name of the caller's choosing and its pid.
#[derive(Clone, Debug)]
pub struct Watched {
    pub name: String,
    pub pid: u32,
}

impl Watched {
    /// `name=PID`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, pid) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}': expected NAME=PID"))?;
        let pid = pid
            .trim()
            .parse()
            .map_err(|e| format!("'{text}': pid: {e}"))?;
        Ok(Self {
            name: name.trim().to_owned(),
            pid,
        })
    }

    /// The group a process is summed into: its name without a trailing
    /// `-NUMBER` (`gateway-2` → `gateway`, `redis-6521` → `redis`).
    pub fn group(&self) -> &str {
        match self.name.rsplit_once('-') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                head
            }
            _ => &self.name,
        }
    }
}

/// Clock ticks per second of `/proc/PID/stat`, and where the number came from.
pub fn clock_ticks() -> (u64, &'static str) {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .map_or((100, "assumed (getconf CLK_TCK failed)"), |t| {
            (t, "getconf CLK_TCK")
        })
}

/// `utime + stime` of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count fields from after its closing parenthesis (field 3 is first).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        Ok(fields
            .get(n - 3)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse()?)
    };
    Ok(field(14)? + field(15)?)
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for pid {pid}"))
}

/// CPU ticks of every watched process at one instant.
pub struct Snapshot {
    at: Instant,
    ticks: Vec<Option<u64>>,
}

pub fn snapshot(watched: &[Watched]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        ticks: watched.iter().map(|w| cpu_ticks(w.pid).ok()).collect(),
    }
}

/// What each process (and each group) spent between `before` and now, per
/// `per` units of work (`units` of it were done): e.g. per 100,000
/// delivered messages, or per login.
pub fn spent(
    watched: &[Watched],
    before: &Snapshot,
    units: u64,
    per: f64,
    per_label: &str,
) -> Value {
    let after = snapshot(watched);
    let (tick_rate, _) = clock_ticks();
    let wall = after.at.duration_since(before.at).as_secs_f64().max(0.001);
    let row = |cpu: f64, rss: Option<u64>| {
        json!({
            "cpu_seconds": cpu,
            "cores_busy": cpu / wall,
            "cpu_seconds_per_unit": if units == 0 { Value::Null } else { json!(cpu * per / units as f64) },
            "rss_kib": rss,
        })
    };
    let mut processes = serde_json::Map::new();
    let mut groups: BTreeMap<String, (f64, u64, usize)> = BTreeMap::new();
    for (i, w) in watched.iter().enumerate() {
        let (Some(b), Some(a)) = (before.ticks[i], after.ticks[i]) else {
            processes.insert(
                w.name.clone(),
                json!({"error": "process gone or unreadable"}),
            );
            continue;
        };
        let cpu = a.saturating_sub(b) as f64 / tick_rate as f64;
        let rss = rss_kib(w.pid).ok();
        processes.insert(w.name.clone(), row(cpu, rss));
        let group = groups.entry(w.group().to_owned()).or_default();
        group.0 += cpu;
        group.1 += rss.unwrap_or(0);
        group.2 += 1;
    }
    let groups: serde_json::Map<String, Value> = groups
        .into_iter()
        .map(|(name, (cpu, rss, count))| {
            let mut v = row(cpu, Some(rss));
            v["processes"] = json!(count);
            (name, v)
        })
        .collect();
    json!({
        "wall_seconds": wall,
        "units": units,
        "per": per_label,
        "processes": processes,
        "groups": groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_a_numeric_suffix_only() {
        let w = |n: &str| Watched::parse(&format!("{n}=1")).expect("parses");
        assert_eq!(w("gateway-2").group(), "gateway");
        assert_eq!(w("redis-6521").group(), "redis");
        assert_eq!(w("user-service").group(), "user-service");
        assert_eq!(w("mariadb").group(), "mariadb");
        assert!(Watched::parse("gateway").is_err());
    }

    #[test]
    fn reads_its_own_cpu_time_and_memory() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(rss_kib(me).expect("VmRSS") > 0);
    }
}
