//! The Markdown rendering of the JSON report: the results table and its
//! notes, the history service's rows, and the CPU table.

use serde_json::Value;

use crate::Args;

pub(crate) fn markdown(report: &Value, args: &Args) -> String {
    let n = |v: &Value| {
        v.as_f64().map_or_else(
            || "-".to_owned(),
            |f| {
                if f >= 100.0 {
                    format!("{f:.0}")
                } else {
                    format!("{f:.2}")
                }
            },
        )
    };
    let mut out = String::new();
    if !args.label.is_empty() {
        out.push_str(&format!("**{}**\n\n", args.label));
    }
    out.push_str(
        "| scenario | delivered/s | p50 ms | p90 ms | p99 ms | max ms | sent | not delivered within 600 s |\n|---|---|---|---|---|---|---|---|\n",
    );
    for (label, result) in [
        (
            "one pair cross-node, closed loop (sender waits for the receiver)".to_owned(),
            &report["closed_loop"],
        ),
        (
            format!("one-to-one cross-node, offered {}/s", args.rate),
            &report["one_to_one_fixed_rate"]["result"],
        ),
        (
            format!(
                "one-to-one cross-node, saturation ({} receivers)",
                report["receivers"].as_str().unwrap_or("?")
            ),
            &report["one_to_one_saturation"],
        ),
        (
            format!(
                "one-to-one cross-node, offered {}/s, history service stopped",
                args.rate
            ),
            &report["history"]["one_to_one_fixed_rate_stopped"]["result"],
        ),
        (
            "one-to-one cross-node, saturation, history service stopped".to_owned(),
            &report["history"]["one_to_one_saturation_stopped"],
        ),
        (
            format!("group fan-out, {} members", args.group_members),
            &report["group_fanout"]["result"],
        ),
        (
            format!("one-to-one cross-node over TLS, offered {}/s", args.rate),
            &report["one_to_one_tls_fixed_rate"]["result"],
        ),
        (
            "one-to-one cross-node over TLS, saturation".to_owned(),
            &report["one_to_one_tls_saturation"],
        ),
    ] {
        if result.is_null() {
            continue;
        }
        let l = &result["latency"];
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |\n",
            n(&result["delivered_per_sec"]),
            n(&l["p50_ms"]),
            n(&l["p90_ms"]),
            n(&l["p99_ms"]),
            n(&l["max_ms"]),
            result["sent"],
            result["lost"]
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "- {} nodes; pair i: sender on node i mod {0}, receiver on node i+1 mod {0}\n",
        args.nodes.len()
    ));
    if let Some(tls) = report.get("tls_nodes") {
        out.push_str(&format!(
            "- over TLS: senders through {}, receivers through {} (TLS terminated in front of each node)\n",
            tls[0].as_str().unwrap_or("?"),
            tls[1].as_str().unwrap_or("?")
        ));
    }
    if let Some(idle) = report.get("idle_connections") {
        out.push_str(&format!(
            "- idle connections on one node: {} of {} opened{}, {} bytes resident each\n",
            idle["opened"],
            idle["requested"],
            idle["stopped_by"]
                .as_str()
                .map(|s| format!(" (stopped by: {s})"))
                .unwrap_or_default(),
            n(&idle["bytes_per_connection"])
        ));
    }
    if let Some(line) = group_cost(report) {
        out.push_str(&line);
    }
    if let Some(p) = report.get("presence") {
        let ms = |group: &str| {
            p["cpu_per_change"]["groups"][group]["cpu_seconds_per_unit"]
                .as_f64()
                .map_or("-".to_owned(), |s| format!("{:.1}", s * 1000.0))
        };
        let calls: Vec<String> = p["redis_calls_per_change"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["per_message"].as_f64().unwrap_or(0.0) >= 1.0)
            .map(|r| {
                format!(
                    "{} {}",
                    n(&r["per_message"]),
                    r["command"].as_str().unwrap_or("?")
                )
            })
            .collect();
        out.push_str(&format!(
            "- presence: a user with {} online friends logs in: all told within {} ms (p50 {} ms; the login ack took {} ms); logs out: all told within {} ms (p50 {} ms). Per change: Redis calls {}; CPU ms: gateways {}, Redis {}, user service {}\n",
            p["watchers"],
            n(&p["online"]["last_ms"]),
            n(&p["online"]["p50_ms"]),
            n(&p["login_ack_ms"]),
            n(&p["offline"]["last_ms"]),
            n(&p["offline"]["p50_ms"]),
            if calls.is_empty() { "-".to_owned() } else { calls.join(", ") },
            ms("gateway"),
            ms("redis"),
            ms("user-service"),
        ));
    }
    if let Some(logins) = report.get("logins") {
        out.push_str(&format!(
            "- logins: {} per second ({} clients)\n",
            n(&logins["logins_per_sec"]),
            logins["clients"]
        ));
    }
    if let Some(online) = report.get("online") {
        out.push_str(&format!(
            "- online: {} users logged in: {} bytes of Redis used_memory and {} bytes of gateway resident memory each; {} undelivered inbox entries: {} bytes of Redis used_memory each (masters only)\n",
            online["users"],
            n(&online["redis_bytes_per_online_user"]),
            n(&online["gateway_bytes_per_online_user"]),
            online["entries_sent"],
            n(&online["redis_bytes_per_inbox_entry"]),
        ));
    }
    if let Some(ceiling) = report.get("redis_ceiling") {
        match (
            ceiling["skipped"].as_str(),
            ceiling["cross_node_ratio"].as_f64(),
        ) {
            (Some(why), _) => {
                out.push_str(&format!("- raw Redis ceiling not measured: {why}\n"));
            }
            (None, Some(ratio)) => out.push_str(&format!(
                "- raw Redis {} ceiling: {} msg/s; cross-node saturation is {:.0} % of it\n",
                ceiling_kind(ceiling),
                n(&ceiling["messages_per_sec"]),
                ratio * 100.0
            )),
            (None, None) => out.push_str(&format!(
                "- raw Redis {} ceiling: {} msg/s\n",
                ceiling_kind(ceiling),
                n(&ceiling["messages_per_sec"]),
            )),
        }
    }
    out.push_str(&summary_markdown(report, args));
    if let Some(history) = report.get("history") {
        out.push_str(&history_markdown(history));
    }
    // Only runs that sample CPU time (one-to-one, logins) fill the table.
    if let Some(cpu) = report.get("cpu").filter(|cpu| {
        ["one_to_one_fixed_rate", "one_to_one_saturation", "logins"]
            .iter()
            .any(|run| !cpu[run].is_null())
    }) {
        out.push_str(&cpu_markdown(cpu));
    }
    if let Some(group) = report.get("group_fanout") {
        out.push_str(&group_calls_markdown(group));
    }
    out
}

/// Redis calls per group message by command, beside what the members cost
/// Redis per second while the group was quiet (presence upkeep).
fn group_calls_markdown(group: &Value) -> String {
    let Some(per_message) = group["redis_calls"].as_array() else {
        return String::new();
    };
    let quiet = group["idle_redis_calls_per_sec"].as_array();
    let mut out = format!(
        "\nRedis calls per group message ({} members, {} messages/s; commands inside scripts count too), and per second while the group was quiet:\n\n| command | per group message | µs per call | per second, quiet |\n|---|---|---|---|\n",
        group["members"], group["messages_per_sec_offered"]
    );
    for row in per_message {
        let name = row["command"].as_str().unwrap_or("?");
        let idle = quiet
            .and_then(|rows| rows.iter().find(|r| r["command"] == name))
            .and_then(|r| r["per_message"].as_f64())
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        out.push_str(&format!(
            "| {name} | {:.1} | {:.2} | {idle} |\n",
            row["per_message"].as_f64().unwrap_or(0.0),
            row["usec_per_call"].as_f64().unwrap_or(0.0),
        ));
    }
    out
}

/// The history service's rows (issue 12's targets): what it costs chat,
/// its lag under load, its ingest capacity, GetHistory on a large table.
fn history_markdown(history: &Value) -> String {
    let mut out = String::from("\nHistory service:\n\n");
    if let Some(why) = history["skipped"].as_str() {
        out.push_str(&format!("- not measured: {why}\n"));
        return out;
    }
    let f = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.digits$}"))
    };
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "-",
    };
    out.push_str("| history | measured | target | |\n|---|---|---|---|\n");
    // "median (round 1, round 2, ...)" of one side.
    let side = |v: &Value, digits: usize| {
        let rounds: Vec<String> = v["rounds"]
            .as_array()
            .map(|r| r.iter().map(|x| f(x, digits)).collect())
            .unwrap_or_default();
        if rounds.len() > 1 {
            format!("{} ({})", f(&v["median"], digits), rounds.join(", "))
        } else {
            f(&v["median"], digits)
        }
    };
    let c = &history["comparison"];
    if !c.is_null() {
        let rounds = c["rounds"].as_u64().unwrap_or(1);
        let s = &c["saturation_per_sec"];
        let d = s["difference_pct"].as_f64();
        out.push_str(&format!(
            "| cross-node saturation msg/s, running vs stopped{} | {} vs {} ({:+.1} %) | within 10 % | {} |\n",
            if rounds > 1 { format!(", median of {rounds} (each)") } else { String::new() },
            side(&s["running"], 0),
            side(&s["stopped"], 0),
            d.unwrap_or(f64::NAN),
            verdict(d.map(|d| d >= -10.0)),
        ));
        let p = &c["p99_ms_at_offered_rate"];
        let d = p["difference_pct"].as_f64();
        out.push_str(&format!(
            "| p99 ms at {}/s, running vs stopped{} | {} vs {} ({:+.1} %) | within 10 % | {} |\n",
            p["offered_per_sec"],
            if rounds > 1 {
                format!(", median of {rounds} (each)")
            } else {
                String::new()
            },
            side(&p["running"], 2),
            side(&p["stopped"], 2),
            d.unwrap_or(f64::NAN),
            verdict(d.map(|d| d <= 10.0)),
        ));
    }
    let half = &history["during_half_saturation"];
    if !half.is_null() {
        let lag = half["max_lag_ms"].as_f64();
        out.push_str(&format!(
            "| ingest at half of saturation ({}/s offered): max lag | {} ms (service's gauge: {} ms) | ≤ 1 s | {} |\n",
            half["offered_per_sec"],
            f(&half["max_lag_ms"], 0),
            f(&half["max_service_lag_gauge_ms"], 0),
            verdict(lag.map(|l| l <= 1000.0)),
        ));
    }
    for (label, key) in [
        ("during the saturation run", "during_saturation"),
        ("during the offered-rate run", "during_fixed_rate"),
        (
            "during the run at half of saturation",
            "during_half_saturation",
        ),
    ] {
        let r = &history[key];
        if r.is_null() {
            continue;
        }
        out.push_str(&format!(
            "| ingest {label}: max lag / max backlog | {} ms / {} entries (service's gauge: {} ms) | | |\n",
            f(&r["max_lag_ms"], 0),
            f(&r["max_backlog_entries"], 0),
            f(&r["max_service_lag_gauge_ms"], 0),
        ));
        out.push_str(&format!(
            "| ingest {label}: backlog at its end, 0 after | {} entries, {} s | | |\n",
            r["backlog_at_end"]["entries"],
            f(&r["caught_up_after_end_seconds"], 1),
        ));
        out.push_str(&format!(
            "| ingest {label}: stored/s during it / until caught up | {} / {} ({} delivered/s) | | |\n",
            f(&r["stored_per_sec_during_run"], 0),
            f(&r["stored_per_sec_until_caught_up"], 0),
            f(&(r["delivered"].as_f64().unwrap_or(f64::NAN) / r["run_seconds"].as_f64().unwrap_or(f64::NAN)).into(), 0),
        ));
    }
    let capacity = |label: String, d: &Value, out: &mut String| {
        let rate = d["stored_per_sec"].as_f64();
        let trimmed = d["trimmed_unread"].as_u64().unwrap_or(0);
        let cost = &d["cpu_us_per_stored"];
        let cost = if cost["history-service"].is_number() || cost["mariadb"].is_number() {
            format!(
                "; per message stored: history service {} µs, MariaDB {} µs",
                f(&cost["history-service"], 1),
                f(&cost["mariadb"], 1)
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "| ingest capacity: {label} | {} msg/s ({} stored in {} s{cost}{}) | ≥ 20,000 msg/s | {} |\n",
            f(&d["stored_per_sec"], 0),
            d["stored"],
            f(&d["seconds"], 1),
            if trimmed > 0 {
                format!(
                    "; {trimmed} of {} entries were trimmed unread by the gateways' MAXLEN",
                    d["backlog_entries"]
                )
            } else {
                String::new()
            },
            verdict(rate.map(|r| r >= 20_000.0)),
        ));
    };
    if !history["drain_after_stopped_runs"].is_null() {
        capacity(
            "backlog of the runs it was stopped for, drained".to_owned(),
            &history["drain_after_stopped_runs"],
            &mut out,
        );
    }
    let t = &history["table"];
    if !t.is_null() {
        capacity(
            format!("{} entries written while stopped, drained", t["rows"]),
            &t["drain"],
            &mut out,
        );
        let g = &t["get_history"];
        let p99 = g["latency"]["p99_ms"].as_f64();
        out.push_str(&format!(
            "| GetHistory({}), {} calls on {} rows ({} pages short): p50 / p99 / max | {} / {} / {} ms | p99 ≤ 5 ms | {} |\n",
            g["limit"],
            g["calls"],
            t["table_rows"],
            g["pages_shorter_than_limit"],
            f(&g["latency"]["p50_ms"], 2),
            f(&g["latency"]["p99_ms"], 2),
            f(&g["latency"]["max_ms"], 2),
            verdict(p99.map(|p| p <= 5.0)),
        ));
    }
    out
}

/// CPU and memory of the watched processes: per 100k delivered messages in
/// the one-to-one runs, per login in the logins run.
fn cpu_markdown(cpu: &Value) -> String {
    let f = |v: &Value, digits: usize| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.digits$}"))
    };
    let mut out = format!(
        "\nCPU (clock ticks: {}/s, {}):\n\n| process | CPU µs per msg, closed loop | CPU µs per msg, offered rate | cores busy | CPU µs per msg, saturation | cores busy | CPU ms per login | RSS MiB |\n|---|---|---|---|---|---|---|---|\n",
        cpu["clock_ticks_per_sec"]["value"],
        cpu["clock_ticks_per_sec"]["source"].as_str().unwrap_or("?"),
    );
    let (closed, fixed, saturated, logins) = (
        &cpu["closed_loop"],
        &cpu["one_to_one_fixed_rate"],
        &cpu["one_to_one_saturation"],
        &cpu["logins"],
    );
    let mut names: Vec<(String, &str)> = Vec::new();
    if let Some(watched) = cpu["watched"].as_object() {
        names.extend(watched.keys().map(|k| (k.clone(), "processes")));
    }
    for run in [closed, fixed, saturated, logins] {
        if let Some(groups) = run["groups"].as_object() {
            for (name, g) in groups {
                let entry = (name.clone(), "groups");
                if g["processes"].as_u64().unwrap_or(0) > 1 && !names.contains(&entry) {
                    names.push(entry);
                }
            }
        }
    }
    for (name, kind) in names {
        let row = |run: &Value| run[kind][&name].clone();
        let rss = [saturated, logins, fixed]
            .iter()
            .find_map(|run| row(run)["rss_kib"].as_f64());
        let label = if kind == "groups" {
            format!("**all {name}**")
        } else {
            name.clone()
        };
        out.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {} | {} | {} |\n",
            micros_per_message(&row(closed)["cpu_seconds_per_unit"]),
            micros_per_message(&row(fixed)["cpu_seconds_per_unit"]),
            f(&row(fixed)["cores_busy"], 2),
            micros_per_message(&row(saturated)["cpu_seconds_per_unit"]),
            f(&row(saturated)["cores_busy"], 2),
            row(logins)["cpu_seconds_per_unit"]
                .as_f64()
                .map_or_else(|| "-".to_owned(), |s| format!("{:.2}", s * 1000.0)),
            rss.map_or_else(|| "-".to_owned(), |k| format!("{:.1}", k / 1024.0)),
        ));
    }
    out.push_str(&redis_calls_markdown(fixed, saturated));
    out
}

/// What one group message cost Redis and the gateways (all its
/// deliveries), and Redis's share as a multiple of a one-to-one message's
/// at the offered rate (issue 21: a 1,000-member message ≤ 20×).
fn group_cost(report: &Value) -> Option<String> {
    let spent = &report["cpu"]["group_fanout"];
    let group = &spent["groups"];
    let units = spent["units"].as_f64().filter(|&u| u > 0.0)?;
    let wall = spent["wall_seconds"].as_f64().unwrap_or(0.0);
    let idle = &report["group_fanout"]["idle_cpu"]["groups"];
    // Per group message: all it cost, and what it added to what the
    // members cost while the group was quiet (the idle window's rate).
    let per_message = |part: &str| -> Option<(f64, Option<f64>)> {
        let cpu = group[part]["cpu_seconds"].as_f64()?;
        let net = idle[part]["cores_busy"]
            .as_f64()
            .map(|busy| ((cpu - busy * wall) / units).max(0.0));
        Some((cpu / units, net))
    };
    let (redis, redis_net) = per_message("redis")?;
    let gateways = per_message("gateway");
    let one = report["cpu"]["one_to_one_fixed_rate"]["groups"]["redis"]["cpu_seconds_per_unit"]
        .as_f64()
        .map(|per_100k| per_100k / 1e5)
        .filter(|&o| o > 0.0);
    let us = |v: f64| format!("{:.0}", v * 1e6);
    let net = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), us);
    Some(format!(
        "- group fan-out, {} members: Redis {} µs and the gateways {} µs of CPU per group message; above what the members cost while the group is quiet: Redis {} µs, the gateways {} µs{}\n",
        report["group_fanout"]["members"],
        us(redis),
        gateways.map_or_else(|| "-".to_owned(), |g| us(g.0)),
        net(redis_net),
        net(gateways.and_then(|g| g.1)),
        one.map(|o| format!(
            " (Redis: {:.0}× a one-to-one message at the offered rate; {} above quiet)",
            redis / o,
            redis_net.map_or_else(|| "-".to_owned(), |n| format!("{:.1}×", n / o))
        ))
        .unwrap_or_default()
    ))
}

/// What the ceiling measured: one channel on one Redis, or one sharded
/// channel on every master of a cluster at once.
fn ceiling_kind(ceiling: &Value) -> &'static str {
    if ceiling["sharded"].as_bool() == Some(true) {
        "SPUBLISH→subscriber (every master at once)"
    } else {
        "publish→subscriber"
    }
}

/// One row of what a chat cost in this run, at the offered rate and at
/// saturation: throughput, its share of the raw Redis ceiling, latency, CPU
/// per message of each part of the stack (summed over a group's processes:
/// every gateway, every Redis of a cluster) and the script calls and WAITs
/// per message. The tables below have the detail.
fn summary_markdown(report: &Value, args: &Args) -> String {
    let cpu = &report["cpu"];
    let (fixed, saturated) = (&cpu["one_to_one_fixed_rate"], &cpu["one_to_one_saturation"]);
    if fixed.is_null() || saturated.is_null() {
        return String::new();
    }
    let both = |group: &str| {
        format!(
            "{} / {}",
            micros_per_message(&fixed["groups"][group]["cpu_seconds_per_unit"]),
            micros_per_message(&saturated["groups"][group]["cpu_seconds_per_unit"])
        )
    };
    let calls = |run: &Value, commands: &[&str]| {
        run["redis_calls"].as_array().map_or_else(
            || "-".to_owned(),
            |rows| {
                let sum: f64 = rows
                    .iter()
                    .filter(|r| commands.iter().any(|c| r["command"] == *c))
                    .filter_map(|r| r["per_message"].as_f64())
                    .sum();
                // An empty sum is -0.0: a command never called shows 0.
                let sum = if sum == 0.0 { 0.0 } else { sum };
                format!("{sum:.3}")
            },
        )
    };
    let per_message = |commands: &[&str]| {
        format!(
            "{} / {}",
            calls(fixed, commands),
            calls(saturated, commands)
        )
    };
    let ms = |v: &Value| {
        v.as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.2}"))
    };
    let latency = &report["one_to_one_fixed_rate"]["result"]["latency"];
    let share = report["redis_ceiling"]["cross_node_ratio"]
        .as_f64()
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1} %", r * 100.0));
    format!(
        "\nCost per message (offered {rate}/s / saturation; CPU summed over each part's processes):\n\n\
         | saturation msg/s | share of the raw Redis ceiling | p50 / p99 at {rate}/s, ms | gateways µs | Redis µs | history service µs | MariaDB µs | script calls | WAIT |\n\
         |---|---|---|---|---|---|---|---|---|\n\
         | {} | {share} | {} / {} | {} | {} | {} | {} | {} | {} |\n",
        report["one_to_one_saturation"]["delivered_per_sec"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |f| format!("{f:.0}")),
        ms(&latency["p50_ms"]),
        ms(&latency["p99_ms"]),
        both("gateway"),
        both("redis"),
        both("history-service"),
        both("mariadb"),
        per_message(&["evalsha", "eval"]),
        per_message(&["wait"]),
        rate = args.rate,
    )
}

/// CPU seconds per 100k messages as microseconds per message.
fn micros_per_message(per_100k: &Value) -> String {
    per_100k
        .as_f64()
        .map_or_else(|| "-".to_owned(), |s| format!("{:.1}", s * 10.0))
}

/// Redis calls per message by command (INFO commandstats deltas over every
/// instance), at the offered rate and at saturation.
fn redis_calls_markdown(fixed: &Value, saturated: &Value) -> String {
    let (Some(at_rate), Some(at_saturation)) = (
        fixed["redis_calls"].as_array(),
        saturated["redis_calls"].as_array(),
    ) else {
        return String::new();
    };
    let mut out = "\nRedis calls per message (INFO commandstats of every instance; commands inside scripts count too):\n\n| command | per msg, offered rate | µs per call | per msg, saturation | µs per call |\n|---|---|---|---|---|\n".to_owned();
    let find = |rows: &[Value], name: &str| rows.iter().find(|r| r["command"] == name).cloned();
    let mut names: Vec<&str> = at_saturation
        .iter()
        .filter_map(|r| r["command"].as_str())
        .collect();
    for r in at_rate {
        if let Some(name) = r["command"].as_str().filter(|n| !names.contains(n)) {
            names.push(name);
        }
    }
    let cell = |row: Option<Value>, key: &str, digits: usize| {
        row.and_then(|r| r[key].as_f64())
            .map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
    };
    for name in names {
        let (a, b) = (find(at_rate, name), find(at_saturation, name));
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} |\n",
            cell(a.clone(), "per_message", 3),
            cell(a, "usec_per_call", 2),
            cell(b.clone(), "per_message", 3),
            cell(b, "usec_per_call", 2),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use serde_json::json;

    use super::*;

    #[test]
    fn the_summary_row_sums_each_part_and_counts_script_calls() {
        let args = Args::try_parse_from(["chat-bench", "--rate", "5000"]).expect("args");
        let run = |gateway: f64, calls: f64| {
            json!({
                "groups": {
                    "gateway": {"cpu_seconds_per_unit": gateway, "processes": 2},
                    "redis": {"cpu_seconds_per_unit": 2.5, "processes": 1},
                    "history-service": {"cpu_seconds_per_unit": 1.0, "processes": 1},
                    "mariadb": {"cpu_seconds_per_unit": 0.5, "processes": 1},
                },
                "redis_calls": [
                    {"command": "evalsha", "per_message": calls},
                    {"command": "eval", "per_message": 0.01},
                    {"command": "incr", "per_message": 2.0},
                ],
            })
        };
        let report = json!({
            "one_to_one_fixed_rate": {"result": {"latency": {"p50_ms": 2.431, "p99_ms": 6.2}}},
            "one_to_one_saturation": {"delivered_per_sec": 22445.4},
            "redis_ceiling": {"cross_node_ratio": 0.066},
            "cpu": {"one_to_one_fixed_rate": run(5.73, 0.114), "one_to_one_saturation": run(3.15, 0.079)},
        });
        let summary = summary_markdown(&report, &args);
        assert!(
            summary.contains(
                "| 22445 | 6.6 % | 2.43 / 6.20 | 57.3 / 31.5 | 25.0 / 25.0 | 10.0 / 10.0 | 5.0 / 5.0 | 0.124 / 0.089 | 0.000 / 0.000 |"
            ),
            "{summary}"
        );
        // Without CPU figures there is nothing to sum up.
        assert!(summary_markdown(&json!({}), &args).is_empty());
    }
}
