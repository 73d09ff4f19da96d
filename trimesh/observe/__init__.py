"""Observability: access log (metrics and tracing come later)."""
