//! Topology: which shard owns which slots, and which have a replica.
//!
//! On a Redis Cluster the slot map (`CLUSTER SHARDS`) is read at connect,
//! every second and at once when the subscriber asks; it feeds the
//! subscriber (where to subscribe), the appender and the grouped pipelines
//! (where to send a slot's work) and the replica map (whether an append
//! waits for a replica, whether a failure may soon pass). A single Redis is
//! one shard that owns every slot, never read again.

use std::{sync::Arc, time::Duration};

use super::{Redis, slot};

impl Redis {
    /// Reads the slot map: which master owns which slots, and which have a
    /// replica online (cluster only).
    pub(super) async fn read_slot_map(&self) {
        let reply: Result<redis::Value, _> = redis::cmd("CLUSTER")
            .arg("SHARDS")
            .query_async(&mut self.commands.clone())
            .await;
        match reply {
            Ok(reply) => {
                let shards = slot::shards(&reply);
                self.replicas.update(&shards);
                self.topology.send_if_modified(|current| {
                    let changed = **current != shards;
                    if changed {
                        tracing::info!(shards = ?shards.iter().map(|s| (&s.master, &s.ranges)).collect::<Vec<_>>(), "redis cluster slot map");
                        *self.owners.write().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(slot::owners(&shards));
                        *current = Arc::new(shards);
                    }
                    changed
                });
            }
            Err(e) => tracing::debug!(error = %e, "cannot read CLUSTER SHARDS"),
        }
    }

    /// Keeps the slot map current: every second, and at once when the
    /// subscriber asks (a connection failed, a slot moved).
    pub(super) async fn watch_slot_map(self, refresh: Arc<tokio::sync::Notify>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = refresh.notified() => {
                    // Not more often than every 100 ms.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            self.read_slot_map().await;
        }
    }

    /// Whether this is a Redis Cluster.
    pub fn is_sharded(&self) -> bool {
        self.sharded
    }

    /// Whether a failed append to these users may soon work again: on a
    /// cluster, when a shard of theirs has (or just had) a replica that can
    /// take over.
    pub fn failover_possible(&self, users: &[i64]) -> bool {
        self.sharded
            && users
                .iter()
                .any(|u| self.replicas.had_replica_lately(slot::of_user(*u)))
    }

    /// Slot → the address of its master, as last read (cluster only).
    pub(super) fn owners(&self) -> Arc<slot::Owners> {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
