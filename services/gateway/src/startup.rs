//! Builds a gateway node and runs it until shutdown, then drains.

use std::{net::SocketAddr, sync::Arc};

use shutdown::Shutdown;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
};

use crate::{
    config::Config,
    delivery,
    node::Node,
    redis::{Redis, RedisError},
    upstream::{UpstreamUrlError, Upstreams},
};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {0}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("cannot reach redis")]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Upstream(#[from] UpstreamUrlError),
    #[error(transparent)]
    Web(#[from] crate::net::web::WebFilesError),
}

pub struct Application {
    node: Arc<Node>,
    /// The web client's files, served at `/` on the public HTTP port.
    web: Option<Arc<crate::net::web::WebFiles>>,
    tcp: TcpListener,
    http: TcpListener,
    admin: TcpListener,
    tcp_addr: SocketAddr,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    bus_events: mpsc::Receiver<crate::redis::BusEvent>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartupError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| StartupError::Bind(addr, e))?;
    let local = listener
        .local_addr()
        .map_err(|e| StartupError::Bind(addr, e))?;
    Ok((listener, local))
}

impl Application {
    pub async fn build(config: Config, shutdown: Shutdown) -> Result<Self, StartupError> {
        let (events_tx, bus_events) = mpsc::channel(65_536);
        let redis = Redis::connect(
            &config.redis_url,
            &config.redis_prefix,
            events_tx,
            shutdown.clone(),
        )
        .await?;
        redis.set_budgets(
            config.limits.max_inbox_bytes,
            config.limits.stream_max_bytes,
        );
        let upstreams = Upstreams::new(
            &config.user_service,
            &config.offline_service,
            &config.history_service,
            &config.internal_token,
            config.rpc_timeout,
        )?;
        let (tcp, tcp_addr) = bind(config.tcp_listen).await?;
        let (http, http_addr) = bind(config.http_listen).await?;
        let (admin, admin_addr) = bind(config.admin_listen).await?;
        let web = match &config.web_dir {
            Some(dir) => {
                let files = crate::net::web::WebFiles::load(dir)?;
                tracing::info!(dir = %dir.display(), files = files.len(), "serving the web client");
                Some(files)
            }
            None => None,
        };
        let node = Arc::new(Node::new(config, redis, upstreams, shutdown));
        Ok(Self {
            node,
            web,
            tcp,
            http,
            admin,
            tcp_addr,
            http_addr,
            admin_addr,
            bus_events,
        })
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// `/healthz` and `/metrics`.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Serves until shutdown is requested, then stops accepting, ends every
    /// session (their presence is released; what they had not written stays
    /// in the inboxes) and waits for that, at most the drain timeout.
    pub async fn run_until_stopped(self) {
        let node = self.node;
        let permits = Arc::new(Semaphore::new(node.config.limits.max_connections));
        let bus_events = self.bus_events;
        let on_bus = node.clone();
        tokio::spawn(async move { delivery::bus::dispatch(&on_bus, bus_events).await });
        let leases = node.clone();
        tokio::spawn(async move {
            let node = &leases;
            (node.lease)
                .keep(
                    &node.registry,
                    &node.redis,
                    &node.config.node_id,
                    &node.shutdown,
                )
                .await;
        });
        let trimmer = node.clone();
        tokio::spawn(async move { trimmer.trimmer.run().await });
        let nudges = node.clone();
        tokio::spawn(async move { nudges.offline.send_nudges().await });
        let tcp = tokio::spawn(crate::net::serve_tcp(
            node.clone(),
            self.tcp,
            permits.clone(),
        ));
        let http = tokio::spawn(crate::net::serve_http(
            node.clone(),
            self.http,
            permits,
            self.web,
        ));
        // The admin port answers until the process ends: probes see the
        // drain (`/healthz` says so) instead of a refused connection.
        let admin = crate::net::admin_router(node.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(self.admin, admin).await {
                tracing::error!(error = %e, "admin server failed");
            }
        });

        node.shutdown.requested().await;
        tracing::info!(sessions = node.registry.len(), "draining");
        let _ = tcp.await;
        node.tasks.close();
        if tokio::time::timeout(node.config.drain_timeout, node.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(left = node.tasks.len(), "drain timed out");
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), http).await;
        // Entries written but not yet trimmed would only be delivered again;
        // trim them now so a restart does not repeat them.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), node.trimmer.flush()).await;
    }
}
