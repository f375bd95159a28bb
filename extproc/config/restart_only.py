"""The settings a running process took at start and keeps until it restarts.

A reload cannot move a listener, the store connection, the request log's outputs
or the metrics' label budget: the process keeps the started values (and warns,
``server.Gateway.apply``). A worker the supervisor of ``serve --workers N``
restarts after a crash takes the same started values, with everything else from
the config last applied, so it serves as its siblings do.
"""

from __future__ import annotations

from extproc.config.model import GatewayConfig

# Sections the running process took at start (listeners, the store connection).
RESTART_ONLY_SECTIONS = ("server", "store")
# Parts of `telemetry` set up once at start: the request log's sinks, the metrics'
# label budget and quota gauges. A reload takes the rest of the section (logged content).
STARTED_TELEMETRY_FIELDS = {
    "log": ("stdout", "file", "max_bytes", "backup_count", "queue_size"),
    "metrics": ("max_label_values", "quota_gauges", "multiprocess_dir"),
}


def as_started(started: GatewayConfig, loaded: GatewayConfig) -> GatewayConfig:
    """``loaded`` with every restart-only setting as ``started`` has it: the ``server``
    and ``store`` sections, ``management.address``, whether the management API is
    served and its ``tls``, and the ``telemetry`` fields set up at start."""
    update: dict[str, object] = {name: getattr(started, name) for name in RESTART_ONLY_SECTIONS}
    update["management"] = loaded.management.model_copy(
        update={
            "address": started.management.address,
            "enabled": started.management.serving,
            "tls": started.management.tls,
        }
    )
    telemetry = {
        section: getattr(loaded.telemetry, section).model_copy(
            update={field: getattr(getattr(started.telemetry, section), field) for field in fields}
        )
        for section, fields in STARTED_TELEMETRY_FIELDS.items()
    }
    update["telemetry"] = loaded.telemetry.model_copy(update=telemetry)
    return loaded.model_copy(update=update)
