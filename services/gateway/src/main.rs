use gateway::{Application, Config};
use shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = telemetry::init("gateway");
    let config = Config::from_env()?;
    let node_id = config.node_id.clone();
    let shutdown = Shutdown::on_signals();
    let app = Application::build(config, shutdown).await?;
    tracing::info!(node = node_id, tcp = %app.tcp_addr(), http = %app.http_addr(), "gateway listening");
    app.run_until_stopped().await;
    tracing::info!("gateway stopped");
    telemetry.shutdown().await;
    Ok(())
}
