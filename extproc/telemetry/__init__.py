"""Telemetry: Prometheus metrics (``metrics``) and the per-request JSON log (``access_log``)."""
