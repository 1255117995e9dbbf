//! Without trace export, a span on the chat path costs a callsite check:
//! the log layer never builds one (it records events only).

#[test]
fn without_trace_export_spans_are_not_built_and_events_still_are_logged() {
    for name in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        assert!(
            std::env::var(name).map_or(true, |v| v.trim().is_empty()),
            "this test needs {name} unset (no trace export)"
        );
    }
    let _guard = telemetry::init("telemetry-test");
    let span = tracing::info_span!("chat.request", user = 1);
    assert!(
        span.is_disabled(),
        "a span was built with nothing to export it to"
    );
    let _entered = span.enter();
    assert!(
        tracing::enabled!(tracing::Level::INFO),
        "info events must still reach the log"
    );
}
