//! Redis commands per message: `INFO commandstats` of every Redis instance
//! named with `--redis-info` (masters and replicas), read before and after a
//! run. Commands a script runs count as well as the script call itself
//! (`evalsha` and the `rpush` inside it), so the rows say what Redis did,
//! not how many round trips it took.

use std::{collections::BTreeMap, net::SocketAddr};

use serde_json::{Value, json};

/// Per command: calls and microseconds, summed over the instances; and
/// how many instances were read.
#[derive(Default)]
pub struct Calls(BTreeMap<String, (u64, u64)>, u64);

/// The counters now; `None` without instances or when one cannot be read.
pub async fn snapshot(addrs: &[SocketAddr]) -> Option<Calls> {
    if addrs.is_empty() {
        return None;
    }
    let mut calls = Calls::default();
    for addr in addrs {
        let client = redis::Client::open(format!("redis://{addr}")).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .ok()?;
        calls.add(&info);
        calls.1 += 1;
    }
    Some(calls)
}

impl Calls {
    /// Adds the lines `cmdstat_NAME:calls=N,usec=U,...` of an INFO reply.
    fn add(&mut self, info: &str) {
        for line in info.lines() {
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let entry = self.0.entry(name.to_owned()).or_default();
            entry.0 += field("calls");
            entry.1 += field("usec");
        }
    }
}

/// What ran between `before` and `after`, per unit of work (`units` were
/// done): calls per command, ordered by calls, and their microseconds. The
/// bench's own INFO call (one per instance between two readings) is taken
/// out; the scripts' INFO calls stay.
pub fn per_unit(before: &Calls, after: &Calls, units: u64) -> Value {
    if units == 0 {
        return Value::Null;
    }
    let mut rows: Vec<(String, u64, u64)> = after
        .0
        .iter()
        .filter_map(|(name, &(calls, usec))| {
            let (c0, u0) = before.0.get(name).copied().unwrap_or_default();
            let own = if name == "info" { before.1 } else { 0 };
            let calls = calls.saturating_sub(c0).saturating_sub(own);
            (calls > 0).then(|| (name.clone(), calls, usec.saturating_sub(u0)))
        })
        .collect();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let units = units as f64;
    json!(
        rows.into_iter()
            .map(|(name, calls, usec)| json!({
                "command": name,
                "per_message": calls as f64 / units,
                "usec_per_call": usec as f64 / calls as f64,
            }))
            .collect::<Vec<_>>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_calls_per_command_between_two_readings() {
        let mut before = Calls(BTreeMap::new(), 1);
        before.add("# Commandstats\r\ncmdstat_evalsha:calls=10,usec=50,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n");
        let mut after = Calls::default();
        after.add("# Commandstats\r\ncmdstat_evalsha:calls=30,usec=150,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\ncmdstat_rpush:calls=40,usec=40,usec_per_call=1.00\r\ncmdstat_info:calls=3,usec=9\r\n");
        let rows = per_unit(&before, &after, 20);
        assert_eq!(
            rows,
            json!([
                {"command": "rpush", "per_message": 2.0, "usec_per_call": 1.0},
                {"command": "evalsha", "per_message": 1.0, "usec_per_call": 5.0},
                {"command": "info", "per_message": 0.1, "usec_per_call": 4.5},
            ])
        );
        assert_eq!(per_unit(&before, &after, 0), Value::Null);
    }
}
