-- Who blocks whom: a blocked user's one-to-one chats to the blocker are
-- refused (by the gateways, which cache each user's list).
CREATE TABLE blocks (
    user_id    BIGINT       NOT NULL,
    blocked_id BIGINT       NOT NULL,
    created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    PRIMARY KEY (user_id, blocked_id),
    CONSTRAINT fk_blocks_user FOREIGN KEY (user_id) REFERENCES users (id),
    CONSTRAINT fk_blocks_blocked FOREIGN KEY (blocked_id) REFERENCES users (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
