"""The URLs and hosts of the services the gateway calls, checked alike at load: each
refusal names the field and never shows a password or a query's value, and what a
field legitimately takes (a JWKS URL's query and user, the proxy's user and password)
still loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.config.auth_model import JwksConfig
from extproc.config.guard_model import WebhookConfig

PROVIDER = """
providers:
  - name: mock
    base_url: BASE_URL
    api_key: k
models:
  - name: gpt-4o-mini
    provider: mock
"""
MINIMAL = PROVIDER.replace("BASE_URL", "http://127.0.0.1:8089/v1")

# The field's path in errors, and the config that puts VALUE there.
FIELDS = {
    "providers[0].base_url": PROVIDER.replace("BASE_URL", "'VALUE'"),
    "guardrails.moderation[0].base_url": MINIMAL
    + "guardrails:\n  moderation:\n    - {name: mod, base_url: 'VALUE'}\n",
    "agents.servers[0].url": MINIMAL
    + "agents:\n  servers:\n    - {name: tools, protocol: mcp, url: 'VALUE'}\n",
    "auth.jwt_providers[0].jwks.url": MINIMAL
    + "auth:\n  jwt_providers:\n    - {name: idp, issuer: https://idp.example, "
    "audiences: [gw], jwks: {url: 'VALUE'}}\n",
}
SECRET = "S3cr3tV4lue"
_NO_JWKS = JwksConfig(file="absent")


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml", {})
    return caught.value.problems


def refusal(field: str, value: str) -> str:
    [found] = problems(FIELDS[field].replace("VALUE", value))
    assert found.startswith(f"{field}: "), found
    assert SECRET not in found
    return found


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize(
    ("value", "said"),
    [
        # Went out as part of the host (or the path): Envoy's cluster resolved a name
        # that is none, or the requests went to a path no service serves.
        ("https://svc ex.example/v1", "must hold no spaces or control characters"),
        ("https://svc.example/v 1", "must hold no spaces or control characters"),
        # Loaded, and rendering Envoy's config then failed with a traceback.
        ("https://svc.example:99999/v1", "is not a valid URL"),
        ("https://svc.example:0/v1", "the port must be between 1 and 65535"),
        ("https://svc_.example!/v1", "must name a host"),
        ("ftp://svc.example/v1", "must be an http:// or https:// URL with a host"),
        ("https:///v1", "must be an http:// or https:// URL with a host"),
        # No field's service ever sees a fragment.
        (f"https://svc.example/v1#{SECRET}", "must hold no "),
    ],
)
def test_a_service_url_no_client_can_call_is_refused(field: str, value: str, said: str) -> None:
    assert said in refusal(field, value)


@pytest.mark.parametrize(
    ("field", "said"),
    [
        ("providers[0].base_url", "the gateway sends none of it to the provider"),
        # Appended after the query: POST /v1?x=1/moderations went to the base path.
        ("guardrails.moderation[0].base_url", "the gateway appends /moderations to the URL"),
        ("agents.servers[0].url", "only its path reaches the server"),
    ],
)
def test_a_query_is_refused_where_it_never_reaches_the_service(field: str, said: str) -> None:
    found = refusal(field, f"https://svc.example/v1?key={SECRET}")
    assert f"must hold no query or fragment: {said}" in found
    assert "(got 'https://svc.example/v1?***')" in found


@pytest.mark.parametrize(
    ("field", "said"),
    [
        ("providers[0].base_url", "give the provider's key in api_key"),
        # aiohttp refused every call carrying both the URL's user and the key's
        # Authorization header: each check failed as an outage of the service.
        ("guardrails.moderation[0].base_url", "give the service's key in api_key"),
        # Sent as part of the :authority and written into the rendered bootstrap.
        ("agents.servers[0].url", "give the server's credential in api_key"),
    ],
)
def test_a_user_and_password_are_refused_where_no_client_sends_them(field: str, said: str) -> None:
    found = refusal(field, f"https://user:{SECRET}@svc.example/v1")
    assert f"must hold no user or password: {said}" in found
    assert "(got 'https://***@svc.example/v1')" in found


def test_a_jwks_url_keeps_its_query_and_user_which_its_fetch_sends() -> None:
    # Azure AD B2C names its user flow in ?p=; a user and password go as Basic auth.
    url = "https://reader:pw@idp.example/keys?p=b2c_1_signin"
    config = parse_config(FIELDS["auth.jwt_providers[0].jwks.url"].replace("VALUE", url), "t", {})
    jwks = config.auth.jwt_providers[0].jwks
    assert jwks is not None and jwks.url == url


@pytest.mark.parametrize("field", list(FIELDS))
def test_whitespace_around_a_url_from_a_variable_is_dropped(field: str) -> None:
    # A value from a variable may carry spaces around it: the provider's and the agent
    # server's path kept the trailing one ("/v1 "), every request going to a path with
    # a space in it.
    text = FIELDS[field].replace("VALUE", "${URL}")
    config = parse_config(text, "t", {"URL": " https://svc.example/v1 "})
    read: dict[str, Callable[[GatewayConfig], str | None]] = {
        "providers[0].base_url": lambda c: c.providers[0].path_prefix,
        "guardrails.moderation[0].base_url": lambda c: c.guardrails.moderation[0].base_url,
        "agents.servers[0].url": lambda c: c.agents.servers[0].path,
        "auth.jwt_providers[0].jwks.url": lambda c: (c.auth.jwt_providers[0].jwks or _NO_JWKS).url,
    }
    assert read[field](config) in {"/v1", "https://svc.example/v1"}


WEBHOOK = MINIMAL + "guardrails:\n  webhooks:\n    - {name: hook, host: 'VALUE', port: 8443}\n"


@pytest.mark.parametrize(
    "host",
    [
        # The whole URL where the host goes: calls went to http://https://hooks...:80.
        f"https://hooks.example/check?token={SECRET}",
        f"user:{SECRET}@hooks.example",
        "hooks.example:8443",
        "hooks.example/check",
        "hooks .example",
    ],
)
def test_a_webhook_host_that_is_no_host_is_refused(host: str) -> None:
    [found] = problems(WEBHOOK.replace("VALUE", host))
    assert found.startswith("guardrails.webhooks[0].host: must name a host")
    assert SECRET not in found


def test_a_webhook_on_an_ipv6_address_is_called_at_that_address() -> None:
    # http://::1:8443 was a URL no client could open.
    config = parse_config(WEBHOOK.replace("VALUE", "::1"), "t", {})
    assert config.guardrails.webhooks[0].base_url == "http://[::1]:8443"
    assert WebhookConfig(name="h", host="hooks.example").base_url == "http://hooks.example:80"


TRACING = MINIMAL + "telemetry:\n  tracing: {enabled: true, otlp_endpoint: 'VALUE'}\n"


@pytest.mark.parametrize(
    "endpoint", [f"user:{SECRET}@collector.example:4317", "collector .example:4317"]
)
def test_an_otlp_endpoint_whose_host_is_no_host_is_refused(endpoint: str) -> None:
    # Rendered as the collector cluster's address: the password sat in the bootstrap.
    [found] = problems(TRACING.replace("VALUE", endpoint))
    assert found.startswith("telemetry.tracing.otlp_endpoint: must name a host")
    assert SECRET not in found


@pytest.mark.parametrize("endpoint", ["collector.example:4317", "[::1]:4317", "10.0.0.7:4317"])
def test_an_otlp_endpoint_of_host_and_port_is_taken(endpoint: str) -> None:
    config = parse_config(TRACING.replace("VALUE", endpoint), "t", {})
    assert config.telemetry.tracing.otlp_endpoint == endpoint


PROXY = MINIMAL + "egress:\n  proxy_url: 'VALUE'\n  no_proxy: ['*']\n"


def test_a_proxy_host_with_a_space_is_refused_without_quoting_the_password() -> None:
    [found] = problems(PROXY.replace("VALUE", f"http://user:{SECRET}@proxy .example:3128"))
    assert found.startswith("egress.proxy_url: must name the proxy's host")
    assert SECRET not in found


def test_a_proxy_url_keeps_its_user_and_password() -> None:
    config = parse_config(PROXY.replace("VALUE", f"http://user:{SECRET}@10.0.0.9:3128"), "t", {})
    assert config.egress.enabled


def test_check_config_names_the_field_instead_of_a_traceback_at_render(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The port out of range passed check-config, and render-envoy then stopped with
    # "ValueError: Port out of range".
    path = tmp_path / "gateway.yaml"
    path.write_text(PROVIDER.replace("BASE_URL", "https://api.example.com:99999/v1"))
    with pytest.raises(SystemExit) as exited:
        main(["render-envoy", "--config", str(path)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "providers[0].base_url: is not a valid URL" in err and "Traceback" not in err


# A URL written without its scheme, or with a misspelt one, is refused for that: the
# refusal echoed the value whole, its query, fragment or `;` parameter included, into
# check-config's output and, on a reload, the gateway's log.
SCHEMELESS = [
    f"svc.example/v1?key={SECRET}",
    f"http:/svc.example/v1?api_key={SECRET}",
    f"http//svc.example/v1?{SECRET}",
    f"user:pw@svc.example/v1?token={SECRET}",
    f"svc.example/v1#{SECRET}",
    f"svc.example/v1;key={SECRET}",
]


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("value", SCHEMELESS)
def test_a_url_refused_for_its_scheme_is_named_without_its_query(field: str, value: str) -> None:
    found = refusal(field, value)
    assert "must be an http:// or https:// URL with a host" in found
    # Still recognisable: the host and path an operator looks for.
    assert "svc.example/v1" in found and "***" in found


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (TRACING, "telemetry.tracing.otlp_endpoint"),
        (WEBHOOK, "guardrails.webhooks[0].host"),
        (MINIMAL + "store:\n  url: 'VALUE'\n", "store.url"),
    ],
)
@pytest.mark.parametrize(
    "value", [f"svc.example:4317/v1?token={SECRET}", f"svc.example:4317/v1#{SECRET}"]
)
def test_a_host_or_store_written_as_a_url_is_named_without_its_query(
    config: str, field: str, value: str
) -> None:
    [found] = problems(config.replace("VALUE", value))
    assert found.startswith(f"{field}: ") and SECRET not in found
    assert "svc.example:4317/v1" in found


def test_check_config_never_prints_a_schemeless_urls_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(FIELDS["agents.servers[0].url"].replace("VALUE", SCHEMELESS[0]))
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(path)])
    assert exited.value.code == 2
    printed = capsys.readouterr()
    assert "agents.servers[0].url: must be an http://" in printed.err
    assert SECRET not in printed.out + printed.err
