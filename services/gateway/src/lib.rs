//! A gateway node: holds client connections (classic TCP and WebSocket) and
//! the Redis subscriptions of the users connected to it.
//!
//! Rooms, each depending only on those below it:
//! - [`net`]: the ways in: TCP, HTTP (WebSocket upgrade, admin, the web
//!   client's files), the PROXY header;
//! - [`session`]: one connection's request loop, and a room per request kind;
//! - [`delivery`]: one message to its receivers, and onto one socket;
//! - [`node`]: the long-lived parts a node's sessions share;
//! - [`redis`]: everything asked of Redis (inboxes, numbering, routing,
//!   presence, control); [`upstream`]: gRPC clients of the user, offline
//!   and history services;
//! - [`protocol`]: framing and the classic messages (pure);
//!   [`config`], [`metrics`].
//!
//! [`startup`] builds a node from its [`Config`] and runs it.
//!
//! **Architecture Invariant:** the gateway keeps no durable state. Nodes
//! never talk to each other directly: only through Redis.

pub mod config;
pub mod delivery;
pub mod metrics;
pub mod net;
pub mod node;
pub mod protocol;
pub mod redis;
pub mod session;
pub mod startup;
pub mod upstream;

pub use config::Config;
pub use startup::Application;
