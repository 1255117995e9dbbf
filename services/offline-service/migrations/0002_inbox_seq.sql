-- Where a message came from in the gateway's per-user inbox (0: nowhere).
-- The gateway moves undelivered inbox entries here and uses the sequence to
-- skip entries it had meanwhile delivered from the inbox itself.
ALTER TABLE offline_messages ADD COLUMN inbox_seq BIGINT UNSIGNED NOT NULL DEFAULT 0;
