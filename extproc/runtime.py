"""What a loaded config means at run time: route table, model map, provider keys.

A ``Runtime`` is built once per (re)load and never mutated, so a request keeps
the snapshot it started with while a reload swaps in a new one. Long-lived
services (store, metrics, access log) are shared across reloads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from extproc.config.loader import ConfigError
from extproc.config.model import (
    GatewayConfig,
    ModelConfig,
    ProviderConfig,
    RouteApi,
    cluster_name,
)

if TYPE_CHECKING:
    from extproc.store.usage import UsageStore
    from extproc.store.usage_writer import UsageWriter
    from extproc.telemetry.access_log import AccessLog
    from extproc.telemetry.metrics import GatewayMetrics


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    api: RouteApi
    forced_model: str | None


@dataclass(frozen=True, slots=True)
class Upstream:
    """Everything needed to send one model's requests to its provider."""

    provider: ProviderConfig
    cluster: str
    chat_path: str
    upstream_model: str
    # None when the provider has no credential configured.
    authorization: str | None


@dataclass(slots=True)
class Services:
    metrics: GatewayMetrics
    access_log: AccessLog
    store: UsageStore | None = None
    usage_writer: UsageWriter | None = None


class RouteTable:
    """Maps a request path to a route: exact paths first, then the longest prefix."""

    def __init__(self, config: GatewayConfig) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[tuple[str, Route]] = []
        for spec in config.routes:
            route = Route(spec.name, spec.api, spec.model)
            if spec.path is not None:
                self._exact[spec.path] = route
            elif spec.path_prefix is not None:
                self._prefixes.append((spec.path_prefix.rstrip("/"), route))
        self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)

    def resolve(self, path: str) -> Route | None:
        path = path.split("?", 1)[0]
        found = self._exact.get(path)
        if found is not None:
            return found
        for prefix, route in self._prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return route
        return None


class Runtime:
    def __init__(self, config: GatewayConfig, services: Services) -> None:
        self.config = config
        self.services = services
        self.routes = RouteTable(config)
        keys = {p.name: _provider_key(p) for p in config.providers}
        self.upstreams: dict[str, Upstream] = {
            model.name: _upstream(model, config.provider(model.provider), keys[model.provider])
            for model in config.models
        }
        self.model_names = tuple(model.name for model in config.models)


def _upstream(model: ModelConfig, provider: ProviderConfig, key: str | None) -> Upstream:
    return Upstream(
        provider=provider,
        cluster=cluster_name(provider),
        chat_path=provider.path_prefix + "/chat/completions",
        upstream_model=model.upstream_model or model.name,
        authorization=f"Bearer {key}" if key else None,
    )


def _provider_key(provider: ProviderConfig) -> str | None:
    if provider.api_key is not None and provider.api_key.get_secret_value():
        return provider.api_key.get_secret_value()
    if provider.api_key_file:
        # Read once per (re)load; a rotated Kubernetes Secret is picked up on reload.
        try:
            return Path(provider.api_key_file).read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ConfigError(
                "config",
                [f"providers.{provider.name}.api_key_file: cannot read: {exc.strerror}"],
            ) from None
    return None
