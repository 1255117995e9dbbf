-- Where a group member's visible range starts (the first message sent at
-- or after their join time), found without an index of every message by
-- (conv, sent_at_us): that index cost MariaDB about a fifth of its work per
-- stored message, for a lookup only group members need, once per request.
-- Instead, per group and 10-second bucket of sent_at_us, the lowest seq
-- stored in it (written with the messages, in the same transaction). A
-- lookup takes the latest bucket at or before the join time and reads the
-- primary key from its first_seq: at most one bucket's messages.
CREATE TABLE history_group_marks (
    conv      VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    bucket    BIGINT          NOT NULL,
    first_seq BIGINT UNSIGNED NOT NULL,
    PRIMARY KEY (conv, bucket)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

INSERT INTO history_group_marks (conv, bucket, first_seq)
SELECT conv, sent_at_us DIV 10000000, MIN(seq)
FROM history_messages
WHERE conv LIKE 'g:%'
GROUP BY conv, sent_at_us DIV 10000000;

ALTER TABLE history_messages DROP INDEX ix_history_messages_conv_time;
