"""Envoy's own records keep no query string: a client may have put a key there.

The gateway refuses a credential in the query (400 ``credential_in_query``), but
Envoy writes its access log and exports spans for that request all the same.
Both must carry the path without the query: the access log's ``path`` and the
span's ``http.url`` (Envoy's own tag is replaced by a custom tag of that name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap, render_bootstrap_yaml
from extproc.envoy_paths import ENVOY_PATH, MAX_PATH_TAG_LENGTH
from extproc.headers import METADATA_NAMESPACE
from tests.unit.test_envoy_bootstrap import assert_envoy_accepts

# Envoy's operators for the path that keep the query string.
WITH_QUERY = ("%REQ(:PATH)%", "X-ENVOY-ORIGINAL-PATH?:PATH", "%PATH%", "PATH(WQ")


def traced_gateway() -> GatewayConfig:
    return GatewayConfig.model_validate(
        {
            "providers": [{"name": "openai", "base_url": "https://api.openai.com/v1"}],
            "models": [{"name": "gpt-4o", "provider": "openai"}],
            "envoy": {"access_log": True},
            "telemetry": {"tracing": {"enabled": True, "otlp_endpoint": "127.0.0.1:4317"}},
        }
    )


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    found: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return found


def test_the_access_log_path_leaves_the_query_out() -> None:
    manager = hcm(render_bootstrap(traced_gateway()))
    answered, unanswered = (
        logger["typed_config"]["log_format"]["json_format"] for logger in manager["access_log"]
    )
    # A request the gateway answered: the path it named, without the query
    # (envoy_request_record.recorded_request).
    assert answered["path"] == f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:path)%"
    # Any other: the path the client sent, kept before any rewrite; NQ: no query. Read
    # unless it holds a key shape (envoy_paths).
    assert unanswered["path"] == ENVOY_PATH
    assert ENVOY_PATH.endswith(" : filter_state['io.aigw.client_path'])%")
    [kept] = manager["http_filters"][0]["typed_config"]["on_request_headers"]
    assert kept["format_string"]["text_format_source"]["inline_string"] == "%PATH(NQ)%"


def test_the_spans_url_is_rewritten_without_the_query_and_cut_like_envoys() -> None:
    tracing = hcm(render_bootstrap(traced_gateway()))["tracing"]
    [url_tag] = [tag for tag in tracing["custom_tags"] if tag["tag"] == "http.url"]
    value = url_tag["value"]
    # The client's authority: the provider route rewrites :authority, Envoy keeps the
    # client's in x-envoy-original-host.
    assert value.startswith("%REQ(X-FORWARDED-PROTO)%://%REQ(X-ENVOY-ORIGINAL-HOST?:AUTHORITY)%")
    assert value.endswith(f" : filter_state['io.aigw.client_path']):{MAX_PATH_TAG_LENGTH}%")
    assert value.removeprefix(value.split("%CEL(")[0]) == ENVOY_PATH.removesuffix("%") + (
        f":{MAX_PATH_TAG_LENGTH}%"
    )
    assert tracing["max_path_tag_length"] == MAX_PATH_TAG_LENGTH


def test_no_rendered_field_logs_the_path_with_its_query() -> None:
    rendered = render_bootstrap_yaml(traced_gateway())
    for operator in WITH_QUERY:
        assert operator not in rendered


def test_envoy_accepts_the_query_free_log_and_span_fields(tmp_path: Path) -> None:
    # REQ_WITHOUT_QUERY would need the envoy.formatter.req_without_query extension
    # (deprecated); the PATH operator is built in, so no `formatters` entry.
    rendered = render_bootstrap_yaml(traced_gateway())
    assert "formatters" not in str(yaml.safe_load(rendered))
    assert_envoy_accepts(rendered, tmp_path)
