//! The history service: every 1:1 and group message, per conversation and
//! in sequence, fed asynchronously from the gateways' Redis Streams; read
//! marks and unread counts.
//!
//! `main.rs` is thin: [`Config::from_env`] → [`Application::build`] →
//! [`Application::run_until_stopped`]. Inside:
//! - [`domain`]: validated values (conversation ids, pages, stream entries);
//! - [`stream`]: the Redis side of the history streams (one Redis or a
//!   Redis Cluster);
//! - [`ingest`]: the consumer loop, stream → batch → transaction → ack → trim;
//! - [`store`]: the only module with SQL;
//! - [`search`]: what a search query means and where a hit matched (the
//!   index itself is MariaDB's Mroonga engine, read by [`store`]);
//! - [`service`]: who may see what (parties, group members from their join
//!   time, via [`members`]);
//! - [`grpc`]: translation between protobuf and the domain;
//! - [`retention`]: deleting what is older than the retention period;
//! - [`error`]: the one error enum and its mapping to `tonic::Status`.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod ingest;
pub mod members;
pub mod metrics;
pub mod retention;
pub mod search;
pub mod service;
pub mod startup;
pub mod store;
pub mod stream;

pub use config::Config;
pub use error::HistoryError;
pub use startup::Application;
