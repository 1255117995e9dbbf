//! The user service: accounts, friendships and groups, served over gRPC.
//!
//! `main.rs` is thin: [`Config::from_env`] → [`Application::build`] →
//! [`Application::run_until_stopped`]. Inside:
//! - [`domain`]: types that cannot hold an invalid value (names, ids, passwords);
//! - [`service`]: the use cases (register, login, friends, groups);
//! - [`password`]: argon2id hashing, off the async runtime and bounded;
//! - [`store`]: the only module with SQL;
//! - [`grpc`]: translation between protobuf and the domain, nothing more;
//! - [`error`]: the one error enum and its mapping to `tonic::Status`.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod password;
pub mod service;
pub mod sessions;
pub mod startup;
pub mod store;

pub use config::Config;
pub use error::UserError;
pub use startup::Application;
