use history_service::{Application, Config};
use shutdown::Shutdown;

// The ingest allocates per stream entry and per row: mimalloc, as the
// gateway.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("history-service");
    let config = Config::from_env()?;
    let shutdown = Shutdown::on_signals();
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), metrics = ?app.metrics_addr(), "history service listening");
    app.run_until_stopped(shutdown).await?;
    tracing::info!("history service stopped");
    telemetry.shutdown().await;
    Ok(())
}
