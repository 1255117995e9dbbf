//! Logs, traces and metrics shared by every clusterchat process.
//!
//! - **Logs**: structured `tracing`, filtered by `RUST_LOG` (default `info`).
//! - **Traces**: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, spans are exported over
//!   OTLP/gRPC in batches; the other standard variables apply
//!   (`OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`,
//!   `OTEL_SDK_DISABLED`). A collector that is down costs a dropped batch,
//!   never a slower request or a log line per span. Trace context crosses
//!   processes as W3C `traceparent`: in gRPC metadata ([`propagation`]) and
//!   inside the Redis pub/sub payload.
//! - **Metrics**: one Prometheus registry per process ([`metrics`]), served
//!   as text on `/metrics`.
//!
//! **Architecture Invariant:** message texts and passwords are never recorded
//! as span fields or log fields; callers pass ids and sizes instead.

pub mod metrics;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{Resource, runtime, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _,
    filter::FilterExt as _,
    fmt,
    layer::{Context, Filter},
    prelude::*,
};

/// Flushes and stops trace export when the process ends.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports what is still buffered (bounded by `OTEL_BSP_EXPORT_TIMEOUT`).
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio_shutdown(provider).await;
        }
    }
}

async fn tokio_shutdown(provider: SdkTracerProvider) -> Result<(), String> {
    // The SDK's shutdown blocks; keep it off the async workers.
    std::thread::spawn(move || provider.shutdown().map_err(|e| e.to_string()))
        .join()
        .map_err(|_| "telemetry shutdown panicked".to_owned())?
}

fn otlp_configured() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// A per-layer filter that lets events through and never spans, and says
/// so once per callsite (`filter_fn` would be asked at every span).
struct EventsOnly;

impl<S> Filter<S> for EventsOnly {
    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: &Context<'_, S>) -> bool {
        metadata.is_event()
    }

    fn callsite_enabled(
        &self,
        metadata: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if metadata.is_span() {
            tracing::subscriber::Interest::never()
        } else {
            tracing::subscriber::Interest::always()
        }
    }
}

/// Installs logging and, when configured, trace export for `service`.
/// Call once, first thing in `main`, inside the Tokio runtime.
pub fn init(service: &'static str) -> TelemetryGuard {
    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The log layer records events only. Spans exist for traces; letting the
    // log layer record them too would format every span's fields on the chat
    // path (it showed in profiles) for log lines that never mention them.
    // It says so at each callsite (`EventsOnly`), so without trace export
    // a span costs a cached callsite check: no span is built, stored or
    // entered on the chat path.
    let logs = fmt::layer()
        .with_target(true)
        .with_filter(log_filter.and(EventsOnly));
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );

    let provider = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => {
                let processor =
                    opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
                        exporter,
                        runtime::Tokio,
                    )
                    .build();
                let resource = if std::env::var("OTEL_SERVICE_NAME").is_ok() {
                    Resource::builder().build()
                } else {
                    Resource::builder().with_service_name(service).build()
                };
                Some(
                    SdkTracerProvider::builder()
                        .with_span_processor(processor)
                        .with_resource(resource)
                        .build(),
                )
            }
            Err(e) => {
                eprintln!("{service}: OTLP trace export disabled: {e}");
                None
            }
        }
    } else {
        None
    };

    // Spans of the exporter's own transport must not be traced (feedback).
    let traces = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(EnvFilter::new(
                "info,h2=off,hyper=off,hyper_util=off,tonic=off,tower=off,opentelemetry=off,opentelemetry_sdk=off",
            ))
    });
    // Without export no trace layer at all: an absent (`None`) layer would
    // take every span, so spans would be built for nothing.
    let installed = match traces {
        Some(traces) => tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .try_init(),
        None => tracing_subscriber::registry().with(logs).try_init(),
    };
    if installed.is_ok() {
        tracing::info!(
            service,
            version = env!("CARGO_PKG_VERSION"),
            otlp = provider.is_some(),
            "starting"
        );
    }
    TelemetryGuard { provider }
}

/// For tests: a subscriber that writes to the test harness, installed at most once.
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::registry()
        .with(fmt::layer().with_test_writer().with_filter(filter))
        .try_init();
}
