//! Fixtures for end-to-end tests: a whole clusterchat stack of real
//! processes (user, offline and history services, gateway nodes, optionally
//! nginx and a private Redis or Redis Cluster) on free loopback ports, and
//! clients that speak the classic protocol over TCP or WebSocket, and
//! (in [`browser`]) headless Chromium driving the web client.
//!
//! Every stack gets fresh databases and its own Redis key prefix, so tests
//! run side by side against the shared test MariaDB and Redis that
//! `just test` starts: a single Redis in its first run, a Redis Cluster in
//! its second (`CLUSTERCHAT_TEST_REDIS_URL`, `CLUSTERCHAT_TEST_REDIS_BACKEND`).
//! Processes are killed when the stack is dropped.
//!
//! The stack is in `stack` ([`StackBuilder`], [`Stack`]), its processes in
//! `process`, nginx in front of it in `nginx`, the clients in `client`;
//! everything a test uses is re-exported here.

pub use test_support::{PATIENCE, assert_eventually};

pub mod browser;
mod client;
mod nginx;
pub mod otlp;
mod process;
pub mod redis;
mod stack;

pub use client::{
    Client, RECV_TIMEOUT, WsClient, chat, group_chat, http_get, joined_at_least_once, metric_value,
    next_where, offline_messages, parse_list, texts,
};
pub use nginx::{Nginx, NginxTls};
pub(crate) use process::{addr, wait_for_port};
pub use process::{bin, free_port, rss_kib, run_chat, web_dist};
pub use redis::{ClusterMaster, PrivateRedis, RedisBackend, RedisShape, user_hash_tag};
pub use stack::{Gateway, Stack, StackBuilder};
