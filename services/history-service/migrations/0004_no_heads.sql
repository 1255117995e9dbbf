-- A conversation's newest message is the last row of its primary key range
-- in history_messages: ListConversations reads it from there. The heads
-- table, raised with every ingest batch, cost MariaDB about a third of its
-- work per stored message over many conversations.
DROP TABLE history_heads;
