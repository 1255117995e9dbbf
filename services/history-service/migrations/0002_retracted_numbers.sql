-- A retraction removes one number of a message, not the message for good
-- (issue 20, hole 2): a chat refused altogether is retracted, and when its
-- sender retries it (same client id, so the same mid) the gateway numbers it
-- afresh. That retry must be stored, so a tombstone is keyed by (mid, seq):
-- it hides its own number's `op=m` entry whenever that comes, and no other.
ALTER TABLE history_retracted DROP PRIMARY KEY, ADD PRIMARY KEY (mid, seq);

-- Messages whose mid was already stored under another number when they came
-- (`history_messages.mid` is unique): a retry that overtook the retraction of
-- its first number (entries read again after a crash, or taken over from
-- another consumer), or a chat numbered twice because it was retried after
-- the dedup key expired. Kept until the stored number is retracted (then the
-- lowest one kept here takes its place) or past retention. Rarely holds any.
CREATE TABLE history_renumbered (
    mid        VARCHAR(100)    NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    conv       VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    sender_id  BIGINT          NOT NULL,
    sent_at_us BIGINT          NOT NULL,
    frame      MEDIUMTEXT      NOT NULL,
    PRIMARY KEY (mid, seq),
    KEY ix_history_renumbered_time (sent_at_us)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
