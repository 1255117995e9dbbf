//! Builds the history service from its config and runs it until shutdown:
//! the gRPC server, the ingest and retention.

use std::net::SocketAddr;

use grpc_server::{BindError, BoundServer, GrpcServer, ServeError};
use shutdown::Shutdown;
use tonic::service::Routes;

use crate::{
    config::{Config, IngestSettings, Retention},
    grpc::HistoryGrpc,
    ingest::Ingest,
    members::{Memberships, UserServiceUrlError},
    retention,
    service::History,
    store::{HistoryStore, MIGRATOR},
};

pub const SERVICE_NAME: &str = "clusterchat.history.v1.HistoryService";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot prepare the history database")]
    Database(#[from] mysql_pool::PoolError),
    #[error(transparent)]
    UserService(#[from] UserServiceUrlError),
}

pub struct Application {
    server: BoundServer,
    history: History,
    store: HistoryStore,
    ingest: IngestSettings,
    retention: Retention,
}

impl Application {
    /// Binds the port, waits for the database and applies migrations. Redis
    /// and the user service are not needed to start: the ingest connects
    /// (and keeps reconnecting) by itself, and the user service is asked
    /// only when a request needs group memberships.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = mysql_pool::connect_lazy(&config.mysql)?;
        mysql_pool::prepare(&config.mysql, &pool, &MIGRATOR, config.startup_patience).await?;
        let store = HistoryStore::new(pool, config.search);
        let members = Memberships::new(
            &config.user_service,
            &config.internal_token,
            config.request_timeout,
            config.membership_ttl,
        )?;
        let server = GrpcServer {
            service_names: vec![SERVICE_NAME],
            file_descriptor_sets: vec![clusterchat_proto::history::v1::FILE_DESCRIPTOR_SET],
            request_timeout: config.request_timeout,
            internal_token: config.internal_token,
        }
        .bind(config.listen, config.metrics_listen)
        .await?;
        crate::metrics::metrics();
        Ok(Self {
            server,
            history: History::new(store.clone(), members),
            store,
            ingest: config.ingest,
            retention: config.retention,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.server.metrics_addr()
    }

    /// Serves, ingests and expires until `shutdown`; then waits for the
    /// batch in hand to be stored and acknowledged (or left pending, to be
    /// read again at the next start).
    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let ingest =
            tokio::spawn(Ingest::new(self.ingest, self.store.clone()).run(shutdown.clone()));
        let retention = tokio::spawn(retention::run(self.store, self.retention, shutdown.clone()));
        let served = self
            .server
            .serve(
                Routes::new(HistoryGrpc::new(self.history)),
                shutdown.clone(),
            )
            .await;
        // The server also ends on its own failure: stop the rest with it.
        shutdown.trigger();
        let _ = ingest.await;
        let _ = retention.await;
        served
    }
}
