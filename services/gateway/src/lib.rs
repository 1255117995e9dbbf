//! A gateway node: holds client connections (classic TCP and WebSocket) and
//! the Redis subscriptions of the users connected to it.
//!
//! - [`protocol`]: framing and the classic messages (pure);
//! - [`session`]: one connection's request loop;
//! - [`writer`]: one connection's writer: replies, and deliveries from the
//!   live queue, the offline store and the inbox, in order;
//! - [`transport`]: TCP, WebSocket and `/healthz`;
//! - [`node`]: what sessions share, and how a message finds its receiver;
//! - [`cluster`]: everything asked of Redis (inboxes, routing, presence, control);
//! - [`registry`]: this node's sessions by user;
//! - [`upstream`]: gRPC clients of the user and offline services.
//!
//! **Architecture Invariant:** the gateway keeps no durable state. Nodes
//! never talk to each other directly: only through Redis.

pub mod cluster;
pub mod config;
pub mod conversations;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod proxy_header;
pub mod registry;
pub mod session;
pub mod startup;
pub mod transport;
pub mod upstream;
pub mod web;
pub mod writer;

pub use config::Config;
pub use startup::Application;
