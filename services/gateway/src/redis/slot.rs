//! Redis Cluster hash slots: which keys may share one script call or one
//! pipeline.
//!
//! On a cluster, a script or a pipeline must touch keys of one slot only
//! (else CROSSSLOT). Every key of a user carries the hash tag `{u:ID}`, so
//! "one slot" is "users whose tags hash alike". On a single Redis there is
//! no such rule and everything goes in one group: the same code batches for
//! both, only the grouping differs.

use std::sync::{
    Arc,
    atomic::{AtomicU32, AtomicU64, Ordering},
};

use redis::Value;

/// The hash slot of a key (CRC16/XMODEM of its hash tag, modulo 16384), as
/// Redis Cluster computes it.
pub fn of_key(key: &[u8]) -> u16 {
    crc16(hash_tag(key)) % 16_384
}

/// The hash slot of every key and channel of one user.
pub fn of_user(user: i64) -> u16 {
    of_key(format!("{{u:{user}}}").as_bytes())
}

/// A hash tag of slot `slot`: `{TAG}` puts a key there. Keys that hold one
/// value per slot (the counters' epoch marks) are named with it. Found once
/// by trying short tags until every slot has one.
pub fn tag_of_slot(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags: Vec<Option<String>> = vec![None; 16_384];
        let mut left = tags.len();
        let mut i = 0u32;
        while left > 0 {
            let tag = format!("s{i:x}");
            let slot = usize::from(crc16(tag.as_bytes()) % 16_384);
            if tags[slot].is_none() {
                tags[slot] = Some(tag);
                left -= 1;
            }
            i += 1;
        }
        tags.into_iter().map(Option::unwrap_or_default).collect()
    });
    &tags[usize::from(slot % 16_384)]
}

/// The part of a key that is hashed: the first `{...}` with something
/// inside, else the whole key.
fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Splits items into the groups that may share a script call or a
/// pipeline: by the slot of each item's user on a cluster, one group on a
/// single Redis. Groups keep the items' order; each holds item indices.
pub fn groups(sharded: bool, users: impl ExactSizeIterator<Item = i64>) -> Vec<Vec<usize>> {
    if !sharded {
        return vec![(0..users.len()).collect()];
    }
    let mut by_slot: std::collections::BTreeMap<u16, Vec<usize>> = Default::default();
    for (index, user) in users.enumerate() {
        by_slot.entry(of_user(user)).or_default().push(index);
    }
    by_slot.into_values().collect()
}

/// Which slots belong to a master that has a replica online, from
/// `CLUSTER SHARDS`: an append waits for a replica only where there is
/// one (WAIT on a shard without one would wait out its timeout every time).
/// Also when each slot was last seen with one: just after a failover the
/// new master has no replica yet, but a chat that failed during it is still
/// worth retrying.
pub struct ReplicaMap {
    bits: Vec<AtomicU64>,
    /// Per slot, seconds since the map was made when last seen replicated.
    seen: Vec<AtomicU32>,
    epoch: std::time::Instant,
}

/// How long a slot counts as "had a replica lately".
const LATELY: std::time::Duration = std::time::Duration::from_secs(15);

impl ReplicaMap {
    pub fn new() -> Self {
        Self {
            bits: (0..SLOTS / 64).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            epoch: std::time::Instant::now(),
        }
    }

    pub fn has_replica(&self, slot: u16) -> bool {
        let slot = usize::from(slot) % SLOTS;
        self.bits[slot / 64].load(Ordering::Relaxed) & (1 << (slot % 64)) != 0
    }

    /// Whether the slot had a replica online within the last 15 s.
    pub fn had_replica_lately(&self, slot: u16) -> bool {
        let slot = usize::from(slot) % SLOTS;
        let seen = self.seen[slot].load(Ordering::Relaxed);
        seen != 0 && self.now() <= seen + u32::try_from(LATELY.as_secs()).unwrap_or(15)
    }

    fn now(&self) -> u32 {
        // From 1, so 0 means "never".
        u32::try_from(self.epoch.elapsed().as_secs()).unwrap_or(u32::MAX) + 1
    }

    /// Takes in the shards of a `CLUSTER SHARDS` reply.
    pub fn update(&self, shards: &[Shard]) {
        let now = self.now();
        let mut bits = vec![0_u64; SLOTS / 64];
        for shard in shards.iter().filter(|s| s.replicated) {
            for &(start, end) in &shard.ranges {
                for slot in start..=end {
                    let slot = usize::from(slot);
                    bits[slot / 64] |= 1 << (slot % 64);
                    self.seen[slot].store(now, Ordering::Relaxed);
                }
            }
        }
        for (word, value) in self.bits.iter().zip(bits) {
            word.store(value, Ordering::Relaxed);
        }
    }
}

impl Default for ReplicaMap {
    fn default() -> Self {
        Self::new()
    }
}

/// A shard of a Redis Cluster as `CLUSTER SHARDS` tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// `host:port` of its master, when one is online.
    pub master: Option<String>,
    /// Slot ranges, inclusive.
    pub ranges: Vec<(u16, u16)>,
    /// Whether a replica is online.
    pub replicated: bool,
}

/// Slot → the address of its master (`host:port`), when one is online.
pub type Owners = Vec<Option<Arc<str>>>;

/// Slot → the address of its master, from the shards.
pub fn owners(shards: &[Shard]) -> Owners {
    let mut owners = vec![None; SLOTS];
    for shard in shards {
        let Some(master) = &shard.master else {
            continue;
        };
        let master: Arc<str> = master.as_str().into();
        for &(start, end) in &shard.ranges {
            for slot in start..=end {
                owners[usize::from(slot)] = Some(master.clone());
            }
        }
    }
    owners
}

/// The items whose slots are `slots` (in order), by the master owning each
/// slot, and those whose slot has no master online (to be routed by
/// redis-rs, which finds one).
pub fn by_owner(
    owners: &Owners,
    slots: impl Iterator<Item = u16>,
) -> (std::collections::HashMap<Arc<str>, Vec<usize>>, Vec<usize>) {
    let mut by_shard: std::collections::HashMap<Arc<str>, Vec<usize>> =
        std::collections::HashMap::new();
    let mut unowned = Vec::new();
    for (item, slot) in slots.enumerate() {
        match owners.get(usize::from(slot)).cloned().flatten() {
            Some(owner) => by_shard.entry(owner).or_default().push(item),
            None => unowned.push(item),
        }
    }
    (by_shard, unowned)
}

/// Reads a `CLUSTER SHARDS` reply (RESP2 arrays or RESP3 maps), in slot
/// order (Redis lists the shards in no fixed order).
pub fn shards(reply: &Value) -> Vec<Shard> {
    let mut shards = items(reply)
        .into_iter()
        .map(|shard| {
            let nodes = field(shard, "nodes").map(items).unwrap_or_default();
            let online = |node: &Value, role: &str| {
                text(field(node, "role")) == Some(role)
                    && text(field(node, "health")) == Some("online")
            };
            let master = nodes.iter().find(|n| online(n, "master")).and_then(|node| {
                let host = text(field(node, "endpoint"))
                    .filter(|e| !e.is_empty() && *e != "?")
                    .or_else(|| text(field(node, "ip")))?;
                let port = field(node, "port").and_then(int)?;
                Some(format!("{host}:{port}"))
            });
            let ranges = field(shard, "slots")
                .map(items)
                .unwrap_or_default()
                .chunks_exact(2)
                .filter_map(|r| {
                    let start = u16::try_from(int(r[0])?).ok()?;
                    let end = u16::try_from(int(r[1])?).ok()?;
                    (start <= end && usize::from(end) < SLOTS).then_some((start, end))
                })
                .collect();
            Shard {
                master,
                ranges,
                replicated: nodes.iter().any(|n| online(n, "replica")),
            }
        })
        .collect::<Vec<_>>();
    shards.sort_by(|a, b| a.ranges.cmp(&b.ranges));
    shards
}

const SLOTS: usize = 16_384;

fn items(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items.iter().collect(),
        Value::Map(pairs) => pairs.iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The value after `name` in a list of alternating names and values (or a map).
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let items = items(value);
    items
        .chunks_exact(2)
        .find(|pair| text(Some(pair[0])) == Some(name))
        .map(|pair| pair[1])
}

fn text(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(Some(other))?.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in [0u16, 1, 866, 5_000, 16_383] {
            let tag = tag_of_slot(slot);
            assert_eq!(
                of_key(format!("x{{{tag}}}:epoch").as_bytes()),
                slot,
                "{tag}"
            );
        }
        assert!((0..16_384u16).all(|s| !tag_of_slot(s).is_empty()));
    }

    #[test]
    fn slots_match_redis_cluster() {
        // Values from `CLUSTER KEYSLOT` on Redis 7.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(of_key(b"foo"), 12_182);
        assert_eq!(
            of_key(b"{user1000}.following"),
            of_key(b"{user1000}.followers")
        );
        assert_eq!(of_key(b"foo{}{bar}"), of_key(b"foo{}{bar}"));
        assert_eq!(of_key(b"{}bar"), crc16(b"{}bar") % 16_384);
        assert_eq!(of_key(b"cc:{u:42}:in"), of_key(b"{u:42}"));
        assert_eq!(of_user(42), of_key(b"other:{u:42}"));
    }

    #[test]
    fn groups_follow_slots_on_a_cluster_only() {
        let users = [1_i64, 2, 1, 3];
        assert_eq!(groups(false, users.into_iter()), vec![vec![0, 1, 2, 3]]);
        let sharded = groups(true, users.into_iter());
        assert_eq!(sharded.iter().map(Vec::len).sum::<usize>(), 4);
        assert!(sharded.iter().any(|g| g == &vec![0, 2]));
    }

    #[test]
    fn replica_map_reads_cluster_shards() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let node = |role: &str, health: &str, port: i64| {
            Value::Array(vec![
                bulk("id"),
                bulk("abc"),
                bulk("port"),
                Value::Int(port),
                bulk("ip"),
                bulk("127.0.0.1"),
                bulk("endpoint"),
                bulk("127.0.0.1"),
                bulk("role"),
                bulk(role),
                bulk("health"),
                bulk(health),
            ])
        };
        let shard = |start: i64, end: i64, nodes: Vec<Value>| {
            Value::Array(vec![
                bulk("slots"),
                Value::Array(vec![Value::Int(start), Value::Int(end)]),
                bulk("nodes"),
                Value::Array(nodes),
            ])
        };
        let reply = Value::Array(vec![
            shard(
                0,
                99,
                vec![
                    node("master", "online", 7001),
                    node("replica", "online", 7004),
                ],
            ),
            shard(
                100,
                16_383,
                vec![
                    node("master", "failed", 7002),
                    node("replica", "failed", 7005),
                ],
            ),
        ]);
        let parsed = shards(&reply);
        assert_eq!(parsed[0].master.as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(parsed[1].master, None);
        assert_eq!(parsed[1].ranges, vec![(100, 16_383)]);
        let map = ReplicaMap::new();
        map.update(&parsed);
        assert!(map.has_replica(0) && map.has_replica(99));
        assert!(!map.has_replica(100) && !map.has_replica(16_383));
        assert!(map.had_replica_lately(0) && !map.had_replica_lately(100));
        let owners = owners(&parsed);
        assert_eq!(owners[99].as_deref(), Some("127.0.0.1:7001"));
        assert_eq!(owners[100], None);
    }
}
