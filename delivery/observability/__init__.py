"""What an operator watches: Prometheus metrics, OpenTelemetry traces and structured logs."""
