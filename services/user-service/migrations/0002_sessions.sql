-- Session tokens: a device that logged in with its password stays signed in
-- with a token instead. Only a hash of the token is stored (BLAKE2s-256 of
-- the token's text): the table read out is no way in. Times are Unix
-- milliseconds.
CREATE TABLE user_sessions (
    token_hash    BINARY(32)   NOT NULL,
    user_id       BIGINT       NOT NULL,
    device        VARCHAR(64)  NOT NULL,
    started_at_ms BIGINT       NOT NULL,
    expires_at_ms BIGINT       NOT NULL,
    PRIMARY KEY (token_hash),
    KEY ix_user_sessions_user (user_id),
    CONSTRAINT fk_user_sessions_user FOREIGN KEY (user_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
