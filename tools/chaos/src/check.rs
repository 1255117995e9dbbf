//! The checker: reads a run's history (`manifest.json`, every client's
//! JSONL events, `faults.jsonl`) and judges it.
//!
//! - **lost**: a chat the server accepted (errno 0) that its receiver never
//!   showed. For clients that acknowledge, "showed" follows the README's
//!   rule: a chat whose `rseq` is not above every `rseq` shown before is a
//!   repeat and dropped, and so is a group chat (no `rseq`, a `mid`, `conv`
//!   "g:GID") whose `cseq` is not above every one shown in that group (any
//!   other chat without `rseq` is shown). A lost chat that was received but
//!   dropped by that rule says so.
//! - **twice**: a chat shown more than once by a client that acknowledges.
//! - **out of order**: per (sender, receiver) and conversation (one-to-one,
//!   or the pair's group), the first showing of each chat in the order the
//!   sender's chats were accepted (a sender has one chat in flight at a
//!   time, so that is its sending order). Order across the two
//!   conversations is not promised: they take different paths.
//! - **classic_dups** (not a failure): a classic receiver got a chat again.
//! - **classic_window** (not a failure, bounded): a chat a vanished classic
//!   client's TCP had acknowledged before it vanished but the client never
//!   read (recorded as `window` when it vanished), and never got later.
//! - **misdelivered**: a chat shown by a client it was not sent to.
//!
//! One summary line; the details of every violation above it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
};

use anyhow::Context as _;
use serde_json::Value;

use crate::client::Kind;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub backend: String,
    pub seconds: u64,
    pub seed: u64,
    pub started_ms: u64,
    pub go_ms: u64,
    pub stop_ms: u64,
    pub faults: usize,
    pub clients: Vec<ClientInfo>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    pub name: String,
    pub kind: Kind,
    pub user: i64,
    /// Senders: the receiver's user id.
    pub to: i64,
    /// Senders: the group they share with their receiver (0: none).
    #[serde(default)]
    pub group: i64,
    pub gateways: Vec<String>,
}

pub struct Outcome {
    pub pass: bool,
    pub summary: String,
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

struct Accepted {
    cmid: String,
    sender: String,
    receiver: String,
    t: u64,
    /// "d" (one-to-one) or "g" (the pair's group): order is kept per
    /// conversation, and `index` counts within it.
    conv: String,
    index: usize,
}

struct Fault {
    id: u64,
    kind: String,
    target: String,
    start: u64,
    end: u64,
}

struct History {
    manifest: Manifest,
    events: HashMap<String, Vec<Value>>,
    faults: Vec<Fault>,
}

impl History {
    fn load(dir: &Path) -> anyhow::Result<Self> {
        let manifest: Manifest = serde_json::from_str(
            &std::fs::read_to_string(dir.join("manifest.json")).context("read manifest.json")?,
        )?;
        let events = manifest
            .clients
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    read_jsonl(&dir.join("clients").join(format!("{}.jsonl", c.name))),
                )
            })
            .collect();
        let mut faults: BTreeMap<u64, Fault> = BTreeMap::new();
        for e in read_jsonl(&dir.join("faults.jsonl")) {
            let id = e["fault"].as_u64().unwrap_or(0);
            let f = faults.entry(id).or_insert_with(|| Fault {
                id,
                kind: e["kind"].as_str().unwrap_or("").to_owned(),
                target: e["target"].as_str().unwrap_or("").to_owned(),
                start: e["t"].as_u64().unwrap_or(0),
                end: u64::MAX,
            });
            if e["phase"] == "end" {
                f.end = e["healthy"].as_u64().unwrap_or(u64::MAX);
            }
        }
        Ok(Self {
            manifest,
            events,
            faults: faults.into_values().collect(),
        })
    }

    fn receiver_of_user(&self) -> HashMap<i64, String> {
        self.manifest
            .clients
            .iter()
            .filter(|c| c.kind != Kind::Sender)
            .map(|c| (c.user, c.name.clone()))
            .collect()
    }

    fn accepted(&self) -> Vec<Accepted> {
        let receivers = self.receiver_of_user();
        let mut out = Vec::new();
        for c in self
            .manifest
            .clients
            .iter()
            .filter(|c| c.kind == Kind::Sender)
        {
            let Some(receiver) = receivers.get(&c.to) else {
                continue;
            };
            let mut seen = HashSet::new();
            let mut per_conv: HashMap<String, usize> = HashMap::new();
            for e in self.events.get(&c.name).into_iter().flatten() {
                if e["ev"] == "accepted" {
                    let cmid = e["cmid"].as_str().unwrap_or("").to_owned();
                    if seen.insert(cmid.clone()) {
                        let conv = e["conv"].as_str().unwrap_or("d").to_owned();
                        let index = per_conv.entry(conv.clone()).or_default();
                        *index += 1;
                        out.push(Accepted {
                            cmid,
                            sender: c.name.clone(),
                            receiver: receiver.clone(),
                            t: e["t"].as_u64().unwrap_or(0),
                            conv,
                            index: *index,
                        });
                    }
                }
            }
        }
        out
    }

    fn count(&self, kind: Kind, ev: &str) -> usize {
        self.manifest
            .clients
            .iter()
            .filter(|c| c.kind == kind)
            .map(|c| {
                self.events
                    .get(&c.name)
                    .map_or(0, |es| es.iter().filter(|e| e["ev"] == ev).count())
            })
            .sum()
    }

    fn rel(&self, t: u64) -> f64 {
        t.saturating_sub(self.manifest.started_ms) as f64 / 1000.0
    }

    fn faults_at(&self, t: u64) -> String {
        let active: Vec<String> = self
            .faults
            .iter()
            .filter(|f| f.start <= t && t <= f.end)
            .map(|f| {
                let end = if f.end == u64::MAX {
                    "?".to_owned()
                } else {
                    format!("{:.1}", self.rel(f.end))
                };
                format!(
                    "#{} {} {} {:.1}-{} s",
                    f.id,
                    f.kind,
                    f.target,
                    self.rel(f.start),
                    end
                )
            })
            .collect();
        if active.is_empty() {
            "none".into()
        } else {
            active.join(", ")
        }
    }

    /// The receiver's connection events around `t` (logins, closes, vanishes).
    fn receiver_story(&self, receiver: &str, from: u64, to: u64) -> String {
        let parts: Vec<String> = self
            .events
            .get(receiver)
            .into_iter()
            .flatten()
            .filter(|e| {
                let t = e["t"].as_u64().unwrap_or(0);
                t + 5_000 >= from && t <= to + 30_000
            })
            .filter(|e| {
                matches!(
                    e["ev"].as_str(),
                    Some(
                        "login" | "conn-lost" | "silence-close" | "vanish" | "back" | "final-start"
                    )
                ) && !(e["ev"] == "login" && e["errno"] != 0)
            })
            .take(8)
            .map(|e| {
                let gw = e["gw"]
                    .as_str()
                    .map(|g| format!(" {g}"))
                    .unwrap_or_default();
                format!(
                    "{} {:.1}{gw}",
                    e["ev"].as_str().unwrap_or(""),
                    self.rel(e["t"].as_u64().unwrap_or(0))
                )
            })
            .collect();
        parts.join("; ")
    }
}

/// Accepted chats with no receipt at all yet (the drain waits for none).
pub fn missing(dir: &Path) -> anyhow::Result<(usize, usize)> {
    let history = History::load(dir)?;
    let accepted = history.accepted();
    let mut got: HashSet<(String, String)> = HashSet::new();
    for (name, events) in &history.events {
        for e in events {
            if e["ev"] == "recv" || e["ev"] == "window" {
                got.insert((name.clone(), e["cmid"].as_str().unwrap_or("").to_owned()));
            }
        }
    }
    let missing = accepted
        .iter()
        .filter(|a| !got.contains(&(a.receiver.clone(), a.cmid.clone())))
        .count();
    Ok((accepted.len(), missing))
}

/// Shows at most this many lines of one kind of violation.
const MAX_DETAILS: usize = 25;

pub fn check(dir: &Path, could_not_run: Option<&str>) -> anyhow::Result<Outcome> {
    let history = History::load(dir)?;
    let accepted = history.accepted();
    let kinds: HashMap<String, Kind> = history
        .manifest
        .clients
        .iter()
        .map(|c| (c.name.clone(), c.kind))
        .collect();
    let users: HashMap<String, i64> = history
        .manifest
        .clients
        .iter()
        .map(|c| (c.name.clone(), c.user))
        .collect();
    let sender_of_cmid = |cmid: &str| cmid.split('-').next().unwrap_or("").to_owned();

    // Per receiver: what it showed (in order), dropped repeats, windows.
    struct Shown {
        cmid: String,
        t: u64,
        via: String,
    }
    let mut shown: HashMap<String, Vec<Shown>> = HashMap::new();
    let mut dropped: HashMap<(String, String), u64> = HashMap::new();
    let mut window: HashSet<(String, String)> = HashSet::new();
    let mut window_max = 0usize;
    let mut window_total_events = 0usize;
    let mut final_failed = Vec::new();
    for c in history
        .manifest
        .clients
        .iter()
        .filter(|c| c.kind != Kind::Sender)
    {
        let mut max_rseq = 0u64;
        // Group log entries: a device drops one whose number in its group
        // it has seen (as it drops an inbox entry by `rseq`).
        let mut max_cseq: HashMap<String, u64> = HashMap::new();
        let mut this_window = 0usize;
        let mut finished = false;
        for e in history.events.get(&c.name).into_iter().flatten() {
            match e["ev"].as_str() {
                Some("recv") => {
                    let cmid = e["cmid"].as_str().unwrap_or("").to_owned();
                    let t = e["t"].as_u64().unwrap_or(0);
                    if c.kind.acks()
                        && let Some(rseq) = e["rseq"].as_u64()
                    {
                        if rseq <= max_rseq {
                            dropped.insert((c.name.clone(), cmid), rseq);
                            continue;
                        }
                        max_rseq = rseq;
                    } else if c.kind.acks()
                        && let (Some(conv), Some(cseq)) = (e["conv"].as_str(), e["cseq"].as_u64())
                        && conv.starts_with("g:")
                        && e["mid"].is_string()
                    {
                        let max = max_cseq.entry(conv.to_owned()).or_default();
                        if cseq <= *max {
                            dropped.insert((c.name.clone(), cmid), cseq);
                            continue;
                        }
                        *max = cseq;
                    }
                    shown.entry(c.name.clone()).or_default().push(Shown {
                        cmid,
                        t,
                        via: e["via"].as_str().unwrap_or("").to_owned(),
                    });
                }
                Some("vanish") => this_window = 0,
                Some("window") => {
                    this_window += 1;
                    window_total_events += 1;
                    window_max = window_max.max(this_window);
                    window.insert((c.name.clone(), e["cmid"].as_str().unwrap_or("").to_owned()));
                }
                Some("final-done") => finished = e["ok"] == true,
                _ => {}
            }
        }
        if !finished {
            final_failed.push(c.name.clone());
        }
    }

    let mut details: Vec<String> = Vec::new();
    let mut section = |title: &str, lines: Vec<String>| {
        if lines.is_empty() {
            return;
        }
        details.push(format!("{title} ({}):", lines.len()));
        for line in lines.iter().take(MAX_DETAILS) {
            details.push(format!("  {line}"));
        }
        if lines.len() > MAX_DETAILS {
            details.push(format!("  ... and {} more", lines.len() - MAX_DETAILS));
        }
    };

    // Counts per (receiver, cmid).
    let mut times: HashMap<(String, String), Vec<&Shown>> = HashMap::new();
    for (receiver, list) in &shown {
        for s in list {
            times
                .entry((receiver.clone(), s.cmid.clone()))
                .or_default()
                .push(s);
        }
    }
    let accepted_set: HashMap<(String, String), &Accepted> = accepted
        .iter()
        .map(|a| ((a.receiver.clone(), a.cmid.clone()), a))
        .collect();

    // (i) lost, (v) classic window. Lost chats are shown in runs: one
    // line per stretch of consecutive chats of one sender.
    let mut lost_chats: Vec<(&Accepted, Option<u64>)> = Vec::new();
    let mut classic_window = 0usize;
    for a in &accepted {
        let key = (a.receiver.clone(), a.cmid.clone());
        if times.contains_key(&key) {
            continue;
        }
        if window.contains(&key) {
            classic_window += 1;
            continue;
        }
        lost_chats.push((a, dropped.get(&key).copied()));
    }
    lost_chats.sort_by_key(|(a, _)| (a.sender.clone(), a.conv.clone(), a.index));
    // Where the server still holds chats at the end (dumped by the run).
    let held_in = |file: &str| -> HashSet<String> {
        std::fs::read_to_string(dir.join(file))
            .unwrap_or_default()
            .split("chaos ")
            .skip(1)
            .filter_map(|rest| {
                let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))?;
                Some(rest[..end].to_owned())
            })
            .collect()
    };
    let in_redis = held_in("redis_inboxes.txt");
    let in_offline = held_in("offline_messages.tsv");
    let whereabouts = |cmid: &str| -> &'static str {
        match (in_redis.contains(cmid), in_offline.contains(cmid)) {
            (true, true) => "still in its Redis inbox and in the offline store",
            (true, false) => "still in its Redis inbox",
            (false, true) => "still in the offline store",
            (false, false) => {
                "in neither the Redis inbox nor the offline store: counted as delivered"
            }
        }
    };
    let mut lost = Vec::new();
    let mut i = 0;
    while i < lost_chats.len() {
        let (first, first_dropped) = lost_chats[i];
        let mut j = i;
        while j + 1 < lost_chats.len()
            && lost_chats[j + 1].0.sender == first.sender
            && lost_chats[j + 1].0.conv == first.conv
            && lost_chats[j + 1].0.index == lost_chats[j].0.index + 1
            && lost_chats[j + 1].1.is_some() == first_dropped.is_some()
        {
            j += 1;
        }
        let last = lost_chats[j].0;
        let kind = kinds.get(&first.receiver).copied().unwrap_or(Kind::Device);
        let what = if i == j {
            first.cmid.clone()
        } else {
            format!("{}..{} ({} chats)", first.cmid, last.cmid, j - i + 1)
        };
        let mut note = if first_dropped.is_some() {
            " (received, but with an rseq not above one already shown: dropped as a repeat)"
                .to_owned()
        } else {
            String::new()
        };
        if dir.join("redis_inboxes.txt").exists() {
            let (w_first, w_last) = (whereabouts(&first.cmid), whereabouts(&last.cmid));
            if w_first == w_last {
                note.push_str(&format!("; at the end {w_first}"));
            } else {
                note.push_str(&format!(
                    "; at the end, the first {w_first}, the last {w_last}"
                ));
            }
        }
        lost.push(format!(
            "{what} ({} user {} -> {} user {}, {:?}) accepted {:.1}-{:.1} s{note}; faults then: {}; receiver: {}",
            first.sender, users.get(&first.sender).unwrap_or(&0), first.receiver,
            users.get(&first.receiver).unwrap_or(&0), kind, history.rel(first.t), history.rel(last.t),
            history.faults_at(first.t), history.receiver_story(&first.receiver, first.t, last.t),
        ));
        i = j + 1;
    }
    let lost_count = lost_chats.len();

    // (ii) twice, (iv) classic duplicates, misdelivered.
    let mut twice = Vec::new();
    let mut classic_dups = 0usize;
    let mut misdelivered = Vec::new();
    let mut unconfirmed = 0usize;
    let mut sorted: Vec<_> = times.iter().collect();
    sorted.sort_by_key(|((r, c), _)| (r.clone(), c.clone()));
    for ((receiver, cmid), list) in sorted {
        let kind = kinds.get(receiver).copied().unwrap_or(Kind::Device);
        let sent_to = history
            .manifest
            .clients
            .iter()
            .find(|c| c.name == sender_of_cmid(cmid))
            .map(|c| c.to);
        if sent_to != users.get(receiver).copied() {
            misdelivered.push(format!(
                "{cmid} shown by {receiver} (user {:?}); it was sent to user {sent_to:?}",
                users.get(receiver)
            ));
            continue;
        }
        if !accepted_set.contains_key(&(receiver.clone(), cmid.clone())) {
            unconfirmed += 1;
        }
        if list.len() > 1 {
            if kind.acks() {
                let at: Vec<String> = list
                    .iter()
                    .map(|s| format!("{:.1} s ({})", history.rel(s.t), s.via))
                    .collect();
                twice.push(format!(
                    "{cmid} shown {} times by {receiver} ({kind:?}) at {}; faults then: {}",
                    list.len(),
                    at.join(", "),
                    history.faults_at(list[1].t)
                ));
            } else {
                classic_dups += 1;
            }
        }
    }

    // (iii) order per (sender, receiver): one line per stretch of
    // consecutive chats shown late after the same later chat.
    struct Late<'a> {
        receiver: String,
        a: &'a Accepted,
        shown_at: u64,
        via: String,
        after: String,
        after_at: u64,
    }
    let mut late: Vec<Late> = Vec::new();
    for (receiver, list) in &shown {
        let mut first_seen = HashSet::new();
        // (sender, conversation) -> (highest acceptance index shown so
        // far, its cmid, time)
        let mut highest: HashMap<(String, String), (usize, String, u64)> = HashMap::new();
        for s in list {
            if !first_seen.insert(s.cmid.clone()) {
                continue;
            }
            let Some(a) = accepted_set.get(&(receiver.clone(), s.cmid.clone())) else {
                continue;
            };
            let key = (a.sender.clone(), a.conv.clone());
            match highest.get(&key) {
                Some((index, after, at)) if *index > a.index => late.push(Late {
                    receiver: receiver.clone(),
                    a,
                    shown_at: s.t,
                    via: s.via.clone(),
                    after: after.clone(),
                    after_at: *at,
                }),
                _ => {
                    highest.insert(key, (a.index, s.cmid.clone(), s.t));
                }
            }
        }
    }
    late.sort_by_key(|l| {
        (
            l.receiver.clone(),
            l.a.sender.clone(),
            l.a.conv.clone(),
            l.a.index,
        )
    });
    let out_of_order_count = late.len();
    let mut out_of_order = Vec::new();
    let mut i = 0;
    while i < late.len() {
        let first = &late[i];
        let mut j = i;
        while j + 1 < late.len()
            && late[j + 1].receiver == first.receiver
            && late[j + 1].a.sender == first.a.sender
            && late[j + 1].a.conv == first.a.conv
            && late[j + 1].a.index == late[j].a.index + 1
            && late[j + 1].after == first.after
        {
            j += 1;
        }
        let last = &late[j];
        let what = if i == j {
            format!(
                "{} (accepted at {:.1} s)",
                first.a.cmid,
                history.rel(first.a.t)
            )
        } else {
            format!(
                "{}..{} ({} chats, accepted {:.1}-{:.1} s)",
                first.a.cmid,
                last.a.cmid,
                j - i + 1,
                history.rel(first.a.t),
                history.rel(last.a.t)
            )
        };
        out_of_order.push(format!(
            "{what} first shown by {} ({:?}) at {:.1} s ({}), after {} (shown at {:.1} s); faults then: {}",
            first.receiver, kinds.get(&first.receiver).copied().unwrap_or(Kind::Device),
            history.rel(first.shown_at), first.via, first.after, history.rel(first.after_at),
            history.faults_at(first.a.t)
        ));
        i = j + 1;
    }

    let refused = history.count(Kind::Sender, "refused");
    let unresolved = history.count(Kind::Sender, "unresolved");
    section(
        &format!("LOST: {lost_count} accepted chats never shown by their receiver, in runs"),
        lost.clone(),
    );
    section(
        "TWICE: shown more than once by a client that acknowledges",
        twice.clone(),
    );
    section(
        &format!(
            "OUT OF ORDER: {out_of_order_count} chats first shown after a chat their sender sent later, in runs"
        ),
        out_of_order.clone(),
    );
    section(
        "MISDELIVERED: shown by a client it was not sent to",
        misdelivered.clone(),
    );
    section(
        "FINAL LOGIN FAILED: receivers that could not log in once more at the end",
        final_failed.clone(),
    );
    let mut problems = Vec::new();
    if let Some(why) = could_not_run {
        problems.push(format!("could not run: {why}"));
    }
    if accepted.is_empty() {
        problems.push("no chat was accepted".to_owned());
    }
    for d in &details {
        println!("{d}");
    }
    for p in &problems {
        println!("{p}");
    }
    let pass = problems.is_empty()
        && lost_count == 0
        && twice.is_empty()
        && out_of_order_count == 0
        && misdelivered.is_empty()
        && final_failed.is_empty();
    let m = &history.manifest;
    let summary = format!(
        "chaos backend={} seconds={} seed={} faults={} accepted={} refused={} unresolved={} unconfirmed_shown={} lost={} twice={} out_of_order={} misdelivered={} final_login_failed={} classic_dups={} classic_window={} (max {} per vanish, {} frames held at vanishes) -> {}",
        m.backend,
        m.seconds,
        m.seed,
        m.faults,
        accepted.len(),
        refused,
        unresolved,
        unconfirmed,
        lost_count,
        twice.len(),
        out_of_order_count,
        misdelivered.len(),
        final_failed.len(),
        classic_dups,
        classic_window,
        window_max,
        window_total_events,
        if pass { "PASS" } else { "FAIL" }
    );
    Ok(Outcome { pass, summary })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run directory with `events` (client, JSON fields) for two pairs:
    /// s1 -> r1 (a device, user 2) and s2 -> r2 (classic, user 4).
    fn run_dir(name: &str, events: &[(&str, Value)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("chaos-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("clients")).expect("dir");
        let client = |name: &str, kind, user, to| ClientInfo {
            name: name.into(),
            kind,
            user,
            to,
            group: 0,
            gateways: Vec::new(),
        };
        let manifest = Manifest {
            backend: "single".into(),
            seconds: 1,
            seed: 7,
            started_ms: 0,
            go_ms: 0,
            stop_ms: 0,
            faults: 0,
            clients: vec![
                client("s1", Kind::Sender, 1, 2),
                client("r1", Kind::Device, 2, 0),
                client("s2", Kind::Sender, 3, 4),
                client("r2", Kind::ClassicVanish, 4, 0),
            ],
        };
        std::fs::write(
            dir.join("manifest.json"),
            serde_json::to_vec(&manifest).expect("json"),
        )
        .expect("write");
        let mut files: HashMap<&str, String> = HashMap::new();
        for (t, (client, fields)) in events.iter().enumerate() {
            let mut fields = fields.clone();
            fields["t"] = (t as u64 * 100).into();
            files
                .entry(client)
                .or_default()
                .push_str(&format!("{fields}\n"));
        }
        for (client, text) in files {
            std::fs::write(dir.join("clients").join(format!("{client}.jsonl")), text)
                .expect("write");
        }
        dir
    }

    fn accepted(cmid: &str) -> Value {
        serde_json::json!({"ev": "accepted", "cmid": cmid})
    }

    fn recv(cmid: &str, rseq: Option<u64>) -> Value {
        serde_json::json!({"ev": "recv", "cmid": cmid, "rseq": rseq, "via": "live"})
    }

    fn done() -> Value {
        serde_json::json!({"ev": "final-done", "ok": true})
    }

    #[test]
    fn every_violation_is_counted() {
        let dir = run_dir(
            "violations",
            &[
                ("s1", accepted("s1-1")),
                ("s1", accepted("s1-2")),
                ("s1", accepted("s1-3")),
                ("s1", accepted("s1-4")),
                ("r1", recv("s1-2", Some(1))),
                // Shown after a later one: out of order.
                ("r1", recv("s1-1", Some(2))),
                // Again with a new rseq: shown twice.
                ("r1", recv("s1-2", Some(3))),
                // An rseq already passed: dropped as a repeat, so lost; s1-4 never came.
                ("r1", recv("s1-3", Some(2))),
                ("r1", done()),
                ("s2", accepted("s2-1")),
                ("s2", accepted("s2-2")),
                ("s2", accepted("s2-3")),
                ("r2", recv("s2-1", None)),
                ("r2", recv("s2-1", None)),
                ("r2", recv("s2-2", None)),
                ("r2", serde_json::json!({"ev": "vanish"})),
                ("r2", serde_json::json!({"ev": "window", "cmid": "s2-3"})),
                ("r2", done()),
            ],
        );
        let outcome = check(&dir, None).expect("check");
        assert!(!outcome.pass, "{}", outcome.summary);
        for expected in [
            "accepted=7 ",
            "lost=2 ",
            "twice=1 ",
            "out_of_order=1 ",
            "classic_dups=1 ",
            "classic_window=1 ",
        ] {
            assert!(
                outcome.summary.contains(expected),
                "{expected} in {}",
                outcome.summary
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_clean_history_passes_and_an_unfinished_one_does_not() {
        let events = [
            ("s1", accepted("s1-1")),
            ("s1", accepted("s1-2")),
            ("r1", recv("s1-1", Some(1))),
            ("r1", recv("s1-2", None)),
            ("r1", done()),
            ("s2", accepted("s2-1")),
            ("r2", recv("s2-1", None)),
            ("r2", done()),
        ];
        let dir = run_dir("clean", &events);
        let outcome = check(&dir, None).expect("check");
        assert!(outcome.pass, "{}", outcome.summary);
        // The same history from a run that could not finish is no pass.
        assert!(!check(&dir, Some("interrupted")).expect("check").pass);
        let _ = std::fs::remove_dir_all(dir);
        // A receiver that never logged in at the end fails the run.
        let dir = run_dir("unfinished", &events[..7]);
        let outcome = check(&dir, None).expect("check");
        assert!(
            outcome.summary.contains("final_login_failed=1 "),
            "{}",
            outcome.summary
        );
        assert!(!outcome.pass);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn group_chats_are_dropped_by_their_number_and_ordered_within_their_conversation() {
        let group = |cmid: &str| serde_json::json!({"ev": "accepted", "cmid": cmid, "conv": "g"});
        let recv_group = |cmid: &str, cseq: u64| {
            serde_json::json!({"ev": "recv", "cmid": cmid, "rseq": null, "mid": cmid,
                "conv": "g:9", "cseq": cseq, "via": "live"})
        };
        let events = [
            ("s1", accepted("s1-1")),
            ("s1", group("s1-2")),
            ("s1", accepted("s1-3")),
            ("s1", group("s1-4")),
            // The group's chats come before the direct one sent earlier:
            // another conversation, no order between them.
            ("r1", recv_group("s1-2", 1)),
            ("r1", recv_group("s1-4", 2)),
            ("r1", recv("s1-1", Some(1))),
            ("r1", recv("s1-3", Some(2))),
            // Handed again after a reconnect: dropped by its number.
            ("r1", recv_group("s1-4", 2)),
            ("r1", done()),
            ("r2", done()),
        ];
        let dir = run_dir("groups", &events);
        let outcome = check(&dir, None).expect("check");
        assert!(outcome.pass, "{}", outcome.summary);
        let _ = std::fs::remove_dir_all(dir);
        // Within the group, order is checked.
        let events = [
            ("s1", group("s1-1")),
            ("s1", group("s1-2")),
            ("r1", recv_group("s1-2", 2)),
            ("r1", recv_group("s1-1", 1)),
            ("r1", done()),
            ("r2", done()),
        ];
        let dir = run_dir("groups-late", &events);
        let outcome = check(&dir, None).expect("check");
        // s1-1 came after s1-2 had raised the group's number: dropped
        // (a device would), so lost, not shown late.
        assert!(outcome.summary.contains("lost=1 "), "{}", outcome.summary);
        let _ = std::fs::remove_dir_all(dir);
    }
}
