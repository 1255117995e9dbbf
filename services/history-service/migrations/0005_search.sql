-- Text search over history (issue 22).
--
-- MariaDB's Mroonga storage engine (Groonga) indexes text written without
-- spaces: its TokenBigram tokenizer cuts Chinese, Japanese and other such
-- text into overlapping pairs of characters, and keeps a run of letters and
-- digits as one word; NormalizerAuto folds case and width (NFKC). InnoDB's
-- own FULLTEXT splits on spaces only, so it would find nothing in "今天天气很好".
--
-- The plugin ships apart from the server (Debian/Ubuntu:
-- mariadb-plugin-mroonga); this installs it once per server (a no-op when
-- it is installed or loaded with --plugin-load-add). Without the package the
-- migration fails with "Can't open shared library 'ha_mroonga.so'".
INSTALL PLUGIN IF NOT EXISTS Mroonga SONAME 'ha_mroonga';

-- One row per stored message that has text: what the index reads. Mroonga
-- is not transactional: rows written by an ingest transaction that then
-- rolls back stay, so a search only returns hits still present in
-- history_messages (retracted, renumbered or deleted ones are dropped there);
-- INSERT IGNORE makes the retried batch a no-op here.
CREATE TABLE history_search (
    conv       VARCHAR(48) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    seq        BIGINT UNSIGNED NOT NULL,
    sent_at_us BIGINT          NOT NULL,
    body       MEDIUMTEXT      NOT NULL,
    PRIMARY KEY (conv, seq),
    -- What retention deletes.
    KEY ix_history_search_time (sent_at_us),
    FULLTEXT INDEX ft_history_search_body (body)
        COMMENT 'tokenizer "TokenBigram", normalizer "NormalizerAuto"'
) ENGINE=Mroonga DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;

-- Messages stored before this migration, so search covers all of history.
INSERT IGNORE INTO history_search (conv, seq, sent_at_us, body)
SELECT conv, seq, sent_at_us, JSON_UNQUOTE(JSON_EXTRACT(frame, '$.msg'))
FROM history_messages
WHERE JSON_VALID(frame) AND JSON_TYPE(JSON_EXTRACT(frame, '$.msg')) = 'STRING'
  AND JSON_UNQUOTE(JSON_EXTRACT(frame, '$.msg')) <> '';
