-- Pending messages per receiver. Owned by the offline service alone.
--
-- offline_receivers holds, per receiver, the last position handed out and the
-- number of pending messages. Every Store and Ack locks that row first, so
-- positions are assigned in commit order: when a reader has seen position N,
-- every position below N was already committed and visible to it. That is
-- what makes "Ack up to N" remove only messages the reader has fetched.

CREATE TABLE offline_receivers (
    receiver_id   BIGINT          NOT NULL,
    last_position BIGINT UNSIGNED NOT NULL,
    pending       INT UNSIGNED    NOT NULL,
    PRIMARY KEY (receiver_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE offline_messages (
    receiver_id   BIGINT          NOT NULL,
    position      BIGINT UNSIGNED NOT NULL,
    sender_id     BIGINT          NOT NULL,
    -- NULL when the sender gave no idempotency key (NULLs never collide).
    client_msg_id VARCHAR(128)    NULL,
    payload       MEDIUMTEXT      NOT NULL,
    stored_at_ms  BIGINT          NOT NULL,
    PRIMARY KEY (receiver_id, position),
    UNIQUE KEY uq_offline_messages_client_id (receiver_id, sender_id, client_msg_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
