//! The `history-table` scenario's side of [`History`]: a table of chats
//! written to the streams as gateways write them and drained by the
//! service, and `GetHistory` timed on it over gRPC.

use std::time::Instant;

use anyhow::Context as _;
use clusterchat_proto::history::v1::{
    GetHistoryRequest, history_service_client::HistoryServiceClient,
};
use serde_json::{Value, json};

use super::{History, PARTITIONS, now_millis};

/// What gateways give XADD as `MAXLEN ~` (the stream contract).
const STREAM_MAX_LEN: u64 = 200_000;
/// Users of the table's conversations start here (user ids the bench's
/// registrations never reach).
const TABLE_USERS_FROM: i64 = 1_000_000_000;
/// First sequence number of every table conversation.
const TABLE_SEQ_FROM: u64 = 1_000_000;

impl History {
    /// Writes `rows` chats to the streams as gateways do, over
    /// `conversations` 1:1 conversations (`rows / conversations` each),
    /// with the service stopped, then lets it drain them: its ingest
    /// capacity on a large backlog, and the table `GetHistory` is timed on.
    pub async fn fill_table(
        &self,
        rows: u64,
        conversations: u64,
        size: usize,
        watched: &[crate::procs::Watched],
    ) -> anyhow::Result<Value> {
        let paused = self.pause().await?;
        let per_conversation = rows.div_ceil(conversations);
        let text = "x".repeat(size);
        let mark = now_millis();
        let at = mark * 1000;
        let started = Instant::now();
        let mut redis = self.redis.clone();
        let mut pipe = redis::pipe();
        // Round by round, so every conversation grows at once as in life
        // (and the streams interleave them).
        for i in 0..rows {
            let (c, round) = (i % conversations, i / conversations);
            let (a, b) = table_users(c);
            let conv = format!("d:{a}:{b}");
            let seq = TABLE_SEQ_FROM + round;
            let mid = format!("bench{mark}-{c}-{round}");
            let (from, to) = if round % 2 == 0 { (a, b) } else { (b, a) };
            let frame = format!(
                r#"{{"msgid":6,"id":{from},"name":"u{from}","toid":{to},"msg":"{text}","time":"2026-01-01 00:00:00","conv":"{conv}","cseq":{seq},"mid":"{mid}"}}"#
            );
            pipe.cmd("XADD")
                .arg(self.key(partition(&conv)))
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAX_LEN)
                .arg("*")
                // One field, as the gateways write a chat.
                .arg("m")
                .arg(format!("{conv} {seq} {mid} {from} {} \n{frame}", at + i))
                .ignore();
            if (i + 1) % 2000 == 0 || i + 1 == rows {
                let () = pipe.query_async(&mut redis).await?;
                pipe = redis::pipe();
            }
        }
        let written = rows;
        let wrote_in = started.elapsed().as_secs_f64();
        eprintln!("  wrote {written} entries in {wrote_in:.1} s; draining ...");
        let drain = paused.resume_and_drain(self, watched).await?;
        Ok(json!({
            "rows": written,
            "conversations": conversations,
            "per_conversation": per_conversation,
            "text_bytes": size,
            "written_in_seconds": wrote_in,
            "drain": drain,
        }))
    }

    /// `calls` GetHistory of `limit` one after another on the table
    /// [`Self::fill_table`] made: random conversations, half the newest
    /// page, half a full page before a random place.
    pub async fn time_get_history(
        &self,
        conversations: u64,
        per_conversation: u64,
        calls: usize,
        limit: u32,
    ) -> anyhow::Result<Value> {
        let url = self
            .grpc
            .clone()
            .context("GetHistory needs --history-grpc")?;
        let channel = tonic::transport::Endpoint::from_shared(url.clone())?
            .connect()
            .await
            .with_context(|| format!("history service at {url}"))?;
        let bearer: tonic::metadata::AsciiMetadataValue =
            format!("Bearer {}", self.token.as_deref().unwrap_or_default()).parse()?;
        let mut client = HistoryServiceClient::with_interceptor(
            channel,
            move |mut request: tonic::Request<()>| {
                request
                    .metadata_mut()
                    .insert("authorization", bearer.clone());
                Ok(request)
            },
        );
        let limit_u64 = u64::from(limit);
        let mut latencies = crate::stats::Latencies::default();
        let mut short = 0u64;
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..calls {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let c = state % conversations;
            let (a, b) = table_users(c);
            // A full page before: anywhere from `limit` messages in.
            let before_seq = if i % 2 == 0 || per_conversation <= limit_u64 {
                0
            } else {
                TABLE_SEQ_FROM + limit_u64 + (state >> 32) % (per_conversation - limit_u64 + 1)
            };
            let started = Instant::now();
            let page = client
                .get_history(GetHistoryRequest {
                    user_id: a,
                    conversation: format!("d:{a}:{b}"),
                    before_seq,
                    after_seq: 0,
                    limit,
                })
                .await?
                .into_inner();
            latencies
                .0
                .push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
            if page.messages.len() < limit as usize {
                short += 1;
            }
        }
        Ok(json!({
            "calls": calls,
            "limit": limit,
            "pages_shorter_than_limit": short,
            "latency": latencies.summary(),
        }))
    }
}

/// The two users of table conversation `c`, ascending: a partner that
/// looks random, as in life. Pairs of neighbouring ids would crowd a few
/// partitions (FNV-1a mod 16 keeps only the low four bits of each byte,
/// so "d:1000000000:1000000001", "d:1000000002:1000000003", ... all land in
/// even partitions, a quarter of them in partition 0), which would fill one
/// stream past the gateways' MAXLEN while the service is stopped.
fn table_users(c: u64) -> (i64, i64) {
    let a = TABLE_USERS_FROM + 2 * i64::try_from(c).unwrap_or(0);
    let spread = i64::try_from(c.wrapping_mul(2_654_435_761) % 1_000_003).unwrap_or(0);
    (a, a + 1 + 2 * spread)
}

/// A conversation's partition: FNV-1a (32 bits) of its id (the contract).
fn partition(conversation: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in conversation.as_bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % PARTITIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_is_fnv1a_32_mod_16() {
        // Published FNV-1a 32-bit test vectors: "a" 0xe40c292c, "foobar" 0xbf9cf968.
        assert_eq!(partition("a"), 0xe40c_292c % 16);
        assert_eq!(partition("foobar"), 0xbf9c_f968 % 16);
    }
}
