//! Builds the user service from its config and runs it until shutdown.

use std::net::SocketAddr;

use grpc_server::{GrpcServer, ServeError};
use shutdown::Shutdown;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::{
    config::Config,
    grpc::UserGrpc,
    password::PasswordHasher,
    service::Users,
    store::{MIGRATOR, UserStore},
};

pub const SERVICE_NAME: &str = "clusterchat.user.v1.UserService";

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("cannot prepare the user database")]
    Database(#[from] mysql_pool::PoolError),
    #[error("cannot set up password hashing")]
    Hasher(#[source] crate::UserError),
}

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    metrics: Option<(TcpListener, SocketAddr)>,
    users: Users,
    config: Config,
}

impl Application {
    /// Binds the port, waits for the database and applies migrations.
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        let pool = mysql_pool::connect_lazy(&config.mysql)?;
        mysql_pool::prepare(&config.mysql, &pool, &MIGRATOR, config.startup_patience).await?;
        let hasher = PasswordHasher::new(config.hash_concurrency).map_err(StartupError::Hasher)?;
        let users = Users::new(UserStore::new(pool), hasher);

        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartupError::Bind(config.listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartupError::Bind(config.listen, e))?;
        let metrics = match config.metrics_listen {
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|e| StartupError::Bind(addr, e))?;
                let local = listener
                    .local_addr()
                    .map_err(|e| StartupError::Bind(addr, e))?;
                Some((listener, local))
            }
            None => None,
        };
        Ok(Self {
            listener,
            local_addr,
            metrics,
            users,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    pub async fn run_until_stopped(self, shutdown: Shutdown) -> Result<(), ServeError> {
        let server = GrpcServer {
            service_names: vec![SERVICE_NAME],
            file_descriptor_sets: vec![clusterchat_proto::FILE_DESCRIPTOR_SET],
            request_timeout: self.config.request_timeout,
        };
        server
            .serve(
                self.listener,
                self.metrics.map(|(listener, _)| listener),
                Routes::new(UserGrpc::new(self.users)),
                shutdown,
            )
            .await
    }
}
