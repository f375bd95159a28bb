"""The Envoy bootstrap rendered from the gateway config.

The committed ``envoy/envoy.yaml`` must match the default config, the real Envoy
binary must accept what we render, and the rendered routes, clusters and filters
must say what the gateway relies on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.extensions.filters.http.ext_proc.v3 import ext_proc_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2
from google.protobuf import json_format

from extproc.config.loader import load_config, parse_config
from extproc.config.model import GatewayConfig
from extproc.envoy_bootstrap import (
    _NOT_JSON_YET,
    _local_replies,
    envoy_command,
    render_bootstrap,
    render_bootstrap_yaml,
    render_default,
)
from extproc.envoy_paths import ENVOY_PATH
from extproc.envoy_values import cel_string
from extproc.headers import (
    ABOUT_THE_CLIENT,
    BODY_HINTS_NAMESPACE,
    CLUSTER,
    METADATA_NAMESPACE,
)

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = ROOT / "config" / "gateway.yaml"
MISS = "no route for this path"
COMMITTED = ROOT / "envoy" / "envoy.yaml"
ENVOY = Path(sys.executable).parent / "envoy"


def assert_envoy_accepts(rendered: str, tmp_path: Path) -> None:
    """Envoy's own check of a rendered bootstrap (``--mode validate``) passes."""
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(rendered, encoding="utf-8")
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(bootstrap), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


REGENERATE = (
    '.venv/bin/python -c "from extproc.envoy_bootstrap import render_default; '
    "open('envoy/envoy.yaml', 'w').write(render_default())\""
)


def gateway(**sections: Any) -> GatewayConfig:
    """A small config: an https and an http provider unless told otherwise."""
    raw: dict[str, Any] = {
        "providers": [
            {"name": "openai", "base_url": "https://api.openai.com/v1"},
            {"name": "local-llm", "base_url": "http://10.0.0.7:8000/v1", "timeout_s": 30},
        ],
        "models": [{"name": "gpt-4o", "provider": "openai"}],
    }
    raw.update(sections)
    return GatewayConfig.model_validate(raw)


def hcm(bootstrap: dict[str, Any]) -> dict[str, Any]:
    listener = bootstrap["static_resources"]["listeners"][0]
    typed_config: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return typed_config


def routes(bootstrap: dict[str, Any]) -> list[dict[str, Any]]:
    virtual_hosts = hcm(bootstrap)["route_config"]["virtual_hosts"]
    assert len(virtual_hosts) == 1
    assert virtual_hosts[0]["domains"] == ["*"]
    found: list[dict[str, Any]] = virtual_hosts[0]["routes"]
    return found


def cluster(bootstrap: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == name)


def ext_proc(bootstrap: dict[str, Any]) -> dict[str, Any]:
    filters = hcm(bootstrap)["http_filters"]
    found = next(f for f in filters if f["name"] == "envoy.filters.http.ext_proc")
    typed_config: dict[str, Any] = found["typed_config"]
    return typed_config


def test_committed_bootstrap_is_the_render_of_the_default_config() -> None:
    expected = render_bootstrap_yaml(load_config(DEFAULT_CONFIG, environ={}))
    assert COMMITTED.read_text(encoding="utf-8") == expected, (
        f"envoy/envoy.yaml is stale; regenerate it from the repository root with: {REGENERATE}"
    )
    assert render_default(DEFAULT_CONFIG) == expected


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(load_config(DEFAULT_CONFIG, environ={}), id="default"),
        pytest.param(
            gateway(
                server={"grpc_address": "0.0.0.0:50051", "unix_socket": "/tmp/aigw.sock"},
                envoy={"access_log": False},
            ),
            id="unix-socket-no-access-log",
        ),
        pytest.param(
            gateway(
                envoy={"ext_proc_address": "extproc:50051"},
                providers=[{"name": "vllm", "base_url": "https://10.1.2.3:8443"}],
                models=[{"name": "m", "provider": "vllm"}],
            ),
            id="dns-gateway-https-ip-provider",
        ),
    ],
)
def test_envoy_accepts_the_rendered_bootstrap(config: GatewayConfig, tmp_path: Path) -> None:
    if not ENVOY.exists():
        pytest.skip(f"no Envoy binary at {ENVOY}")
    assert_envoy_accepts(render_bootstrap_yaml(config), tmp_path)


def test_yaml_is_deterministic_and_says_it_is_generated() -> None:
    config = gateway()
    text = render_bootstrap_yaml(config)
    assert text == render_bootstrap_yaml(config)
    first_line = text.splitlines()[0]
    assert "extproc render-envoy" in first_line
    assert "Do not edit by hand" in first_line


@pytest.mark.parametrize(
    ("provider", "tls", "discovery"),
    [
        ("https://api.openai.com/v1", True, "LOGICAL_DNS"),
        ("http://mock-llm:8089/v1", False, "LOGICAL_DNS"),
        ("http://127.0.0.1:8089/v1", False, "STATIC"),
    ],
)
def test_provider_cluster_uses_tls_with_sni_only_for_https(
    provider: str, tls: bool, discovery: str
) -> None:
    config = gateway(
        providers=[{"name": "p", "base_url": provider}], models=[{"name": "m", "provider": "p"}]
    )
    found = cluster(render_bootstrap(config), "provider_p")
    assert found["type"] == discovery
    address = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    spec = config.providers[0]
    assert address["socket_address"] == {"address": spec.host, "port_value": spec.port}
    assert ("transport_socket" in found) is tls
    if tls:
        context = found["transport_socket"]["typed_config"]
        assert context["sni"] == "api.openai.com"
        common = context["common_tls_context"]
        assert common["alpn_protocols"] == ["http/1.1"]
        validation = common["validation_context"]
        assert validation["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}
        assert validation["match_typed_subject_alt_names"][0]["matcher"] == {
            "exact": "api.openai.com"
        }


def test_each_provider_route_matches_its_cluster_header() -> None:
    config = gateway(envoy={"upstream_timeout_s": 120})
    by_name = {route["name"]: route for route in routes(render_bootstrap(config))}
    expectations = {
        "provider_openai": ("api.openai.com", "120s"),
        "provider_local_llm": ("10.0.0.7:8000", "30s"),
    }
    for name, (authority, timeout) in expectations.items():
        route = by_name[name]
        assert route["match"]["prefix"] == "/"
        assert route["match"]["headers"] == [{"name": CLUSTER, "string_match": {"exact": name}}]
        assert route["route"]["cluster"] == name
        assert route["route"]["host_rewrite_literal"] == authority
        assert route["route"]["retry_policy"]["per_try_timeout"] == timeout
        # The routing header, and the client's address, which is no business of the provider's.
        assert route["request_headers_to_remove"] == [CLUSTER, *ABOUT_THE_CLIENT]


def test_unrouted_requests_get_an_openai_shaped_404_last() -> None:
    last = routes(render_bootstrap(gateway()))[-1]
    assert last["match"] == {"prefix": "/"}
    assert "headers" not in last["match"]
    assert last["direct_response"]["status"] == 404
    assert json.loads(last["direct_response"]["body"]["inline_string"]) == {
        "error": {
            "message": "no route for this path",
            "type": "not_found_error",
            "param": None,
            "code": "route_not_found",
        }
    }
    assert last["response_headers_to_add"][0]["header"] == {
        "key": "content-type",
        "value": "application/json",
    }


@pytest.mark.parametrize(
    ("client", "body", "exception"),
    [
        (
            "'anthropic-version' in request.headers",
            {"type": "error", "error": {"type": "not_found_error", "message": MISS}},
            None,
        ),
        (
            "'amz-sdk-invocation-id' in request.headers",
            {"message": MISS, "code": "route_not_found"},
            "ResourceNotFoundException",
        ),
        (
            "'x-goog-api-client' in request.headers",
            {"error": {"code": 404, "message": MISS, "status": "NOT_FOUND"}},
            None,
        ),
    ],
)
def test_the_catch_all_404_comes_in_the_shape_of_the_sdk_that_named_itself(
    client: str, body: dict[str, Any], exception: str | None
) -> None:
    """Anthropic's, AWS's and Google's SDKs each send a header OpenAI's never do: their
    call to a path no route serves gets a 404 they read. Only the catch-all's reply is
    rewritten (Envoy's ``direct_response``), before any other mapper sees it."""
    mappers = hcm(render_bootstrap(load_config(DEFAULT_CONFIG)))["local_reply_config"]["mappers"]
    [mapper] = [m for m in mappers[:3] if client in _expression(m)]
    assert _expression(mapper).startswith(
        "response.code_details == 'direct_response' && response.code == 404 && "
    )
    assert mapper["body_format_override"]["json_format"] == body
    assert "status_code" not in mapper  # the 404 stays
    added = [each["header"] for each in mapper.get("headers_to_add", [])]
    assert added == ([] if exception is None else [{"key": "x-amzn-errortype", "value": exception}])


def test_route_misses_on_the_paths_of_an_apis_routes_take_its_shape() -> None:
    """A gateway let past while down (``failure_mode_allow``) leaves every path to the
    catch-all: a Converse route's path still gets Bedrock's 404, a Vertex one Anthropic's."""
    mappers = hcm(render_bootstrap(load_config(DEFAULT_CONFIG)))["local_reply_config"]["mappers"]
    bedrock = next(m for m in mappers if "amz-sdk-invocation-id" in _expression(m))
    assert "|| (request.path.startsWith('/model/'))" in _expression(bedrock)
    anthropic = next(m for m in mappers if "'anthropic-version' in" in _expression(m))
    assert "|| (request.path.startsWith('/vertex/'))" in _expression(anthropic)


def test_a_client_cannot_pick_the_provider_cluster_itself() -> None:
    # Stripped before the route is first chosen, whoever the client is.
    early = hcm(render_bootstrap(gateway()))["early_header_mutation_extensions"]
    assert early[0]["typed_config"]["mutations"] == [{"remove": CLUSTER}]


def test_ext_proc_runs_before_the_router_and_may_override_modes() -> None:
    config = gateway(envoy={"message_timeout_ms": 2500, "failure_mode_allow": True})
    bootstrap = render_bootstrap(config)
    names = [f["name"] for f in hcm(bootstrap)["http_filters"]]
    assert names == [
        # Keep the client's path for the spans and the access log of a request the
        # gateway never answered, before any rewrite (envoy_paths).
        "envoy.filters.http.set_filter_state",
        "envoy.filters.http.json_to_metadata",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    processor = ext_proc(bootstrap)
    assert processor["grpc_service"]["envoy_grpc"] == {"cluster_name": "extproc"}
    assert processor["allow_mode_override"] is True
    assert processor["failure_mode_allow"] is True
    assert processor["message_timeout"] == "2.5s"
    # The response is read only when the gateway asks for it (mode_override).
    assert processor["processing_mode"] == {
        "request_header_mode": "SEND",
        "response_header_mode": "SKIP",
        "request_body_mode": "BUFFERED",
        "response_body_mode": "NONE",
        "request_trailer_mode": "SKIP",
        "response_trailer_mode": "SKIP",
    }
    assert processor["metadata_options"]["receiving_namespaces"]["untyped"] == [METADATA_NAMESPACE]


def test_envoy_reads_the_bodys_model_and_stream_for_the_gateways_first_message() -> None:
    bootstrap = render_bootstrap(gateway())
    [hints] = [
        f["typed_config"]
        for f in hcm(bootstrap)["http_filters"]
        if f["name"] == "envoy.filters.http.json_to_metadata"
    ]
    rules = hints["request_rules"]["rules"]
    assert [rule["selectors"] for rule in rules] == [[{"key": "model"}], [{"key": "stream"}]]
    assert {rule["on_present"]["metadata_namespace"] for rule in rules} == {BODY_HINTS_NAMESPACE}
    forwarded = ext_proc(bootstrap)["metadata_options"]["forwarding_namespaces"]["untyped"]
    assert forwarded == [BODY_HINTS_NAMESPACE]
    # ParseDict rejects any field the filter's config message does not have.
    json_format.ParseDict(
        {k: v for k, v in hints.items() if k != "@type"}, json_to_metadata_pb2.JsonToMetadata()
    )
    # Without the lean path there is nothing to choose: no hints are read.
    plain = render_bootstrap(gateway(envoy={"lean_responses": False}))
    names = [f["name"] for f in hcm(plain)["http_filters"]]
    assert "envoy.filters.http.json_to_metadata" not in names
    assert "forwarding_namespaces" not in ext_proc(plain)["metadata_options"]


def test_ext_proc_config_uses_the_field_names_of_envoys_api() -> None:
    processor = dict(ext_proc(render_bootstrap(gateway())))
    processor.pop("@type")
    # ParseDict rejects any field the ExternalProcessor message does not have.
    json_format.ParseDict(processor, ext_proc_pb2.ExternalProcessor())


@pytest.mark.parametrize(
    ("server", "envoy", "discovery", "address"),
    [
        pytest.param(
            {"grpc_address": "127.0.0.1:50051", "unix_socket": "/run/aigw/extproc.sock"},
            {},
            "STATIC",
            {"pipe": {"path": "/run/aigw/extproc.sock"}},
            id="unix-socket",
        ),
        pytest.param(
            {"grpc_address": "0.0.0.0:6000"},
            {},
            "STATIC",
            {"socket_address": {"address": "127.0.0.1", "port_value": 6000}},
            id="wildcard-bind-dials-loopback",
        ),
        pytest.param(
            {},
            {"ext_proc_address": "extproc:50051"},
            "STRICT_DNS",
            {"socket_address": {"address": "extproc", "port_value": 50051}},
            id="ext-proc-address-wins",
        ),
    ],
)
def test_ext_proc_cluster_speaks_http2_to_the_gateway(
    server: dict[str, Any], envoy: dict[str, Any], discovery: str, address: dict[str, Any]
) -> None:
    found = cluster(render_bootstrap(gateway(server=server, envoy=envoy)), "extproc")
    assert found["type"] == discovery
    endpoint = found["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"] == address
    options = found["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert set(options["explicit_http_config"]) == {"http2_protocol_options"}


def test_listener_buffers_the_largest_allowed_body_with_slack() -> None:
    config = gateway(
        limits={"max_request_body_bytes": 2_000_000},
        envoy={"listener_address": "0.0.0.0", "listener_port": 8080, "admin_port": 9000},
    )
    bootstrap = render_bootstrap(config)
    listener = bootstrap["static_resources"]["listeners"][0]
    assert listener["per_connection_buffer_limit_bytes"] == 2_000_000 + 64 * 1024
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    assert bootstrap["admin"]["address"]["socket_address"]["port_value"] == 9000


def test_every_local_reply_rewrite_spares_replies_that_are_already_json() -> None:
    mappers = hcm(render_bootstrap(gateway()))["local_reply_config"]["mappers"]
    # The catch-all 404's own (JSON, rewritten for other APIs' clients) come first.
    misses = [m for m in mappers if "direct_response" in _expression(m)]
    assert mappers[: len(misses)] == misses
    mappers = mappers[len(misses) :]
    assert mappers
    for mapper in mappers:
        expression = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
        assert "response.headers['content-type'].startsWith('application/json')" in expression
        body = mapper["body_format_override"]["json_format"]
        assert (
            set(body)
            == {
                "bedrock": {"message", "code"},
                "google": {"error"},
                "anthropic": {"type", "error"},
                "openai": {"error"},
            }[_shape(mapper)]
        )
    statuses = [m["filter"]["extension_filter"]["typed_config"]["expression"] for m in mappers]
    assert any(s.startswith("response.code == 503") for s in statuses)
    assert any(s.startswith("response.code == 504") for s in statuses)


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_carries_the_gateways_usage_metadata(enabled: bool) -> None:
    manager = hcm(render_bootstrap(gateway(envoy={"access_log": enabled})))
    assert ("access_log" in manager) is enabled
    if enabled:
        answered, unanswered = (
            logger["typed_config"]["log_format"]["json_format"] for logger in manager["access_log"]
        )
        # The path as sent, never its query: a client may have put a key there; and
        # as the gateway records it, a key in it hidden: named by the gateway when it
        # answered (envoy_request_record), else read by CEL (envoy_paths).
        assert answered["path"] == f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:path)%"
        assert unanswered["path"] == ENVOY_PATH
        for fields in (answered, unanswered):
            assert fields["request_id"] == "%REQ(X-REQUEST-ID)%"
            # The workshop's access log: provider, request and response model, tokens.
            keys = ("route", "provider", "model", "response_model", "prompt_tokens")
            for key in (*keys, "total_tokens"):
                assert fields[key] == f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{key})%"
        # Each request's line is written by one logger alone, picked by whether the
        # gateway named the path: no CEL for a request the gateway answered.
        assert answered.keys() == unanswered.keys()
        assert "%CEL(" not in json.dumps(manager["access_log"][0])
        picked_by = [logger["filter"]["metadata_filter"] for logger in manager["access_log"]]
        matched = {"filter": METADATA_NAMESPACE, "path": [{"key": "path"}]}
        assert picked_by == [
            {
                "matcher": {**matched, "value": {"present_match": True}},
                "match_if_key_not_found": False,
            },
            # Envoy's metadata filter cannot invert: a string matches no null.
            {"matcher": {**matched, "value": {"null_match": {}}}, "match_if_key_not_found": True},
        ]


def test_envoy_command_sets_concurrency_on_the_command_line() -> None:
    config = gateway(envoy={"concurrency": 4})
    assert envoy_command(config, "/etc/envoy.yaml", "/usr/bin/envoy") == [
        "/usr/bin/envoy",
        "-c",
        "/etc/envoy.yaml",
        "--concurrency",
        "4",
        "--log-level",
        "warn",
        "--disable-hot-restart",
        "--drain-strategy",
        "immediate",
        "--drain-time-s",
        "20",
    ]
    assert "concurrency" not in render_bootstrap_yaml(config)


def _local_reply_mappers(config: GatewayConfig) -> list[dict[str, Any]]:
    listener = render_bootstrap(config)["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    mappers: list[dict[str, Any]] = manager["local_reply_config"]["mappers"]
    return mappers


def _replies_mappers(config: GatewayConfig) -> list[dict[str, Any]]:
    """The mappers of Envoy's own replies, less the catch-all 404's (below)."""
    return [m for m in _local_reply_mappers(config) if "direct_response" not in _expression(m)]


def test_envoys_own_replies_to_aws_sdks_come_in_bedrocks_shape() -> None:
    """AWS SDKs read an error's message at the top of the body and its exception in
    x-amzn-errortype: Envoy's own replies to a Bedrock client say both."""
    mappers = _replies_mappers(load_config(DEFAULT_CONFIG))
    bedrock = [m for m in mappers if _shape(m) == "bedrock"]
    openai = [m for m in mappers if _shape(m) == "openai"]
    assert len(bedrock) == len(openai) and mappers[: len(bedrock)] == bedrock  # they come first
    too_large = next(m for m in bedrock if "response.code == 413" in _expression(m))
    assert too_large["body_format_override"]["json_format"] == {
        "message": "the request body is too large",
        "code": "request_too_large",
    }
    [header] = too_large["headers_to_add"]
    assert header["header"] == {"key": "x-amzn-errortype", "value": "ValidationException"}


ON_MODEL = "(request.path.startsWith('/model/'))"
ON_VERTEX = "(request.path.startsWith('/vertex/'))"


@pytest.mark.parametrize(
    ("shape", "sent"),
    [
        ("bedrock", "'amz-sdk-invocation-id' in request.headers || " + ON_MODEL),
        ("google", "'x-goog-api-client' in request.headers"),
        ("anthropic", "'anthropic-version' in request.headers || " + ON_VERTEX),
    ],
)
def test_envoys_own_replies_take_the_shape_of_the_api_the_gateway_named(
    shape: str, sent: str
) -> None:
    """By the time Envoy replies, the request may be the provider's: the gateway adds
    anthropic-version to an OpenAI client's request for Claude, and gives one for a model
    on Bedrock Bedrock's path; an Anthropic client's request for Claude on Bedrock loses
    its /v1/messages. The API the gateway named in its first answer decides; the
    request as sent only when the gateway never answered (nothing has changed it then)."""
    named = "metadata.filter_metadata['io.aigw']"
    said = f"('io.aigw' in metadata.filter_metadata && 'client_api' in {named})"
    client = f"({said} ? {named}['client_api'] == '{shape}' : ({sent}))"
    mappers = _local_reply_mappers(load_config(DEFAULT_CONFIG))
    twins = [m for m in mappers if _shape(m) == shape]
    assert len(twins) == 1 + len(_local_replies())  # the route miss and each reply
    assert all(_expression(m).endswith(f"{client} && {_NOT_JSON_YET}") for m in twins[1:])
    assert _expression(twins[0]).endswith(f" && {client}")
    openai = [m for m in mappers if _shape(m) == "openai"]
    assert all("request" not in _expression(m) and "metadata" not in _expression(m) for m in openai)
    anthropic = next(m for m in mappers if _shape(m) == "anthropic" and "413" in _expression(m))
    assert anthropic["body_format_override"]["json_format"] == {
        "type": "error",
        "error": {"type": "request_too_large", "message": "the request body is too large"},
    }


def _shape(mapper: dict[str, Any]) -> str:
    """Whose error shape a mapper's reply takes, by its body."""
    body = mapper["body_format_override"]["json_format"]
    if body.get("type") == "error":
        return "anthropic"
    if "message" in body:
        return "bedrock"
    return "google" if "status" in body["error"] else "openai"


def _expression(mapper: dict[str, Any]) -> str:
    expression: str = mapper["filter"]["extension_filter"]["typed_config"]["expression"]
    return expression


def test_a_quote_in_a_route_prefix_stays_inside_its_cel_string(tmp_path: Path) -> None:
    """``'`` is a path character Envoy passes as is (``/team's/models``): written into
    the CEL filters raw, it ended the string and Envoy refused the bootstrap."""
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    raw["routes"][:0] = [
        {"name": "g", "path_prefix": "/team's/models", "api": "gemini_generate_content"},
        {"name": "c", "path_prefix": "/team's/model", "api": "bedrock_converse"},
        {"name": "v", "path_prefix": "/team's/vertex", "api": "anthropic_vertex"},
    ]
    config = parse_config(yaml.safe_dump(raw), "quoted.yaml", {})
    expressions = [_expression(mapper) for mapper in _local_reply_mappers(config)]
    for prefix in ("/team\\'s/models/", "/team\\'s/model/", "/team\\'s/vertex/"):
        assert any(f"request.path.startsWith('{prefix}')" in e for e in expressions)
    if ENVOY.exists():
        assert_envoy_accepts(render_bootstrap_yaml(config), tmp_path)


@pytest.mark.parametrize(
    ("text", "literal"),
    [
        ("/v1/models/", "'/v1/models/'"),
        ("/team's/", "'/team\\'s/'"),
        ("/a\\b/", "'/a\\\\b/'"),  # \b unescaped: a backspace, another path
        ("/a\nb", "'/a\\nb'"),
        ("/a\x00b", "'/a\\x00b'"),
    ],
)
def test_cel_string_is_the_literal_of_its_text(text: str, literal: str) -> None:
    assert cel_string(text) == literal
