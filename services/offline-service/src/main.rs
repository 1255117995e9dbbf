use offline_service::{Application, Config};
use shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("offline-service");
    let config = Config::from_env()?;
    let shutdown = Shutdown::on_signals();
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), metrics = ?app.metrics_addr(), "offline service listening");
    app.run_until_stopped(shutdown).await?;
    tracing::info!("offline service stopped");
    telemetry.shutdown().await;
    Ok(())
}
