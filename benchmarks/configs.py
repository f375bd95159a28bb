"""The gateway configs the benchmark runs: ``config/gateway.yaml`` plus a small overlay each.

An overlay is a dict merged into the default config (dicts merge key by key,
anything else replaces), plus optional per-route additions by route name. Each
scenario writes its merged file into its work directory, so what ran can be
read back after the run.

- ``PROD``: issue #10's "default production pipeline": the default config's
  org API keys, metrics and log line, one quota rule in Redis (requests and
  tokens per minute per key, set high enough never to refuse) and, once the
  guardrails of issue #7 are on main, one regex guard on the request.
- ``STREAM``: the default config plus, once guardrails exist, a response guard
  on the streamed answer; usage counting is always on.
- ``workers``: ``server.workers`` (issue #10 item 4) on top of ``PROD``.
- ``memory_overlay``: 10,000 API keys, 1,000 limit rules (issue #10 item 5).

Guardrails and workers are detected from the config model, so the rows that
need them turn on by themselves once those land; until then the rows say so.
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from extproc.config.model import GatewayConfig, ServerConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
GATEWAY_CONFIG = REPO_ROOT / "config" / "gateway.yaml"
CHAT_ROUTE = "openai-chat"

Json = dict[str, Any]

# One rule, two counters: a reservation before the upstream call and a
# settlement after it, the production shape of a quota. Never refuses.
PROD_QUOTA: Json = {
    "quotas": {
        "rules": [
            {
                "name": "key-budget",
                "subject": "api_key",
                "requests_per_minute": 1_000_000_000,
                "tokens_per_minute": 1_000_000_000_000,
            }
        ]
    }
}

# The guardrails of issue #7 in its config schema (top-level `guardrails.policies`,
# per-route `guardrails: [policy names]`; docs/guardrails.md). Used only once the
# config model has `guardrails` (until then the rows run without and say so).
# Request: one RE2 pattern, rejecting a prompt that carries an OpenAI-style
# secret; the bench prompt has none, so every guard scans it all (the common case).
REQUEST_GUARD: Json | None = {
    "guardrails": {
        "policies": [
            {
                "name": "bench-prod",
                "request": [
                    {
                        "name": "no-secrets",
                        "patterns": ["sk-[A-Za-z0-9]{32,64}"],
                        "action": "reject",
                    }
                ],
            }
        ]
    }
}
REQUEST_GUARD_ROUTE: Json | None = {"guardrails": ["bench-prod"]}
# Response: the same pattern masking the streamed answer (stream-safe: the guard
# holds back at most the pattern's longest match between chunks).
RESPONSE_GUARD: Json | None = {
    "guardrails": {
        "policies": [
            {
                "name": "bench-stream",
                "response": [
                    {"name": "no-secrets", "patterns": ["sk-[A-Za-z0-9]{32,64}"], "action": "mask"}
                ],
            }
        ]
    }
}
RESPONSE_GUARD_ROUTE: Json | None = {"guardrails": ["bench-stream"]}


@dataclass(frozen=True, slots=True)
class Overlay:
    """What a scenario changes in the default config."""

    values: Json = field(default_factory=dict)
    # route name -> fields set on that route
    routes: dict[str, Json] = field(default_factory=dict)


def guard_available() -> bool:
    """The config has guardrails and the overlays above are filled in for its schema."""
    return "guardrails" in GatewayConfig.model_fields and REQUEST_GUARD is not None


def workers_available() -> bool:
    return "workers" in ServerConfig.model_fields


def prod_overlay() -> Overlay:
    if not guard_available():
        return Overlay(PROD_QUOTA)
    assert REQUEST_GUARD is not None and REQUEST_GUARD_ROUTE is not None
    return Overlay(merge(PROD_QUOTA, REQUEST_GUARD), {CHAT_ROUTE: REQUEST_GUARD_ROUTE})


def stream_overlay() -> Overlay:
    if not guard_available() or RESPONSE_GUARD is None or RESPONSE_GUARD_ROUTE is None:
        return Overlay()
    return Overlay(RESPONSE_GUARD, {CHAT_ROUTE: RESPONSE_GUARD_ROUTE})


def workers_overlay(workers: int) -> Overlay:
    prod = prod_overlay()
    return Overlay(merge(prod.values, {"server": {"workers": workers}}), prod.routes)


def memory_key(index: int) -> str:
    """The secret of the memory row's key number ``index`` (what the client sends)."""
    return f"bench-memory-key-{index:05d}"


def memory_overlay(keys: int, rules: int) -> Overlay:
    """``keys`` API keys (as SHA-256 digests, each its own user, spread over ``rules - 1``
    groups) and ``rules`` limit rules: one per group plus one per key, all far above the load."""
    groups = max(1, rules - 1)
    api_keys = [
        {
            "id": f"k{index:05d}",
            "key_sha256": hashlib.sha256(memory_key(index).encode()).hexdigest(),
            "user_id": f"u{index:05d}",
            "group_id": f"g{index % groups:04d}",
        }
        for index in range(keys)
    ]
    limit_rules: list[Json] = [
        {"name": f"group-{group:04d}", "subject": "group", "match": f"g{group:04d}",
         "requests_per_minute": 1_000_000_000}
        for group in range(groups)
    ]  # fmt: skip
    limit_rules.append(
        {"name": "key-budget", "subject": "api_key", "tokens_per_minute": 1_000_000_000_000}
    )
    return Overlay({"auth": {"api_keys": api_keys}, "quotas": {"rules": limit_rules[:rules]}})


def merge(base: Json, overlay: Json) -> Json:
    """``overlay`` merged into a copy of ``base``: dicts key by key, anything else replaced."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_overlay(config: Json, overlay: Overlay) -> Json:
    merged = merge(config, overlay.values)
    missing = set(overlay.routes) - {route.get("name") for route in merged.get("routes", [])}
    if missing:
        raise ValueError(f"overlay names routes the config does not have: {sorted(missing)}")
    merged["routes"] = [
        merge(route, overlay.routes.get(route.get("name", ""), {}))
        for route in merged.get("routes", [])
    ]
    return merged


def write_config(path: Path, overlay: Overlay, base: Path = GATEWAY_CONFIG) -> Path:
    """The default config with ``overlay`` applied, written to ``path``."""
    config = yaml.safe_load(base.read_text(encoding="utf-8"))
    merged = apply_overlay(config, overlay)
    path.parent.mkdir(parents=True, exist_ok=True)
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(merged, Dumper=dumper, sort_keys=False, width=1000), encoding="utf-8")
    return path
