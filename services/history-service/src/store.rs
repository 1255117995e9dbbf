//! The only module of the history service that speaks SQL.
//!
//! **Architecture Invariant:** only this module touches the history tables,
//! and no other service reads them.
//!
//! Reads of a conversation are ranges of the primary key `(conv, seq)`,
//! forced (`FORCE INDEX (PRIMARY)`), so a page costs the rows it returns
//! whatever the table's size. A group member's visible range starts at the
//! first message sent at or after their join time, found once per request
//! from the group's time marks (`history_group_marks`: per 10 s of sending
//! time, the lowest seq stored) and then the primary key from there.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use sqlx::{MySql, MySqlConnection, MySqlPool, QueryBuilder, Row as _, mysql::MySqlRow};

use crate::{
    domain::{
        Conversation, ConversationSummary, Entry, HistoryPage, MAX_PAGE_BYTES, MAX_UNREAD,
        NewMessage, Page, PageAt, ReadState, Retraction, StoredMessage, UserId, Visibility,
        frame_text,
    },
    error::HistoryError,
    search::{SearchHit, SearchPage, SearchQuery, SearchScope, SearchSettings},
};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Rows per multi-row INSERT, and bytes of frames per INSERT (far below
/// MariaDB's default max_allowed_packet of 16 MiB).
const ROWS_PER_INSERT: usize = 500;
const BYTES_PER_INSERT: usize = 2 * 1024 * 1024;
/// Ids per `IN (...)` list.
const IDS_PER_LOOKUP: usize = 500;
/// Microseconds of sending time per group time mark (`history_group_marks`):
/// a join-time lookup reads at most one such bucket of the group's messages.
const MARK_BUCKET_US: i64 = 10_000_000;

/// 1:1 conversations whose parties this process has stored, at most this
/// many: past it the set starts again (such a conversation then costs its
/// two participant rows once more, INSERT IGNORE).
const KNOWN_PARTIES: usize = 100_000;

#[derive(Clone)]
pub struct HistoryStore {
    pool: MySqlPool,
    /// 1:1 conversations whose `history_participants` rows a committed
    /// batch wrote (rows never deleted): later batches skip them. Over many
    /// conversations those were two rows per chat, a third of MariaDB's
    /// work per stored message.
    parties_known: Arc<Mutex<HashSet<Conversation>>>,
    /// Whether text is indexed, and when a search reads instead.
    search: SearchSettings,
}

/// What one ingest transaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Messages stored now.
    pub stored: u64,
    /// Messages already stored (a redelivery, or the same mid numbered twice).
    pub duplicates: u64,
    /// Messages not stored, or deleted, because they were retracted.
    pub retracted: u64,
}

/// A conversation of a user's list before its details are read.
struct Candidate {
    conversation: Conversation,
    last_at_us: i64,
    visibility: Visibility,
}

impl HistoryStore {
    pub fn new(pool: MySqlPool, search: SearchSettings) -> Self {
        Self {
            pool,
            parties_known: Arc::default(),
            search,
        }
    }

    /// Stores a batch of stream entries in one transaction: messages (each
    /// once, by `(conv, seq)` and by mid), groups' time marks, the
    /// parties of 1:1 conversations, and retractions. A retraction removes
    /// one number of a message (its mid and seq), whichever of the two
    /// arrives first; a retry of a retracted chat (same mid, a new number)
    /// is stored, whether it arrives before or after that retraction (see
    /// [`retract`]). Idempotent: the same batch again changes nothing.
    #[tracing::instrument(name = "sql.ingest", skip_all, fields(otel.kind = "client", db.system = "mysql", entries = entries.len()))]
    pub async fn ingest(&self, entries: &[Entry]) -> Result<Ingested, sqlx::Error> {
        let retractions: Vec<&Retraction> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Retract(r) => Some(r),
                Entry::Message(_) => None,
            })
            .collect();
        let retracted_here: HashSet<(&str, u64)> = retractions
            .iter()
            .map(|r| (r.mid.as_str(), r.seq))
            .collect();
        let mut messages: Vec<&NewMessage> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::Message(m) if !retracted_here.contains(&(m.mid.as_str(), m.seq)) => Some(m),
                _ => None,
            })
            .collect();
        let mut outcome = Ingested {
            retracted: (entries.len() - retractions.len() - messages.len()) as u64,
            ..Ingested::default()
        };

        let mut tx = self.pool.begin().await?;
        // Retractions processed in an earlier batch. A shared lock: a
        // retraction being written by another consumer right now either is
        // seen here or waits until this transaction ends, so what it does
        // (its DELETE, taking a renumbered message's place) finds what this
        // one stores.
        let tombstones = retracted_numbers(&mut tx, &messages).await?;
        if !tombstones.is_empty() {
            let before = messages.len();
            messages.retain(|m| !tombstones.contains(&(m.mid.clone(), m.seq)));
            outcome.retracted += (before - messages.len()) as u64;
        }

        // Retractions before messages: a retry in this batch finds its mid
        // free once the number it replaces is gone.
        if !retractions.is_empty() {
            let (deleted, promoted) = retract(&mut tx, &retractions).await?;
            outcome.retracted += deleted;
            outcome.stored += promoted;
        }

        for chunk in insert_chunks(&messages) {
            let mut insert = QueryBuilder::<MySql>::new(
                "INSERT IGNORE INTO history_messages (conv, seq, mid, sender_id, sent_at_us, frame) ",
            );
            insert.push_values(chunk, |mut row, m| {
                row.push_bind(m.conversation.to_string())
                    .push_bind(m.seq)
                    .push_bind(m.mid.clone())
                    .push_bind(m.sender_id)
                    .push_bind(m.sent_at_us)
                    .push_bind(m.frame.clone());
            });
            let stored = insert.build().execute(&mut *tx).await?.rows_affected();
            outcome.stored += stored;
            outcome.duplicates += chunk.len() as u64 - stored;
            if stored < chunk.len() as u64 {
                hold_renumbered(&mut tx, chunk).await?;
            }
        }

        if self.search.enabled {
            index_text(&mut tx, &messages).await?;
        }

        raise_group_marks(
            &mut tx,
            messages
                .iter()
                .map(|m| (m.conversation, m.sent_at_us, m.seq)),
        )
        .await?;

        // A conversation's newest message is the last of its primary key
        // range: nothing else to keep up to date (a table of heads, raised
        // with every batch, was a third of MariaDB's work per stored message
        // over many conversations; migration 0004 drops it).
        let conversations: BTreeSet<Conversation> =
            messages.iter().map(|m| m.conversation).collect();
        let new_parties: Vec<Conversation> = {
            let known = self.parties_known.lock().unwrap_or_else(|p| p.into_inner());
            conversations
                .iter()
                .copied()
                .filter(|conv| conv.parties().is_some() && !known.contains(conv))
                .collect()
        };
        let parties: Vec<(UserId, Conversation)> = new_parties
            .iter()
            .filter_map(|conv| conv.parties().map(|p| (conv, p)))
            .flat_map(|(conv, parties)| parties.map(|user| (user, *conv)))
            .collect();
        for chunk in parties.chunks(ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::<MySql>::new(
                "INSERT IGNORE INTO history_participants (user_id, conv) ",
            );
            insert.push_values(chunk, |mut row, (user, conv)| {
                row.push_bind(user.get()).push_bind(conv.to_string());
            });
            insert.build().execute(&mut *tx).await?;
        }

        tx.commit().await?;
        let mut known = self.parties_known.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() + new_parties.len() > KNOWN_PARTIES {
            known.clear();
        }
        known.extend(new_parties);
        Ok(outcome)
    }

    /// A page of `conversation` as `visibility` allows, ascending.
    #[tracing::instrument(name = "sql.page", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn page(
        &self,
        conversation: Conversation,
        visibility: Visibility,
        page: Page,
    ) -> Result<HistoryPage, HistoryError> {
        let mut conn = self.pool.acquire().await?;
        read_page(&mut conn, conversation, visibility, page).await
    }

    /// The conversations of `user` (1:1 ones from the participants, groups
    /// from `groups`: id and join time), the newest first, each with its
    /// newest visible message, the read marks and the unread count.
    #[tracing::instrument(name = "sql.conversations", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn conversations(
        &self,
        user: UserId,
        groups: &[(i64, i64)],
        limit: u32,
    ) -> Result<Vec<ConversationSummary>, HistoryError> {
        let mut conn = self.pool.acquire().await?;
        // Each conversation's newest message: the last row of its primary
        // key range (one backward step per conversation: 5,000
        // conversations in about 20 ms, twice what a table of heads took).
        let mut candidates: Vec<Candidate> = sqlx::query(
            "SELECT p.conv, (SELECT m.sent_at_us FROM history_messages m FORCE INDEX (PRIMARY) \
             WHERE m.conv = p.conv ORDER BY m.seq DESC LIMIT 1) AS last_at \
             FROM history_participants p WHERE p.user_id = ? \
             HAVING last_at IS NOT NULL ORDER BY last_at DESC, p.conv DESC LIMIT ?",
        )
        .bind(user.get())
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .filter_map(|row| {
            Some(Candidate {
                conversation: Conversation::parse(row.get::<&str, _>(0)).ok()?,
                last_at_us: row.get(1),
                visibility: Visibility::All,
            })
        })
        .collect();

        let joined: HashMap<String, i64> = groups
            .iter()
            .map(|&(group, joined_at_us)| (Conversation::Group(group).to_string(), joined_at_us))
            .collect();
        let names: Vec<&String> = joined.keys().collect();
        for chunk in names.chunks(IDS_PER_LOOKUP) {
            // One statement, one primary-key descent per group.
            let mut query = QueryBuilder::<MySql>::new("");
            for (i, name) in chunk.iter().enumerate() {
                if i > 0 {
                    query.push(" UNION ALL ");
                }
                query
                    .push(
                        "(SELECT conv, sent_at_us FROM history_messages FORCE INDEX (PRIMARY) \
                         WHERE conv = ",
                    )
                    .push_bind(name.as_str())
                    .push(" ORDER BY seq DESC LIMIT 1)");
            }
            for row in query.build().fetch_all(&mut *conn).await? {
                let name: &str = row.get(0);
                let last_at_us: i64 = row.get(1);
                let (Some(&joined_at_us), Ok(conversation)) =
                    (joined.get(name), Conversation::parse(name))
                else {
                    continue;
                };
                let visibility = Visibility::SentFrom { joined_at_us };
                if visibility.shows(last_at_us) {
                    candidates.push(Candidate {
                        conversation,
                        last_at_us,
                        visibility,
                    });
                }
            }
        }
        candidates.sort_by_key(|c| std::cmp::Reverse((c.last_at_us, c.conversation)));

        // The newest visible message of each, until the list is full.
        let mut chosen: Vec<(Candidate, StoredMessage, u64)> = Vec::new();
        let mut bytes = 0;
        for candidate in candidates {
            if chosen.len() >= limit as usize {
                break;
            }
            let Some(visible_from) =
                visible_from(&mut conn, candidate.conversation, candidate.visibility).await?
            else {
                continue;
            };
            let newest = Page {
                at: PageAt::Newest,
                limit: 1,
            };
            let page = read_range(
                &mut conn,
                candidate.conversation,
                candidate.visibility,
                visible_from,
                newest,
            )
            .await?;
            let Some(last) = page.messages.into_iter().next() else {
                continue;
            };
            bytes += last.frame.len();
            if bytes > MAX_PAGE_BYTES && !chosen.is_empty() {
                break;
            }
            chosen.push((candidate, last, visible_from));
        }

        let mut pairs: Vec<(i64, String)> = Vec::new();
        for (candidate, _, _) in &chosen {
            let name = candidate.conversation.to_string();
            if let Some(peer) = candidate.conversation.peer_of(user) {
                pairs.push((peer.get(), name.clone()));
            }
            pairs.push((user.get(), name));
        }
        let marks = read_marks(&mut conn, &pairs).await?;

        let mut out = Vec::with_capacity(chosen.len());
        for (candidate, last, visible_from) in chosen {
            let name = candidate.conversation.to_string();
            let mark = |who: i64| marks.get(&(who, name.clone())).copied().unwrap_or(0);
            let read_seq = mark(user.get());
            let peer_read_seq = candidate
                .conversation
                .peer_of(user)
                .map_or(0, |peer| mark(peer.get()));
            let unread = count_unread(
                &mut conn,
                candidate.conversation,
                user,
                read_seq.max(visible_from.saturating_sub(1)),
                candidate.visibility,
            )
            .await?;
            out.push(ConversationSummary {
                conversation: candidate.conversation,
                last,
                read_seq,
                unread,
                peer_read_seq,
            });
        }
        Ok(out)
    }

    /// Raises `user`'s read mark in `conversation` to `up_to` (never
    /// lowered) and counts what is still unread.
    #[tracing::instrument(name = "sql.mark_read", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn mark_read(
        &self,
        user: UserId,
        conversation: Conversation,
        visibility: Visibility,
        up_to: u64,
    ) -> Result<ReadState, HistoryError> {
        let mut conn = self.pool.acquire().await?;
        let name = conversation.to_string();
        // Not clamped to the newest message stored here: history trails the
        // live conversation (the gateway clamps to its live counter), and a
        // mark for what is still on its way must hold when it lands.
        let target = up_to;
        if target > 0 {
            sqlx::query(
                "INSERT INTO history_read_marks (user_id, conv, read_seq) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE read_seq = GREATEST(read_seq, VALUES(read_seq))",
            )
            .bind(user.get())
            .bind(&name)
            .bind(target)
            .execute(&mut *conn)
            .await?;
        }
        let read_seq = read_marks(&mut conn, &[(user.get(), name.clone())])
            .await?
            .into_values()
            .next()
            .unwrap_or(0);
        let unread = match visible_from(&mut conn, conversation, visibility).await? {
            Some(from) => {
                count_unread(
                    &mut conn,
                    conversation,
                    user,
                    read_seq.max(from.saturating_sub(1)),
                    visibility,
                )
                .await?
            }
            None => 0,
        };
        Ok(ReadState { read_seq, unread })
    }

    /// The 1:1 conversations `user` is a party to (their groups come from
    /// the user service).
    #[tracing::instrument(name = "sql.direct_conversations", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn direct_conversations(
        &self,
        user: UserId,
    ) -> Result<Vec<Conversation>, HistoryError> {
        let rows = sqlx::query("SELECT conv FROM history_participants WHERE user_id = ?")
            .bind(user.get())
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| Conversation::parse(row.get::<&str, _>(0)).ok())
            .collect())
    }

    /// A page of the messages of `scope` that hold every word of `query`,
    /// best first (how often the words occur), then the newest. Two ways,
    /// by the size of the scope:
    /// - at most `scan_rows` messages (most users): their rows of
    ///   `history_search`, ranges of its primary key, with a `LIKE` per
    ///   word, scored here; it costs what the scope holds, whatever the
    ///   words;
    /// - more: the index answers the words and the scope is a condition on
    ///   its rows (Mroonga 7 does not push it into the index), so it costs
    ///   what the words match in the whole table (a word in a tenth of a
    ///   million messages, about half a second: README, "Search").
    ///
    /// Hits are read back from `history_messages`, so what was retracted or
    /// deleted is never shown.
    #[tracing::instrument(name = "sql.search", skip_all, fields(otel.kind = "client", db.system = "mysql", conversations = scope.conversations.len()))]
    pub async fn search(
        &self,
        scope: &SearchScope,
        query: &SearchQuery,
        limit: u32,
        offset: u32,
    ) -> Result<SearchPage, HistoryError> {
        if !self.search.enabled {
            return Err(HistoryError::SearchOff);
        }
        if scope.conversations.is_empty() {
            return Ok(SearchPage {
                hits: Vec::new(),
                more: false,
            });
        }
        let mut conn = self.pool.acquire().await?;
        let scan = self.search.scan_rows > 0
            && scope_rows(&mut conn, scope, self.search.scan_rows).await? <= self.search.scan_rows;
        let mut found = if scan {
            scan_scope(&mut conn, scope, query, limit, offset).await?
        } else {
            ask_index(&mut conn, scope, query, limit, offset).await?
        };
        // Past MAX_OFFSET there is no next page to ask for.
        let more = found.len() > limit as usize
            && offset as usize + limit as usize <= crate::search::MAX_OFFSET as usize;
        found.truncate(limit as usize);
        if found.is_empty() {
            return Ok(SearchPage {
                hits: Vec::new(),
                more,
            });
        }

        let mut read = QueryBuilder::<MySql>::new(
            "SELECT seq, mid, sender_id, sent_at_us, frame, conv FROM history_messages WHERE ",
        );
        push_numbers(&mut read, found.iter().map(|(c, seq, _)| (*c, *seq)));
        let mut stored: HashMap<(Conversation, u64), StoredMessage> = HashMap::new();
        for row in read.build().fetch_all(&mut *conn).await? {
            let Ok(conversation) = Conversation::parse(row.get::<&str, _>(5)) else {
                continue;
            };
            let message = message_from_row(conversation, &row);
            stored.insert((conversation, message.seq), message);
        }
        let mut bytes = 0;
        let mut hits = Vec::with_capacity(found.len());
        for (conversation, seq, score) in found {
            let Some(message) = stored.remove(&(conversation, seq)) else {
                continue;
            };
            bytes += message.frame.len();
            if bytes > MAX_PAGE_BYTES && !hits.is_empty() {
                return Ok(SearchPage { hits, more: true });
            }
            hits.push(SearchHit { message, score });
        }
        Ok(SearchPage { hits, more })
    }

    /// Deletes up to `chunk` messages sent before `cutoff_us`, oldest first.
    #[tracing::instrument(name = "sql.retention", skip_all, fields(otel.kind = "client", db.system = "mysql"))]
    pub async fn delete_sent_before(&self, cutoff_us: i64, chunk: u32) -> Result<u64, sqlx::Error> {
        let messages = sqlx::query(
            "DELETE FROM history_messages WHERE sent_at_us < ? ORDER BY sent_at_us LIMIT ?",
        )
        .bind(cutoff_us)
        .bind(chunk)
        .execute(&self.pool)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM history_search WHERE sent_at_us < ? LIMIT ?")
            .bind(cutoff_us)
            .bind(chunk)
            .execute(&self.pool)
            .await?;
        // Retractions older than any message kept can no longer matter
        // (their message, if it ever comes back, is past retention too).
        sqlx::query(
            "DELETE FROM history_retracted WHERE retracted_at_us < ? ORDER BY retracted_at_us LIMIT ?",
        )
        .bind(cutoff_us)
        .bind(chunk)
        .execute(&self.pool)
        .await?;
        sqlx::query(
            "DELETE FROM history_renumbered WHERE sent_at_us < ? ORDER BY sent_at_us LIMIT ?",
        )
        .bind(cutoff_us)
        .bind(chunk)
        .execute(&self.pool)
        .await?;
        // Time marks of buckets wholly before the cutoff (their messages
        // are gone or going; a lookup past them starts at seq 0, as when
        // none is left).
        sqlx::query(
            "DELETE FROM history_group_marks WHERE bucket < ? ORDER BY conv, bucket LIMIT ?",
        )
        .bind(cutoff_us.div_euclid(MARK_BUCKET_US))
        .bind(chunk)
        .execute(&self.pool)
        .await?;
        Ok(messages)
    }
}

/// Splits messages into INSERTs of at most `ROWS_PER_INSERT` rows and
/// `BYTES_PER_INSERT` bytes of frames (at least one row each).
fn insert_chunks<'a>(messages: &'a [&'a NewMessage]) -> Vec<&'a [&'a NewMessage]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let full = i - start >= ROWS_PER_INSERT || bytes + m.frame.len() > BYTES_PER_INSERT;
        if full && i > start {
            chunks.push(&messages[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += m.frame.len();
    }
    if start < messages.len() {
        chunks.push(&messages[start..]);
    }
    chunks
}

/// `(conv = ? AND seq = ?) OR ...`: primary-key points of `numbers`.
fn push_numbers(
    query: &mut QueryBuilder<MySql>,
    numbers: impl Iterator<Item = (Conversation, u64)>,
) {
    let mut any = query.separated(" OR ");
    for (conversation, seq) in numbers {
        any.push("(conv = ")
            .push_bind_unseparated(conversation.to_string())
            .push_unseparated(" AND seq = ")
            .push_bind_unseparated(seq)
            .push_unseparated(")");
    }
}

/// `scope` as a condition on `conv` and `sent_at_us`: the conversations
/// seen whole in one `IN`, a group's from its join time each.
fn push_scope(query: &mut QueryBuilder<MySql>, scope: &SearchScope) {
    let everything: Vec<String> = scope
        .conversations
        .iter()
        .filter(|(_, v)| *v == Visibility::All)
        .map(|(c, _)| c.to_string())
        .collect();
    query.push("(");
    let mut any = query.separated(" OR ");
    if !everything.is_empty() {
        any.push("conv IN (");
        for (i, name) in everything.into_iter().enumerate() {
            if i > 0 {
                any.push_unseparated(", ");
            }
            any.push_bind_unseparated(name);
        }
        any.push_unseparated(")");
    }
    for (conversation, visibility) in &scope.conversations {
        if let Visibility::SentFrom { joined_at_us } = visibility {
            any.push("(conv = ")
                .push_bind_unseparated(conversation.to_string())
                .push_unseparated(" AND sent_at_us >= ")
                .push_bind_unseparated(*joined_at_us)
                .push_unseparated(")");
        }
    }
    query.push(")");
}

/// How many messages `scope` holds, counted up to `cap + 1` (ranges of
/// `history_messages`' primary key: it stops there).
async fn scope_rows(
    conn: &mut MySqlConnection,
    scope: &SearchScope,
    cap: u64,
) -> Result<u64, sqlx::Error> {
    let mut count =
        QueryBuilder::<MySql>::new("SELECT COUNT(*) FROM (SELECT 1 FROM history_messages WHERE ");
    push_scope(&mut count, scope);
    count.push(" LIMIT ").push_bind(cap + 1).push(") AS scope");
    let rows: i64 = count.build().fetch_one(&mut *conn).await?.get(0);
    Ok(rows as u64)
}

/// The scope's rows of `history_search` holding every word (`LIKE`),
/// scored and ordered here: up to `limit + 1` from `offset`.
async fn scan_scope(
    conn: &mut MySqlConnection,
    scope: &SearchScope,
    query: &SearchQuery,
    limit: u32,
    offset: u32,
) -> Result<Vec<(Conversation, u64, f64)>, sqlx::Error> {
    use futures::TryStreamExt as _;

    let mut select =
        QueryBuilder::<MySql>::new("SELECT conv, seq, sent_at_us, body FROM history_search WHERE ");
    push_scope(&mut select, scope);
    for pattern in query.like_patterns() {
        select
            .push(" AND body LIKE ")
            .push_bind(pattern)
            .push(" ESCAPE '\\\\'");
    }
    // Rows stream by; only the best `offset + limit + 1` are kept (a
    // min-heap by rank), so memory stays a page's whatever the scope.
    let keep = offset as usize + limit as usize + 1;
    let mut best: BinaryHeap<Reverse<Ranked>> = BinaryHeap::with_capacity(keep + 1);
    let built = select.build();
    let mut rows = built.fetch(&mut *conn);
    while let Some(row) = rows.try_next().await? {
        let Ok(conversation) = Conversation::parse(row.get::<&str, _>(0)) else {
            continue;
        };
        let score = query.score(row.get::<&str, _>(3));
        if score <= 0.0 {
            continue;
        }
        best.push(Reverse(Ranked {
            score,
            sent_at_us: row.get(2),
            conversation,
            seq: row.get(1),
        }));
        if best.len() > keep {
            best.pop();
        }
    }
    let mut ranked: Vec<Ranked> = best.into_iter().map(|Reverse(r)| r).collect();
    ranked.sort_by(|a, b| b.cmp(a));
    Ok(ranked
        .into_iter()
        .skip(offset as usize)
        .map(|r| (r.conversation, r.seq, r.score))
        .collect())
}

/// A hit's rank: better is greater (score, then the newer, then the lower
/// conversation and seq, so the order is total and pages are stable).
#[derive(Debug, Clone, Copy)]
struct Ranked {
    score: f64,
    sent_at_us: i64,
    conversation: Conversation,
    seq: u64,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .total_cmp(&other.score)
            .then(self.sent_at_us.cmp(&other.sent_at_us))
            .then(other.conversation.cmp(&self.conversation))
            .then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Ranked {}

/// The index's answer within `scope`: up to `limit + 1` from `offset`,
/// best score first, then the newest.
async fn ask_index(
    conn: &mut MySqlConnection,
    scope: &SearchScope,
    query: &SearchQuery,
    limit: u32,
    offset: u32,
) -> Result<Vec<(Conversation, u64, f64)>, sqlx::Error> {
    let expression = query.expression();
    let mut select = QueryBuilder::<MySql>::new("SELECT conv, seq, MATCH(body) AGAINST(");
    select
        .push_bind(expression.clone())
        .push(" IN BOOLEAN MODE) AS score FROM history_search WHERE MATCH(body) AGAINST(")
        .push_bind(expression)
        .push(" IN BOOLEAN MODE) AND ");
    push_scope(&mut select, scope);
    select
        .push(" ORDER BY score DESC, sent_at_us DESC, conv, seq LIMIT ")
        .push_bind(limit + 1)
        .push(" OFFSET ")
        .push_bind(offset);
    Ok(select
        .build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .filter_map(|row| {
            let conversation = Conversation::parse(row.get::<&str, _>(0)).ok()?;
            Some((conversation, row.get::<u64, _>(1), row.get::<f64, _>(2)))
        })
        .collect())
}

/// Adds the text of `messages` to the search index (`history_search`;
/// messages without text are not indexed). INSERT IGNORE: a batch again,
/// or a number already indexed, changes nothing.
async fn index_text(
    conn: &mut MySqlConnection,
    messages: &[&NewMessage],
) -> Result<(), sqlx::Error> {
    let texts: Vec<(&NewMessage, String)> = messages
        .iter()
        .map(|m| (*m, frame_text(&m.frame)))
        .filter(|(_, text)| !text.is_empty())
        .collect();
    let refs: Vec<&NewMessage> = texts.iter().map(|(m, _)| *m).collect();
    let mut at = 0;
    for chunk in insert_chunks(&refs) {
        let rows = &texts[at..at + chunk.len()];
        at += chunk.len();
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO history_search (conv, seq, sent_at_us, body) ",
        );
        insert.push_values(rows, |mut row, (m, text)| {
            row.push_bind(m.conversation.to_string())
                .push_bind(m.seq)
                .push_bind(m.sent_at_us)
                .push_bind(text.as_str());
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// The retracted numbers, `(mid, seq)`, among the mids of `messages`
/// (read with a shared lock: see [`HistoryStore::ingest`]).
async fn retracted_numbers(
    conn: &mut MySqlConnection,
    messages: &[&NewMessage],
) -> Result<HashSet<(String, u64)>, sqlx::Error> {
    let mut found = HashSet::new();
    for chunk in messages.chunks(IDS_PER_LOOKUP) {
        let mut query =
            QueryBuilder::<MySql>::new("SELECT mid, seq FROM history_retracted WHERE mid IN (");
        let mut list = query.separated(", ");
        for m in chunk {
            list.push_bind(m.mid.clone());
        }
        query.push(") LOCK IN SHARE MODE");
        for row in query.build().fetch_all(&mut *conn).await? {
            found.insert((row.get::<String, _>(0), row.get::<u64, _>(1)));
        }
    }
    Ok(found)
}

/// Records the tombstones of `retractions` and deletes the numbers they
/// retract, stored or held in `history_renumbered`; a mid whose stored
/// number went is then stored under the lowest number held for it (a retry
/// that came before the retraction of the number it replaces). Returns the
/// messages deleted and those stored in their place.
async fn retract(
    conn: &mut MySqlConnection,
    retractions: &[&Retraction],
) -> Result<(u64, u64), sqlx::Error> {
    let now = now_unix_us();
    let mut deleted = 0;
    for chunk in retractions.chunks(ROWS_PER_INSERT) {
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT IGNORE INTO history_retracted (mid, conv, seq, retracted_at_us) ",
        );
        insert.push_values(chunk, |mut row, r| {
            row.push_bind(r.mid.clone())
                .push_bind(r.conversation.to_string())
                .push_bind(r.seq)
                .push_bind(now);
        });
        insert.build().execute(&mut *conn).await?;
        // Primary-key points, each only if it is this mid's number.
        let mut delete = QueryBuilder::<MySql>::new("DELETE FROM history_messages WHERE ");
        let mut any = delete.separated(" OR ");
        for r in chunk {
            any.push("(conv = ")
                .push_bind_unseparated(r.conversation.to_string())
                .push_unseparated(" AND seq = ")
                .push_bind_unseparated(r.seq)
                .push_unseparated(" AND mid = ")
                .push_bind_unseparated(r.mid.clone())
                .push_unseparated(")");
        }
        deleted += delete.build().execute(&mut *conn).await?.rows_affected();
        // Their text leaves the index, for the numbers now empty (a number
        // still stored holds another mid, whose text stays findable).
        let mut stored =
            QueryBuilder::<MySql>::new("SELECT conv, seq FROM history_messages WHERE ");
        push_numbers(&mut stored, chunk.iter().map(|r| (r.conversation, r.seq)));
        let still: HashSet<(String, u64)> = stored
            .build()
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| (row.get::<String, _>(0), row.get::<u64, _>(1)))
            .collect();
        let emptied: Vec<&&Retraction> = chunk
            .iter()
            .filter(|r| !still.contains(&(r.conversation.to_string(), r.seq)))
            .collect();
        if !emptied.is_empty() {
            let mut delete = QueryBuilder::<MySql>::new("DELETE FROM history_search WHERE ");
            push_numbers(&mut delete, emptied.iter().map(|r| (r.conversation, r.seq)));
            delete.build().execute(&mut *conn).await?;
        }
        let mut delete = QueryBuilder::<MySql>::new("DELETE FROM history_renumbered WHERE ");
        let mut any = delete.separated(" OR ");
        for r in chunk {
            any.push("(mid = ")
                .push_bind_unseparated(r.mid.clone())
                .push_unseparated(" AND seq = ")
                .push_bind_unseparated(r.seq)
                .push_unseparated(")");
        }
        delete.build().execute(&mut *conn).await?;
    }

    let mids: BTreeSet<&str> = retractions.iter().map(|r| r.mid.as_str()).collect();
    let mids: Vec<&str> = mids.into_iter().collect();
    // The lowest number held for each mid (rows come ordered by the key).
    let mut held: BTreeMap<String, MySqlRow> = BTreeMap::new();
    for chunk in mids.chunks(IDS_PER_LOOKUP) {
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT mid, seq, conv, sender_id, sent_at_us, frame FROM history_renumbered \
             WHERE mid IN (",
        );
        let mut list = query.separated(", ");
        for mid in chunk {
            list.push_bind(*mid);
        }
        query.push(") ORDER BY mid, seq FOR UPDATE");
        for row in query.build().fetch_all(&mut *conn).await? {
            held.entry(row.get::<String, _>(0)).or_insert(row);
        }
    }
    if held.is_empty() {
        return Ok((deleted, 0));
    }
    let names: Vec<&String> = held.keys().collect();
    let mut still_stored = HashSet::new();
    for chunk in names.chunks(IDS_PER_LOOKUP) {
        let mut query =
            QueryBuilder::<MySql>::new("SELECT mid FROM history_messages WHERE mid IN (");
        let mut list = query.separated(", ");
        for mid in chunk {
            list.push_bind(mid.as_str());
        }
        query.push(")");
        for row in query.build().fetch_all(&mut *conn).await? {
            still_stored.insert(row.get::<String, _>(0));
        }
    }
    let mut promoted = 0;
    for (mid, row) in held.iter().filter(|(mid, _)| !still_stored.contains(*mid)) {
        let seq: u64 = row.get(1);
        let text = frame_text(&row.get::<String, _>(5));
        if !text.is_empty() {
            sqlx::query(
                "INSERT IGNORE INTO history_search (conv, seq, sent_at_us, body) VALUES (?, ?, ?, ?)",
            )
            .bind(row.get::<String, _>(2))
            .bind(seq)
            .bind(row.get::<i64, _>(4))
            .bind(text)
            .execute(&mut *conn)
            .await?;
        }
        promoted += sqlx::query(
            "INSERT IGNORE INTO history_messages (conv, seq, mid, sender_id, sent_at_us, frame) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(row.get::<String, _>(2))
        .bind(seq)
        .bind(mid)
        .bind(row.get::<i64, _>(3))
        .bind(row.get::<i64, _>(4))
        .bind(row.get::<String, _>(5))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        // Its batch marked it when it came; again, should a mark have gone.
        if let Ok(conversation) = Conversation::parse(&row.get::<String, _>(2)) {
            raise_group_marks(conn, std::iter::once((conversation, row.get(4), seq))).await?;
        }
        sqlx::query("DELETE FROM history_renumbered WHERE mid = ? AND seq = ?")
            .bind(mid)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
    }
    Ok((deleted, promoted))
}

/// After an INSERT IGNORE of `chunk` skipped some: keeps aside those whose
/// mid is stored under another number (see `history_renumbered`), so that
/// one can take the stored one's place if that is retracted. A redelivery
/// (same mid, same number) or another mid under a taken number is dropped.
async fn hold_renumbered(
    conn: &mut MySqlConnection,
    chunk: &[&NewMessage],
) -> Result<(), sqlx::Error> {
    let mut query =
        QueryBuilder::<MySql>::new("SELECT mid, seq FROM history_messages WHERE mid IN (");
    let mut list = query.separated(", ");
    for m in chunk {
        list.push_bind(m.mid.clone());
    }
    query.push(")");
    let stored: HashMap<String, u64> = query
        .build()
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let renumbered: Vec<&&NewMessage> = chunk
        .iter()
        .filter(|m| stored.get(&m.mid).is_some_and(|&seq| seq != m.seq))
        .collect();
    if renumbered.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::<MySql>::new(
        "INSERT IGNORE INTO history_renumbered (mid, seq, conv, sender_id, sent_at_us, frame) ",
    );
    insert.push_values(renumbered, |mut row, m| {
        row.push_bind(m.mid.clone())
            .push_bind(m.seq)
            .push_bind(m.conversation.to_string())
            .push_bind(m.sender_id)
            .push_bind(m.sent_at_us)
            .push_bind(m.frame.clone());
    });
    insert.build().execute(&mut *conn).await?;
    Ok(())
}

/// Where `visibility` starts in `conversation`: the lowest seq to read
/// from, or `None` when nothing in it is visible.
async fn visible_from(
    conn: &mut MySqlConnection,
    conversation: Conversation,
    visibility: Visibility,
) -> Result<Option<u64>, sqlx::Error> {
    match visibility {
        Visibility::All => Ok(Some(0)),
        Visibility::SentFrom { joined_at_us } => {
            let name = conversation.to_string();
            // The lowest seq of the latest bucket at or before the join
            // (none: everything was sent after it). Every message sent at or
            // after the join has a seq at least that (but for clocks more
            // than a bucket apart between gateways).
            let start: u64 = sqlx::query(
                "SELECT first_seq FROM history_group_marks \
                 WHERE conv = ? AND bucket <= ? ORDER BY bucket DESC LIMIT 1",
            )
            .bind(&name)
            .bind(joined_at_us.div_euclid(MARK_BUCKET_US))
            .fetch_optional(&mut *conn)
            .await?
            .map_or(0, |row| row.get(0));
            Ok(sqlx::query(
                "SELECT seq FROM history_messages FORCE INDEX (PRIMARY) \
                 WHERE conv = ? AND seq >= ? AND sent_at_us >= ? ORDER BY seq LIMIT 1",
            )
            .bind(&name)
            .bind(start)
            .bind(joined_at_us)
            .fetch_optional(&mut *conn)
            .await?
            .map(|row| row.get(0)))
        }
    }
}

/// Lowers each group's time mark to the lowest seq among `messages`
/// (conversation, sent at, seq) sent in its bucket. 1:1 conversations have
/// no marks (everything in them is visible to both parties).
async fn raise_group_marks(
    conn: &mut MySqlConnection,
    messages: impl Iterator<Item = (Conversation, i64, u64)>,
) -> Result<(), sqlx::Error> {
    let mut marks: BTreeMap<(Conversation, i64), u64> = BTreeMap::new();
    for (conversation, sent_at_us, seq) in messages {
        if let Conversation::Group(_) = conversation {
            let first = marks
                .entry((conversation, sent_at_us.div_euclid(MARK_BUCKET_US)))
                .or_insert(seq);
            *first = (*first).min(seq);
        }
    }
    let marks: Vec<_> = marks.into_iter().collect();
    for chunk in marks.chunks(ROWS_PER_INSERT) {
        let mut upsert = QueryBuilder::<MySql>::new(
            "INSERT INTO history_group_marks (conv, bucket, first_seq) ",
        );
        upsert.push_values(chunk, |mut row, ((conv, bucket), seq)| {
            row.push_bind(conv.to_string())
                .push_bind(*bucket)
                .push_bind(*seq);
        });
        upsert.push(" ON DUPLICATE KEY UPDATE first_seq = LEAST(first_seq, VALUES(first_seq))");
        upsert.build().execute(&mut *conn).await?;
    }
    Ok(())
}

async fn read_page(
    conn: &mut MySqlConnection,
    conversation: Conversation,
    visibility: Visibility,
    page: Page,
) -> Result<HistoryPage, HistoryError> {
    match visible_from(conn, conversation, visibility).await? {
        Some(from) => read_range(conn, conversation, visibility, from, page).await,
        None => Ok(HistoryPage {
            messages: Vec::new(),
            more: false,
        }),
    }
}

/// The page's SQL: one range of the primary key, from the visible start.
macro_rules! page_sql {
    ($tail:literal) => {
        concat!(
            "SELECT seq, mid, sender_id, sent_at_us, frame \
             FROM history_messages FORCE INDEX (PRIMARY) \
             WHERE conv = ? AND seq >= ? AND sent_at_us >= ?",
            $tail
        )
    };
}

/// A page of the messages from seq `from` on that `visibility` shows.
async fn read_range(
    conn: &mut MySqlConnection,
    conversation: Conversation,
    visibility: Visibility,
    from: u64,
    page: Page,
) -> Result<HistoryPage, HistoryError> {
    let name = conversation.to_string();
    let min_sent_at = visibility.earliest_sent_at();
    let (query, descending) = match page.at {
        PageAt::Newest => (
            sqlx::query(page_sql!(" ORDER BY seq DESC LIMIT ?"))
                .bind(name)
                .bind(from)
                .bind(min_sent_at),
            true,
        ),
        PageAt::Before(before) => (
            sqlx::query(page_sql!(" AND seq < ? ORDER BY seq DESC LIMIT ?"))
                .bind(name)
                .bind(from)
                .bind(min_sent_at)
                .bind(before),
            true,
        ),
        PageAt::After(after) => (
            sqlx::query(page_sql!(" AND seq > ? ORDER BY seq LIMIT ?"))
                .bind(name)
                .bind(from)
                .bind(min_sent_at)
                .bind(after),
            false,
        ),
    };
    let rows = query.bind(page.limit + 1).fetch_all(&mut *conn).await?;
    let mut messages = Vec::with_capacity(rows.len().min(page.limit as usize));
    let mut bytes = 0;
    for row in rows.iter().take(page.limit as usize) {
        let message = message_from_row(conversation, row);
        bytes += message.frame.len();
        if bytes > MAX_PAGE_BYTES && !messages.is_empty() {
            break;
        }
        messages.push(message);
    }
    let more = rows.len() > messages.len();
    if descending {
        messages.reverse();
    }
    Ok(HistoryPage { messages, more })
}

fn message_from_row(conversation: Conversation, row: &MySqlRow) -> StoredMessage {
    StoredMessage {
        conversation,
        seq: row.get(0),
        mid: row.get(1),
        sender_id: row.get(2),
        sent_at_us: row.get(3),
        frame: row.get(4),
    }
}

/// Read marks of `(user, conversation)` pairs that have one.
async fn read_marks(
    conn: &mut MySqlConnection,
    pairs: &[(i64, String)],
) -> Result<HashMap<(i64, String), u64>, sqlx::Error> {
    let mut marks = HashMap::new();
    for chunk in pairs.chunks(IDS_PER_LOOKUP) {
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT user_id, conv, read_seq FROM history_read_marks WHERE ",
        );
        // An OR of primary-key points: one range each.
        let mut any = query.separated(" OR ");
        for (user, conv) in chunk {
            any.push("(user_id = ")
                .push_bind_unseparated(*user)
                .push_unseparated(" AND conv = ")
                .push_bind_unseparated(conv.clone())
                .push_unseparated(")");
        }
        for row in query.build().fetch_all(&mut *conn).await? {
            marks.insert((row.get(0), row.get(1)), row.get(2));
        }
    }
    Ok(marks)
}

/// Messages from others after `after` that `visibility` shows, up to
/// `MAX_UNREAD`, in one range of the primary key.
async fn count_unread(
    conn: &mut MySqlConnection,
    conversation: Conversation,
    user: UserId,
    after: u64,
    visibility: Visibility,
) -> Result<u32, sqlx::Error> {
    let count: i64 = sqlx::query(
        "SELECT COUNT(*) FROM (SELECT 1 FROM history_messages FORCE INDEX (PRIMARY) \
         WHERE conv = ? AND seq > ? AND sender_id <> ? AND sent_at_us >= ? LIMIT ?) AS unread",
    )
    .bind(conversation.to_string())
    .bind(after)
    .bind(user.get())
    .bind(visibility.earliest_sent_at())
    .bind(MAX_UNREAD)
    .fetch_one(&mut *conn)
    .await?
    .get(0);
    Ok(u32::try_from(count).unwrap_or(MAX_UNREAD))
}

fn now_unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(frame_bytes: usize) -> NewMessage {
        NewMessage {
            conversation: Conversation::Group(1),
            seq: 1,
            mid: "m".into(),
            sender_id: 1,
            sent_at_us: 1,
            traceparent: String::new(),
            frame: "x".repeat(frame_bytes),
        }
    }

    #[test]
    fn inserts_are_split_by_rows_and_by_bytes_never_empty() {
        let small: Vec<NewMessage> = (0..1001).map(|_| message(10)).collect();
        let refs: Vec<&NewMessage> = small.iter().collect();
        let sizes: Vec<usize> = insert_chunks(&refs).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [ROWS_PER_INSERT, ROWS_PER_INSERT, 1]);

        let big: Vec<NewMessage> = (0..5).map(|_| message(BYTES_PER_INSERT / 2)).collect();
        let refs: Vec<&NewMessage> = big.iter().collect();
        let sizes: Vec<usize> = insert_chunks(&refs).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, [2, 2, 1]);

        let huge = [message(BYTES_PER_INSERT * 2)];
        let refs: Vec<&NewMessage> = huge.iter().collect();
        assert_eq!(
            insert_chunks(&refs).len(),
            1,
            "a frame larger than the bound goes alone"
        );
        assert!(insert_chunks(&[]).is_empty());
    }
}
