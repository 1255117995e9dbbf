//! Scenario 2, `group`: group chat fan-out, the members spread over the
//! nodes.

use std::{
    sync::{Arc, Mutex, atomic::AtomicU64},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use super::{PASSWORD, Target, chat_frame, drain, spawn_receiver};
use crate::{Args, client::Client, procs, redis_calls, stats::tally};

/// How long the members' idle cost is measured before the group speaks.
const IDLE_WINDOW: Duration = Duration::from_secs(5);

pub(crate) async fn group_fanout(args: &Args, prefix: &str) -> anyhow::Result<Value> {
    let members = args.group_members.max(2);
    let mut creator = Client::connect(args.nodes[0]).await?;
    let creator_id = creator.register(&format!("{prefix}g0"), PASSWORD).await?;
    creator.login(creator_id, PASSWORD).await?;
    creator.send(&json!({"msgid": 8, "id": creator_id, "groupname": format!("{prefix}group"), "groupdesc": "bench", "seq": 1})).await?;
    let created = creator.recv().await?;
    let group = created["groupid"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("create group: {created}"))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let received = Arc::new(AtomicU64::new(0));
    for i in 1..members {
        let node = args.nodes[i % args.nodes.len()];
        let mut setup = Client::connect(node).await?;
        let id = setup.register(&format!("{prefix}g{i}"), PASSWORD).await?;
        let mut member = Client::connect(node).await?;
        member.login(id, PASSWORD).await?;
        member
            .send(&json!({"msgid": 9, "id": id, "groupid": group, "seq": 2}))
            .await?;
        member.recv().await?;
        if i == 1 {
            // The group says one thing once it has a member, before the
            // others join, as a group that has spoken: a group's first
            // chat is numbered from its epoch's floor (not 1), a gap that
            // every member's writer would read the log for once. The first
            // member reads it here, before it is measured.
            creator
                .send(&serde_json::from_str(&chat_frame(
                    creator_id,
                    Target::Group(group),
                    9,
                    0,
                    0,
                    "before the members",
                ))?)
                .await?;
            tokio::time::timeout(Duration::from_secs(10), member.recv())
                .await
                .map_err(|_| anyhow::anyhow!("the group's first chat did not arrive"))??;
        }
        spawn_receiver(member, false, samples.clone(), received.clone());
    }
    let receivers = (members - 1) as u64;
    let rate = (args.rate / receivers).max(1);
    let pad = "x".repeat(args.size.saturating_sub(40));
    let every = Duration::from_secs_f64(1.0 / rate as f64);
    // What the members cost while nothing is said (presence upkeep,
    // Redis's cron over their connections): subtracted below, so the line
    // says what a group message adds.
    // Redis calls are counted per second of the idle window.
    let idle_calls = redis_calls::snapshot(&args.redis_info).await;
    let idle = if args.pids.is_empty() {
        Value::Null
    } else {
        let before = procs::snapshot(&args.pids);
        tokio::time::sleep(IDLE_WINDOW).await;
        procs::spent(&args.pids, &before, 1, 1.0, "idle window")
    };
    let idle_calls = match (idle_calls, redis_calls::snapshot(&args.redis_info).await) {
        (Some(before), Some(now)) => redis_calls::per_unit(&before, &now, IDLE_WINDOW.as_secs()),
        _ => Value::Null,
    };
    let calls = redis_calls::snapshot(&args.redis_info).await;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let before = procs::snapshot(&args.pids);
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < Duration::from_secs(args.duration) {
        ticker.tick().await;
        creator
            .queue(&serde_json::from_str(&chat_frame(
                creator_id,
                Target::Group(group),
                3,
                0,
                seq,
                &pad,
            ))?)
            .await?;
        creator.flush().await?;
        seq += 1;
    }
    drain(&received, seq * receivers).await;
    // What one group message cost each process (all its deliveries).
    let cpu = if args.pids.is_empty() {
        Value::Null
    } else {
        procs::spent(&args.pids, &before, seq, 1.0, "group message")
    };
    let mut result = tally(3, &samples, seq, receivers, started, Instant::now());
    // Per group message (the idle window's per second, for comparison).
    let redis_calls = match (calls, redis_calls::snapshot(&args.redis_info).await) {
        (Some(before), Some(now)) => redis_calls::per_unit(&before, &now, seq),
        _ => Value::Null,
    };
    Ok(json!({
        "members": members,
        "messages_per_sec_offered": rate,
        "result": result.json(),
        "cpu": cpu,
        "idle_cpu": idle,
        "redis_calls": redis_calls,
        "idle_redis_calls_per_sec": idle_calls,
    }))
}
