//! The offline service: messages for users who are not connected, kept until
//! they come back and acknowledge them.
//!
//! `main.rs` is thin: [`Config::from_env`] → [`Application::build`] →
//! [`Application::run_until_stopped`]. Inside:
//! - [`domain`]: validated requests (ids, payload within bounds, page sizes);
//! - [`store`]: the only module with SQL, and where the no-loss rules live;
//! - [`grpc`]: translation between protobuf and the domain;
//! - [`error`]: the one error enum and its mapping to `tonic::Status`.

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod startup;
pub mod store;

pub use config::Config;
pub use error::OfflineError;
pub use startup::Application;
