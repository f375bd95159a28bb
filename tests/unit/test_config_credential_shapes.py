"""A credential of any well-known shape pasted into the config is never printed back.

Config errors hid what ``errors.without_secrets`` knew (``sk-`` keys, AWS key ids, JWTs,
Google access tokens) and the values of secret-named variables and fields; the shapes
``auth.credential_shapes`` knows besides (the gateway's own ``aigw-`` keys, GitHub and
Slack tokens, Google API keys) were printed whole by ``extproc check-config`` and in the
log line of a refused reload, when pasted into a field that is not secret-named
(``provider: aigw-...``), as a mapping's key, or as a key written twice. Now every place
that hides credentials in text reads the one list of shapes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.auth import credential_shapes
from extproc.cli import main
from extproc.devstack import DEFAULT_CONFIG, free_port, free_port_block
from extproc.errors import credentials_refused, without_secrets
from tests.integration.conftest import wait_for
from tests.unit.test_query_credential_shapes import (
    ANTHROPIC,
    AWS,
    GATEWAY_KEY,
    GITHUB,
    GOOGLE,
    GOOGLE_TOKEN,
    JWT,
    SLACK,
)

# One of each kind credential_shapes knows.
SHAPES = {
    "anthropic": ANTHROPIC,
    "aws": AWS,
    "google": GOOGLE,
    "google-token": GOOGLE_TOKEN,
    "github": GITHUB,
    "github-pat": "github_pat_11ABCDEFG0" + "a1B2c3D4e5F6g7H8i9J0" * 3,
    "slack": SLACK,
    "jwt": JWT,
    "gateway-key": GATEWAY_KEY,
}
DEFAULT = DEFAULT_CONFIG.read_text()
CHAT_ROUTE = "  - name: openai-chat\n    path: /v1/chat/completions\n"


def test_the_samples_cover_every_kind_of_credential() -> None:
    # A kind added to credential_shapes without a sample here would go untested.
    kinds = {credential_shapes.kind(secret) for secret in SHAPES.values()}
    assert None not in kinds
    assert len(kinds) == len(set(credential_shapes._KINDS.values()))


def with_route_line(line: str) -> str:
    assert CHAT_ROUTE in DEFAULT
    return DEFAULT.replace(CHAT_ROUTE, f"{CHAT_ROUTE}    {line}\n", 1)


def check_config(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int | str | None, str]:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(path)])
    printed = capsys.readouterr()
    return exited.value.code, printed.out + printed.err


@pytest.mark.parametrize("secret", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize(
    ("line", "said"),
    [
        # The operator meant `api_key:`; the message quotes the value it refuses.
        ("provider: {secret}", "routes[0].provider: unknown provider '[redacted]'"),
        ("model: {secret}", "routes[0].model: unknown model '[redacted]'"),
        # A key pasted on a line of its own, as a mapping's key: named by its path.
        ("{secret}: 1", "routes[0].[redacted]: unknown field"),
        # The same pasted twice: the YAML parser's message quotes the key.
        ("{secret}: 1\n    {secret}: 2", 'the key "[redacted]" is written twice'),
    ],
    ids=["provider", "model", "mapping-key", "written-twice"],
)
def test_check_config_never_prints_a_credential_pasted_into_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], secret: str, line: str, said: str
) -> None:
    code, printed = check_config(tmp_path, with_route_line(line.format(secret=secret)), capsys)
    assert code == 2
    assert said in printed
    assert secret not in printed


def test_other_values_are_still_quoted_as_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Names that share a prefix with a shape but are no credential stay readable.
    for name in ("aigw-default-chat", "xoxb-team", "ghp_short"):
        code, printed = check_config(tmp_path, with_route_line(f"provider: {name}"), capsys)
        assert code == 2
        assert f"unknown provider '{name}'" in printed


def test_a_provider_quoting_any_known_shape_has_it_hidden() -> None:
    # A provider's refusal quoting a credential (of a tool, of the gateway's client) is
    # shown to the client and logged: every shape goes, not only the provider's own.
    for secret in SHAPES.values():
        message = credentials_refused("401", f"the key {secret} is not valid here").message
        assert secret not in message and "[redacted] is not valid here" in message
        assert without_secrets(f"got {secret}.") == "got [redacted]."


# --- a SIGHUP reload of a bad config: the log line --------------------------------------

SERVING = """
server:
  grpc_address: 127.0.0.1:{grpc_port}
  http_address: 127.0.0.1:{http_port}
  grace_period_s: 1
store:
  url: redis://127.0.0.1:{store_port}/0
  timeout_ms: 200
management:
  enabled: false
telemetry:
  log: {{stdout: false}}
providers:
  - {{name: mock, base_url: "http://127.0.0.1:9/v1", api_key: provider-key-123}}
models:
  - {{name: gpt-4o-mini, provider: mock}}
"""


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    """``extproc serve`` (one process, no store answering) and where it logs."""
    http_port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        SERVING.format(
            grpc_port=free_port_block(1, avoid={http_port}),
            http_port=http_port,
            store_port=free_port_block(1, avoid={http_port}),
        )
    )
    err = tmp_path / "gateway.err"
    with err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "extproc", "serve", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            yield config, err, process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_refused_reload_never_logs_a_credential_pasted_into_the_config(
    serving: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    config, err, process = serving
    log = lambda: err.read_text(errors="replace")  # noqa: E731
    assert wait_for(lambda: "extproc serving ext_proc" in log(), timeout_s=60.0), log()[-3000:]
    good = config.read_text()
    for index, secret in enumerate(SHAPES.values()):
        # Each in a field of its own, so that each refusal's line is told apart.
        padding = "".join(f"  - {{name: pad-{n}, provider: mock}}\n" for n in range(index))
        config.write_text(f"{good}{padding}  - {{name: pasted, provider: {secret}}}\n")
        process.send_signal(signal.SIGHUP)
        field = f"models[{index + 1}].provider:"
        assert wait_for(lambda field=field: field in log(), timeout_s=30.0), log()[-3000:]
    assert process.poll() is None
    logged = log()
    assert logged.count("config reload rejected") >= len(SHAPES)
    found = [name for name, secret in SHAPES.items() if secret in logged]
    assert found == [], f"logged whole: {found}"
