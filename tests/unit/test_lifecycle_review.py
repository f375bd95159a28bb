"""Config lifecycle as an operator meets it: `${VAR}` forms, a port already taken,
secret files rotated, settings a reload cannot change."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from extproc import http_endpoint
from extproc.config import ConfigError, GatewayConfig, load_config, parse_config
from extproc.config.reload import ConfigReloader
from extproc.config.watched_files import secret_files
from extproc.devstack import free_port
from extproc.runtime import Runtime, Services
from extproc.telemetry.access_log import AccessLog
from extproc.telemetry.metrics import GatewayMetrics

PROVIDER_KEY = """
providers:
  - name: mock
    base_url: http://127.0.0.1:8089/v1
    api_key: "{value}"
models:
  - name: gpt-4o-mini
    provider: mock
"""


def provider_key(value: str, environ: dict[str, str]) -> str:
    config = parse_config(PROVIDER_KEY.format(value=value), "gateway.yaml", environ)
    key = config.providers[0].api_key
    assert key is not None
    return key.get_secret_value()


def problems(value: str, environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(PROVIDER_KEY.format(value=value), "gateway.yaml", environ)
    return caught.value.problems


# --- ${VAR} interpolation -----------------------------------------------------------


def test_a_default_may_itself_name_a_variable() -> None:
    # `${OPENAI_API_KEY:-${FALLBACK_KEY}}`, as docker compose reads it: the fallback's
    # value, not the text "${FALLBACK_KEY}" sent to the provider as its key.
    assert provider_key("${PRIMARY:-${FALLBACK}}", {"FALLBACK": "sk-fallback"}) == "sk-fallback"
    assert provider_key("${PRIMARY:-${FALLBACK}}", {"PRIMARY": "sk-primary"}) == "sk-primary"
    assert provider_key("${PRIMARY:-${FALLBACK:-sk-last}}", {}) == "sk-last"


def test_an_unused_default_needs_no_variable() -> None:
    assert provider_key("${PRIMARY:-${UNSET}}", {"PRIMARY": "sk-primary"}) == "sk-primary"


def test_an_unset_variable_in_a_default_that_is_used_names_it() -> None:
    assert problems("${PRIMARY:-${FALLBACK}}", {}) == [
        "providers[0].api_key: environment variable FALLBACK is not set"
    ]


@pytest.mark.parametrize("value", ["${KEY-sk-default}", "${KEY:?required}", "${ KEY }", "${KEY"])
def test_a_reference_the_gateway_does_not_understand_is_refused_not_kept_as_text(
    value: str,
) -> None:
    # Kept as text, "${KEY-sk-default}" would be the provider key the gateway sends.
    [found] = problems(value, {"KEY": "sk-from-env"})
    assert found.startswith("providers[0].api_key: ")
    assert "${VAR}" in found and "$${" in found
    assert "sk-from-env" not in found


def test_a_value_from_the_environment_is_never_interpolated_again() -> None:
    assert provider_key("${KEY}", {"KEY": "sk-${NOT_A_VAR}"}) == "sk-${NOT_A_VAR}"


def test_dollar_dollar_brace_still_writes_a_literal() -> None:
    assert provider_key("$${KEY}-$${KEY:-x}", {"KEY": "v"}) == "${KEY}-${KEY:-x}"


# --- the HTTP port ------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        yield holder.getsockname()[1]
    finally:
        holder.close()


async def ready() -> tuple[bool, str]:
    return True, "ready"


async def test_an_http_address_in_use_is_a_one_line_error_naming_the_setting(
    taken_port: int,
) -> None:
    app = http_endpoint.create_app(CollectorRegistry(), ready)
    with pytest.raises(http_endpoint.HttpListenError) as caught:
        await http_endpoint.start(app, f"127.0.0.1:{taken_port}")
    message = str(caught.value)
    assert "server.http_address" in message and f"127.0.0.1:{taken_port}" in message


def test_serve_with_its_http_address_in_use_exits_2_without_a_traceback(
    tmp_path: Path, taken_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    from extproc.cli import main

    config = tmp_path / "gateway.yaml"
    config.write_text(
        PROVIDER_KEY.format(value="sk-test")
        + f"server:\n  http_address: 127.0.0.1:{taken_port}\n"
        + f"  grpc_address: 127.0.0.1:{free_port()}\n"
        + f"store:\n  data_dir: {tmp_path / 'valkey'}\n  spool_dir: {tmp_path / 'spool'}\n"
        + "management:\n  enabled: false\n"
    )
    assert main(["serve", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "server.http_address" in err and "Traceback" not in err


# --- secret files rotated ----------------------------------------------------------

MODERATED = """
providers:
  - {{name: mock, base_url: "http://127.0.0.1:8089/v1", api_key: provider-key-123}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
guardrails:
  moderation:
    - {{name: omni, base_url: "http://127.0.0.1:8089/v1", api_key_file: {key_file}}}
  policies:
    - name: moderated
      request:
        - {{name: harmful, moderation: omni}}
routes:
  - {{name: chat, path_prefix: /v1/chat/completions, guardrails: moderated}}
"""


class Serving:
    """What the gateway's reload does with a config: a Runtime built from it, swapped in."""

    def __init__(self, path: Path) -> None:
        self.services = Services(GatewayMetrics(), AccessLog(stdout=False))
        self.runtime = Runtime(load_config(path, {}), self.services)
        self.results: list[bool] = []
        self.reloader = ConfigReloader(
            path,
            self.apply,
            self.results.append,
            poll_interval_s=0.02,
            watched=lambda: secret_files(self.runtime.config),
        )

    async def apply(self, config: GatewayConfig) -> None:
        self.runtime = Runtime(config, self.services)

    def moderation_authorization(self) -> str:
        guards = self.runtime.guardrails.for_route("chat")
        assert guards is not None
        [(_, client)] = guards.request.moderation
        return client._headers["authorization"]


async def until(condition: Callable[[], bool], attempts: int = 250) -> None:
    for _ in range(attempts):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the reloader did not get there")


async def test_a_rotated_moderation_key_file_is_sent_without_a_signal(tmp_path: Path) -> None:
    key_file = tmp_path / "moderation-key"
    key_file.write_text("sk-moderation-old\n")
    path = tmp_path / "gateway.yaml"
    path.write_text(MODERATED.format(key_file=key_file))
    serving = Serving(path)
    assert serving.moderation_authorization() == "Bearer sk-moderation-old"
    serving.reloader.start()
    try:
        # A Kubernetes Secret rotated in place, as for a provider's api_key_file.
        rotated = tmp_path / "moderation-key.new"
        rotated.write_text("sk-moderation-new\n")
        rotated.replace(key_file)
        await until(lambda: serving.results == [True])
        assert serving.moderation_authorization() == "Bearer sk-moderation-new"
    finally:
        await serving.reloader.stop()


# --- settings a reload cannot change ----------------------------------------------


def reloaded_config(telemetry: str) -> GatewayConfig:
    return parse_config(PROVIDER_KEY.format(value="sk-test") + telemetry, "gateway.yaml", {})


@pytest.mark.parametrize(
    ("telemetry", "field"),
    [
        ("telemetry:\n  log:\n    file: /var/log/aigw/requests.jsonl\n", "telemetry.log.file"),
        ("telemetry:\n  log:\n    stdout: false\n", "telemetry.log.stdout"),
        ("telemetry:\n  metrics:\n    max_label_values: 50\n", "telemetry.metrics"),
    ],
)
async def test_a_reload_that_changes_the_request_logs_outputs_or_metrics_warns(
    telemetry: str, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The log's sinks and the metrics' budget were set up at start: an operator who
    # points the log at a file and reloads must be told it is not written there.
    from extproc.server import Gateway

    gateway = Gateway(reloaded_config(""), None)
    try:
        with caplog.at_level(logging.WARNING, logger="extproc.server"):
            await gateway.apply(reloaded_config(telemetry))
        warned = [r.getMessage() for r in caplog.records if "only on restart" in r.getMessage()]
        assert len(warned) == 1 and field in warned[0], warned
    finally:
        await gateway.runtime.close()
        gateway.services.access_log.close()


async def test_a_reload_that_only_turns_on_logged_content_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from extproc.server import Gateway

    gateway = Gateway(reloaded_config(""), None)
    try:
        with caplog.at_level(logging.WARNING, logger="extproc.server"):
            await gateway.apply(reloaded_config("telemetry:\n  log:\n    include_content: true\n"))
        assert not [r for r in caplog.records if "only on restart" in r.getMessage()]
    finally:
        await gateway.runtime.close()
        gateway.services.access_log.close()


# --- the gateway's own TLS files ----------------------------------------------------


def tls_config(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        PROVIDER_KEY.format(value="sk-test")
        + f"server:\n  grpc_address: 127.0.0.1:{free_port()}\n"
        + f"  http_address: 127.0.0.1:{free_port()}\n"
        + f"  tls:\n    cert_file: {tmp_path / 'missing-cert.pem'}\n"
        + f"    key_file: {tmp_path / 'missing-key.pem'}\n"
        + "    envoy: {ca_file: /etc/aigw/ca.pem}\n"
        + f"store:\n  data_dir: {tmp_path / 'valkey'}\n  spool_dir: {tmp_path / 'spool'}\n"
        + "management:\n  enabled: false\n"
    )
    return config


def test_check_config_reads_the_gateways_certificate_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extproc.cli import main

    # `serve` cannot start without them: check-config must not answer "ok".
    assert main(["check-config", "--config", str(tls_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "server.tls." in err and "cannot read" in err and "Traceback" not in err


def test_serve_with_a_missing_certificate_file_names_it_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extproc.cli import main

    assert main(["serve", "--config", str(tls_config(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "server.tls." in err and "cannot read" in err and "Traceback" not in err


# --- errors an operator can act on -------------------------------------------------


@pytest.mark.parametrize(
    ("section", "shown"),
    [
        (
            "quotas:\n  rules:\n    - {name: daily, subject: api_key, tokens_per_day: -1}\n",
            "quotas.rules[0].tokens_per_day: Input should be greater than 0 (got -1)",
        ),
        (
            "auth:\n  max_token_bytes: 100\n",
            "(got 100)",
        ),
    ],
)
def test_a_token_count_out_of_range_is_shown_with_its_value(section: str, shown: str) -> None:
    # Counts of tokens are no secret: "tokens_per_day: greater than 0" without the value
    # leaves the operator hunting for which of several rules' numbers is wrong.
    found = problems_in(PROVIDER_KEY.format(value="sk-test") + section)
    assert any(shown in problem for problem in found), found


def test_secret_values_stay_hidden_whatever_their_type() -> None:
    found = problems_in(PROVIDER_KEY.format(value="sk-test").replace('"sk-test"', "[123456]"))
    found += problems_in(
        PROVIDER_KEY.format(value="sk-test") + "auth:\n  api_keys:\n    - {id: a, key: 987654}\n"
    )
    assert found and all("123456" not in p and "987654" not in p for p in found), found


def problems_in(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "gateway.yaml", {})
    return caught.value.problems


# --- which file is wrong ---------------------------------------------------------------


def config_naming_a_missing_key_file(tmp_path: Path) -> Path:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        PROVIDER_KEY.format(value="sk-test")
        + f"auth:\n  api_keys:\n    - {{id: team1, key_file: {tmp_path / 'team1-key'}}}\n"
        + "management:\n  enabled: false\n"
    )
    return config


def test_check_config_names_the_file_it_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from extproc.cli import main

    config = config_naming_a_missing_key_file(tmp_path)
    assert main(["check-config", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    # Not "invalid config auth:": the operator checking several files must see which.
    assert err.startswith(f"invalid config {config}:"), err
    assert "auth.api_keys[0] (team1): cannot read key_file" in err


async def test_a_refused_reload_names_the_config_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_naming_a_missing_key_file(tmp_path)
    refused: list[bool] = []

    async def apply(loaded: GatewayConfig) -> None:
        Runtime(loaded, Services(GatewayMetrics(), AccessLog(stdout=False)))

    reloader = ConfigReloader(config, apply, refused.append)
    with caplog.at_level(logging.ERROR, logger="extproc.config.reload"):
        assert not await reloader.reload()
    [line] = [r.getMessage() for r in caplog.records if r.name == "extproc.config.reload"]
    assert f"invalid config {config}:" in line and "auth.api_keys[0] (team1)" in line, line


# --- a reload signalled as the gateway stops ------------------------------------------


async def test_a_reload_signalled_just_before_shutdown_is_not_swapped_in_after_it(
    tmp_path: Path,
) -> None:
    # SIGHUP, then SIGTERM a moment later (a deploy script): the stop closes the serving
    # runtime; a reload still running must not swap in a new one nobody will close.
    path = tmp_path / "gateway.yaml"
    path.write_text(PROVIDER_KEY.format(value="sk-test"))
    applying, release = asyncio.Event(), asyncio.Event()
    swapped: list[GatewayConfig] = []
    results: list[bool] = []

    async def apply(config: GatewayConfig) -> None:
        applying.set()
        await release.wait()  # a runtime starting: a JWKS fetch, a token to mint
        swapped.append(config)

    reloader = ConfigReloader(path, apply, results.append)
    reloader.start()  # a serving gateway's
    reloader.schedule_reload()
    await asyncio.wait_for(applying.wait(), 10)
    await reloader.stop()
    release.set()
    reloader.schedule_reload()  # another SIGHUP, while the open streams drain
    for _ in range(5):
        await asyncio.sleep(0)
    assert swapped == [] and results == []


def test_a_variable_set_to_nothing_is_said_to_be_empty_not_unset() -> None:
    raw = (
        "providers:\n"
        "  - {name: p, type: openai, base_url: 'http://127.0.0.1:1', api_key: '${KEY}'}\n"
    )
    with pytest.raises(ConfigError) as refused:
        parse_config(raw, "gateway.yaml", {"KEY": ""})
    assert "environment variable KEY is empty" in str(refused.value)
