//! One message to its receivers, and onto one socket:
//!
//! - [`send`]: a chat from its sender to its receivers' inboxes (numbered
//!   for history first), straight to receivers on this node;
//! - [`bus`]: what arrives over Redis pub/sub, to the sessions here;
//! - [`recent`]: the message ids a connection wrote lately (each once);
//! - [`sync`]: reading a user's stores in order (offline store, then inbox);
//! - [`writer`]: one connection's writer: replies, and deliveries from the
//!   live queue and the stores, in order.

pub mod bus;
pub mod recent;
pub mod send;
pub mod sync;
pub mod writer;
