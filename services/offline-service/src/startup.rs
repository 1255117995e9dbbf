//! Builds the offline service from its config and runs it until shutdown.

use std::net::SocketAddr;

use grpc_server::{BindError, BoundServer, GrpcServer, ServeError};
use shutdown::Shutdown;
use tonic::service::Routes;

use crate::{
    config::Config,
    grpc::OfflineGrpc,
    store::{MIGRATOR, OfflineStore},
};

pub const SERVICE_NAME: &str = "clusterchat.offline.v1.OfflineService";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot prepare the offline database")]
    Database(#[from] mysql_pool::PoolError),
}

pub struct Application {
    server: BoundServer,
    store: OfflineStore,
}

impl Application {
    /// Binds the port, waits for the database and applies migrations.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = mysql_pool::connect_lazy(&config.mysql)?;
        mysql_pool::prepare(&config.mysql, &pool, &MIGRATOR, config.startup_patience).await?;
        let store = OfflineStore::new(pool, config.limits);
        let server = GrpcServer {
            service_names: vec![SERVICE_NAME],
            file_descriptor_sets: vec![clusterchat_proto::offline::v1::FILE_DESCRIPTOR_SET],
            request_timeout: config.request_timeout,
            internal_token: config.internal_token,
        }
        .bind(config.listen, config.metrics_listen)
        .await?;
        Ok(Self { server, store })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServeError> {
        self.server
            .serve(Routes::new(OfflineGrpc::new(self.store)), shutdown)
            .await
    }
}
