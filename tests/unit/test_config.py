"""Loading the config: interpolation, validation errors an operator can act on, check-config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import ConfigError, GatewayConfig, load_config, parse_config
from extproc.config.reload import ConfigReloader

MINIMAL = """
providers:
  - name: mock
    base_url: http://127.0.0.1:8089/v1
    api_key: ${MOCK_KEY}
models:
  - name: gpt-4o-mini
    provider: mock
"""


def problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "test.yaml", environ or {})
    return caught.value.problems


def test_variables_are_interpolated_with_defaults() -> None:
    text = MINIMAL + "server:\n  grpc_address: ${ADDR:-127.0.0.1:6000}\n"
    config = parse_config(text, "test.yaml", {"MOCK_KEY": "k"})
    assert config.server.grpc_address == "127.0.0.1:6000"
    provider = config.providers[0]
    assert provider.api_key is not None and provider.api_key.get_secret_value() == "k"


def test_an_empty_variable_takes_the_default_and_dollar_dollar_escapes() -> None:
    text = MINIMAL + "store:\n  key_prefix: '$${literal}:${EMPTY:-x}'\n"
    config = parse_config(text, "test.yaml", {"MOCK_KEY": "k", "EMPTY": ""})
    assert config.store.key_prefix == "${literal}:x"


def test_a_missing_variable_names_the_field() -> None:
    assert problems(MINIMAL) == ["providers[0].api_key: environment variable MOCK_KEY is not set"]


def test_interpolated_values_cannot_change_the_structure() -> None:
    config = parse_config(MINIMAL, "test.yaml", {"MOCK_KEY": "k\nmodels: []"})
    assert len(config.models) == 1


def test_errors_name_the_path_and_the_bad_value() -> None:
    found = problems(
        MINIMAL + "envoy:\n  listener_port: 70000\n  colour: blue\n", {"MOCK_KEY": "k"}
    )
    assert any(p.startswith("envoy.listener_port:") and "70000" in p for p in found)
    assert "envoy.colour: unknown field" in found


def test_secret_values_are_never_echoed_in_errors() -> None:
    text = MINIMAL.replace("api_key: ${MOCK_KEY}", "api_key: [sk-live-123]")
    found = problems(text)
    assert found and all("sk-live-123" not in p for p in found)


def test_a_store_urls_password_is_never_echoed_in_errors() -> None:
    text = MINIMAL + "store:\n  url: valkey://:Sup3rS3cret@redis:6379/0\n"
    [found] = problems(text, {"MOCK_KEY": "sk-test"})
    assert "store.url" in found and "Sup3rS3cret" not in found
    assert "valkey://***@redis:6379/0" in found


def test_a_quota_rule_keyed_by_clients_credentials_is_refused() -> None:
    """Counters keyed by the Authorization header would store every client's secret in
    Redis and print it in `extproc quota list`."""
    rule = "quotas:\n  rules:\n    - {name: r, subject: 'header:%s', requests_per_minute: 5}\n"
    for header in ("Authorization", "x-api-key", "cookie"):
        found = problems(MINIMAL + rule % header, {"MOCK_KEY": "k"})
        assert any(
            p.startswith("quotas.rules[0].subject:") and "credentials" in p for p in found
        ), found
    config = parse_config(MINIMAL + rule % "x-user-type", "test.yaml", {"MOCK_KEY": "k"})
    assert config.quotas.rules[0].subject == "header:x-user-type"


def test_unknown_provider_reference_is_reported() -> None:
    text = MINIMAL.replace("provider: mock", "provider: nope")
    [problem] = problems(text, {"MOCK_KEY": "k"})
    assert problem.startswith("models[0].provider: unknown provider 'nope'")


def test_yaml_syntax_errors_give_the_line() -> None:
    [problem] = problems("providers: [\n  - oops: {\n")
    assert problem.startswith("YAML syntax error at line")


def test_check_config_accepts_the_default_and_rejects_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", "config/gateway.yaml"]) == 0
    assert "ok" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: []\nmodels: []\n")
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(bad)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "providers" in err and "Traceback" not in err


def test_check_config_reads_the_files_serve_reads_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "gone"
    text = Path("config/gateway.yaml").read_text()
    path = tmp_path / "gateway.yaml"
    path.write_text(text.replace("      token: ${AIGW_ADMIN_TOKEN:-dev-admin-token}",
                                 f"      token_file: {gone}"))  # fmt: skip
    assert main(["check-config", "--config", str(path)]) == 2
    assert "token_file: cannot read" in capsys.readouterr().err
    jwt = "auth:\n  jwt_providers:\n    - {name: idp, issuer: https://idp.example, "
    path.write_text(text.replace("auth:\n", jwt + f"jwks: {{file: {gone}}}}}\n", 1))
    assert main(["check-config", "--config", str(path)]) == 2
    assert "auth.jwt_providers[0] (idp)" in capsys.readouterr().err


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config(tmp_path / "absent.yaml")


async def test_a_reload_that_fails_unexpectedly_keeps_the_old_config_and_the_watcher(
    tmp_path: Path,
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL.replace("${MOCK_KEY}", "sk-test"))
    results: list[bool] = []
    serving: list[str] = []

    async def apply(config: GatewayConfig) -> None:
        if config.models[0].name == "boom":
            raise RuntimeError("a bug, not a user error")
        serving.append(config.models[0].name)

    reloader = ConfigReloader(path, apply, results.append, poll_interval_s=0.02)
    reloader.start()
    try:
        path.write_text(path.read_text().replace("gpt-4o-mini", "boom"))
        await wait_for_len(results, 1)
        path.write_text(path.read_text().replace("boom", "gpt-4o"))
        await wait_for_len(results, 2)
    finally:
        await reloader.stop()
    assert results == [False, True]
    assert serving == ["gpt-4o"]


async def test_overlapping_reloads_leave_the_newest_file_serving(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(MINIMAL.replace("${MOCK_KEY}", "sk-test"))
    serving: list[str] = []

    async def apply(config: GatewayConfig) -> None:
        name = config.models[0].name
        if name == "slow":
            await asyncio.sleep(0.2)  # a JWKS fetch, say
        serving.append(name)

    reloader = ConfigReloader(path, apply, lambda ok: None, poll_interval_s=60)
    path.write_text(path.read_text().replace("gpt-4o-mini", "slow"))
    first = asyncio.create_task(reloader.reload())
    await asyncio.sleep(0.05)
    path.write_text(path.read_text().replace("slow", "newest"))
    await asyncio.gather(first, reloader.reload())
    assert serving[-1] == "newest"


async def wait_for_len(found: list[bool], length: int) -> None:
    for _ in range(200):
        if len(found) >= length:
            return
        await asyncio.sleep(0.02)


def test_every_problem_across_sections_is_listed_at_once() -> None:
    # check-config promises every problem: one fixed after another would take a run each.
    text = """
providers:
  - {name: mock, base_url: 'http://127.0.0.1:8089/v1', api_key: k}
models:
  - {name: gpt-4o-mini, provider: nowhere}
  - {name: gpt-4o, provider: mock, fallbacks: [gpt-5-typo]}
routes:
  - {name: chat, path: /v1/chat/completions, guardrails: missing-policy}
  - {name: chat, path: /v1/other}
store:
  timeout_ms: 6000
"""
    assert problems(text) == [
        "routes[1].name: duplicate name 'chat'",
        "models[0].provider: unknown provider 'nowhere' (known: mock)",
        "models[1].fallbacks: unknown model 'gpt-5-typo'",
        "store.timeout_ms (6000) must be below envoy.message_timeout_ms (5000): Envoy would"
        " answer 504 before a store that stopped answering fails a request open or closed as"
        " its quota rules say",
        "routes[0].guardrails: unknown policy 'missing-policy'",
    ]


def test_a_field_name_holding_line_breaks_is_one_problem() -> None:
    # Only the checks across sections report several problems in one message.
    # A quoted YAML key across lines: its two line breaks read as one.
    assert problems(MINIMAL + "? '\n\n'\n", {"MOCK_KEY": "k"}) == ["\n: unknown field"]


def test_a_jwks_fetch_allowed_as_long_as_envoys_wait_is_refused() -> None:
    # A hung identity provider would cost the request Envoy's 504, not the gateway's 401.
    provider = """
auth:
  jwt_providers:
    - name: idp
      issuer: https://idp.example.com
      jwks: {url: 'https://idp.example.com/jwks.json', timeout_s: TIMEOUT}
"""
    assert problems(MINIMAL + provider.replace("TIMEOUT", "5"), {"MOCK_KEY": "k"}) == [
        "auth.jwt_providers[0].jwks.timeout_s (5) must be below envoy.message_timeout_ms"
        " (5000 ms): Envoy would answer 504 before a JWKS fetch that hangs gives up"
    ]
    parse_config(MINIMAL + provider.replace("TIMEOUT", "4.5"), "test.yaml", {"MOCK_KEY": "k"})


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        # Azure's classic deployment URL: its api-version was dropped from every request.
        (
            "https://r.openai.azure.com/openai/deployments/gpt-4o?api-version=2024-10-21",
            "must hold no query or fragment",
        ),
        ("https://proxy.example.com/v1?token=Pr0xyT0ken", "must hold no query or fragment"),
        ("https://api.example.com/v1#chat", "must hold no query or fragment"),
        # Sent to the provider as part of its `:authority`, never as a credential.
        ("https://user:Pr0xyT0ken@proxy.example.com/v1", "must hold no user or password"),
    ],
)
def test_a_provider_url_with_parts_the_gateway_never_sends_is_refused(
    base_url: str, said: str
) -> None:
    text = MINIMAL.replace("http://127.0.0.1:8089/v1", base_url)
    [found] = problems(text, {"MOCK_KEY": "k"})
    assert found.startswith("providers[0].base_url:") and said in found
    assert "Pr0xyT0ken" not in found


def test_a_provider_url_of_scheme_host_and_path_is_taken() -> None:
    text = MINIMAL.replace("http://127.0.0.1:8089/v1", "https://r.openai.azure.com/openai/v1/")
    provider = parse_config(text, "test.yaml", {"MOCK_KEY": "k"}).providers[0]
    assert (provider.authority, provider.path_prefix) == ("r.openai.azure.com", "/openai/v1")


def with_route(**route: str) -> str:
    return MINIMAL + "routes:\n  - " + json.dumps(route) + "\n"


@pytest.mark.parametrize(
    ("path", "said"),
    [
        # Envoy turns a backslash into a slash (normalize_path).
        ("/team\\models", "holds '\\\\', which Envoy rewrites"),
        ('/a"b', "holds '\"', which Envoy rewrites"),
        ("/a{b}", "holds '{', which Envoy rewrites"),
        ("/my models", "holds ' ', which Envoy rewrites (or a client percent-encodes)"),
        ("/modèles", "holds 'è', which Envoy rewrites (or a client percent-encodes)"),
        ("/v1//models", "holds an empty, '.' or '..' segment, which Envoy removes"),
        ("/v1/../models", "holds an empty, '.' or '..' segment, which Envoy removes"),
        ("/v%31/models", "holds %31, which Envoy decodes to '1'"),
    ],
)
def test_a_route_path_no_request_could_match_is_refused(path: str, said: str) -> None:
    """Envoy normalises each path before the gateway reads it: a route path it would
    rewrite was taken, and its route never served a request."""
    text = with_route(name="odd", path_prefix=path, api="gemini_generate_content")
    [found] = problems(text, {"MOCK_KEY": "k"})
    assert found.startswith(f"routes[0].path_prefix: {said}"), found
    assert "no request could ever match this one" in found


@pytest.mark.parametrize("path", ["/team's/models", "/v1/models/", "/a%2Fb", "/~me/v1-x_y.z"])
def test_a_route_path_envoy_passes_as_written_is_taken(path: str) -> None:
    text = with_route(name="fine", path_prefix=path, api="gemini_generate_content")
    config = parse_config(text, "test.yaml", {"MOCK_KEY": "k"})
    assert config.routes[0].path_prefix == path


def test_check_config_names_the_route_path_no_request_could_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(with_route(name="x", path="/v1 /chat").replace("${MOCK_KEY}", "k"))
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(bad)])
    assert exited.value.code == 2
    assert "routes[0].path: holds ' '" in capsys.readouterr().err


@pytest.mark.parametrize("seconds", ["0", "0.5", "-1"])
def test_a_jwks_refetch_interval_below_a_second_is_refused(seconds: str) -> None:
    # Each token with an unknown kid asks for a fetch: at 0, anyone sending random
    # kids had the gateway fetch the identity provider's JWKS once per request.
    provider = f"""
auth:
  jwt_providers:
    - name: idp
      issuer: https://idp.example.com
      jwks: {{url: 'https://idp.example.com/jwks.json', min_refresh_interval_s: {seconds}}}
"""
    [problem] = problems(MINIMAL + provider, {"MOCK_KEY": "k"})
    assert problem.startswith(
        "auth.jwt_providers[0].jwks.min_refresh_interval_s: must be at least 1 s"
    )
    parse_config(
        MINIMAL + provider.replace(f": {seconds}}}", ": 1}"), "test.yaml", {"MOCK_KEY": "k"}
    )
