"""Observability: access log, metrics, live figures, tracing and export, the dashboard."""
