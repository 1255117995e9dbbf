-- Conversation history. Owned by the history service alone.
--
-- Conversation ids are ASCII: `d:LOW:HIGH` (two user ids, ascending) or
-- `g:GID`. Sequence numbers are the gateways' per-conversation counters.

-- Every stored message. The primary key is what GetHistory pages on: a page
-- is one range of (conv, seq), read in index order. Written only by the
-- ingest (INSERT IGNORE: a redelivered entry, or a second number for the
-- same mid, is dropped by either key).
CREATE TABLE history_messages (
    conv       VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    mid        VARCHAR(100)    NOT NULL,
    sender_id  BIGINT          NOT NULL,
    sent_at_us BIGINT          NOT NULL,
    frame      MEDIUMTEXT      NOT NULL,
    PRIMARY KEY (conv, seq),
    UNIQUE KEY uq_history_messages_mid (mid),
    -- Where a group member's visible range starts (their join time).
    KEY ix_history_messages_conv_time (conv, sent_at_us),
    -- What retention deletes, oldest first.
    KEY ix_history_messages_time (sent_at_us)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The newest message of each conversation, for ListConversations' order and
-- MarkRead's clamp. Only ever raised (GREATEST), so batches in any order and
-- redeliveries leave it right.
CREATE TABLE history_heads (
    conv       VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    last_seq   BIGINT UNSIGNED NOT NULL,
    last_at_us BIGINT          NOT NULL,
    PRIMARY KEY (conv)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- The 1:1 conversations of each user (both parties, written at ingest).
-- Group conversations come from the user service's memberships instead.
CREATE TABLE history_participants (
    user_id BIGINT NOT NULL,
    conv    VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (user_id, conv)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- What each user has read, per conversation. Only ever raised.
CREATE TABLE history_read_marks (
    user_id  BIGINT NOT NULL,
    conv     VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    read_seq BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (user_id, conv)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Messages that were numbered and then refused (stream entries op=x): never
-- stored, even when their op=m entry is redelivered after the retraction
-- was processed.
CREATE TABLE history_retracted (
    mid             VARCHAR(100) NOT NULL,
    conv            VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq             BIGINT UNSIGNED NOT NULL,
    retracted_at_us BIGINT NOT NULL,
    PRIMARY KEY (mid),
    KEY ix_history_retracted_time (retracted_at_us)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
