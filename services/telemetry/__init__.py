"""Application Insights telemetry: setup (once, at the edge), spans and metrics (OpenTelemetry API,
no-ops while telemetry is off), and the backlog gauges' cached readings. See docs/operations.md."""
