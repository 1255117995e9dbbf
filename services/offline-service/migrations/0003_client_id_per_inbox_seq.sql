-- A message stored while Redis was unreachable (inbox_seq 0) and the same
-- message moved here later from the inbox (with its inbox sequence) are two
-- entries: the gateway appends the first to the inbox, where it gets that
-- sequence, and a move must not be taken for a retry of it (the move's copy
-- is the one that keeps the message's place among the older ones). A retry
-- of either still stores nothing twice.
ALTER TABLE offline_messages
    DROP INDEX uq_offline_messages_client_id,
    ADD UNIQUE KEY uq_offline_messages_client_id (receiver_id, sender_id, client_msg_id, inbox_seq);

-- Which receivers have messages without an inbox sequence (a gateway asks
-- after a Redis outage and at start).
ALTER TABLE offline_messages ADD INDEX ix_offline_messages_unsequenced (inbox_seq, receiver_id);
