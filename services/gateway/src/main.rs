//! The gateway binary: reads its configuration, builds a node and serves
//! until a signal asks it to stop (then drains).

use gateway::{Application, Config};

// Messages are allocated on one worker thread and freed on another; glibc's
// malloc serialised that on its arena locks (20 % of samples at saturation).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("gateway");
    let config = Config::from_env()?;
    let node_id = config.node_id.clone();
    let shutdown = Shutdown::on_signals();
    let app = Application::build(config, shutdown).await?;
    tracing::info!(node = node_id, tcp = %app.tcp_addr(), http = %app.http_addr(), admin = %app.admin_addr(), "gateway listening");
    app.run_until_stopped().await;
    tracing::info!("gateway stopped");
    telemetry.shutdown().await;
    Ok(())
}
