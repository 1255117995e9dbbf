use shutdown::Shutdown;
use user_service::{Application, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("user-service");
    let config = Config::from_env()?;
    let shutdown = Shutdown::on_signals();
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), metrics = ?app.metrics_addr(), "user service listening");
    app.run_until_stopped(shutdown).await?;
    tracing::info!("user service stopped");
    telemetry.shutdown().await;
    Ok(())
}
