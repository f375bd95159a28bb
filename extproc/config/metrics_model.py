"""The ``telemetry.metrics`` section: label budget, quota gauges, worker metric files."""

from __future__ import annotations

from pydantic import Field

from extproc.config.section import Section as _Section


class QuotaGaugesConfig(_Section):
    """Quota gauges read from the shared store (docs/metrics.md, "Quota gauges")."""

    enabled: bool = True
    # How often the current window counters are read from the store; the gauges
    # are at most this stale (plus subject_flush_interval_s for a new subject).
    refresh_interval_s: float = Field(default=15.0, gt=0, le=3600)
    # How often each process publishes the subjects it saw to the shared set.
    subject_flush_interval_s: float = Field(default=5.0, gt=0, le=3600)
    # A subject no request touched for this long leaves the gauges. The default
    # outlasts a calendar month, so a monthly quota stays visible all month.
    retention_s: float = Field(default=35 * 86400.0, gt=0)
    # At most this many subjects get gauges (the most recently seen win).
    max_subjects: int = Field(default=1000, gt=0)


class MetricsConfig(_Section):
    # Past this many distinct values a label folds new values into "other".
    max_label_values: int = Field(default=1000, gt=0)
    quota_gauges: QuotaGaugesConfig = QuotaGaugesConfig()
    # Where `serve --workers N` keeps prometheus_client's multiprocess files
    # (emptied at start). Default: a fresh temporary directory.
    multiprocess_dir: str | None = None
