"""The gateway's container image, read as Docker reads the Dockerfile.

No Docker engine runs here, so the image is not built in tests; this checks
what an operator relies on: a slim final stage without compilers, a non-root
user, a health check on the gateway's probe, the console script as entry point,
config and data as volumes.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILERS = ("build-essential", "gcc", "g++", "clang", "make", "python3-dev", "libc6-dev")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        found.append((keyword.upper(), rest.strip()))
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


@pytest.fixture(scope="module")
def final() -> list[tuple[str, str]]:
    return stages((ROOT / "Dockerfile").read_text())[-1]


def args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for found, rest in stage if found == keyword]


def test_the_build_is_multi_stage_on_a_slim_python() -> None:
    built = stages((ROOT / "Dockerfile").read_text())
    assert len(built) >= 2
    base = args(built[-1], "FROM")[0]
    assert re.match(r"python:3\.1[1-9][.\d]*-slim", base), base
    # The final stage takes only the built virtualenv from the build stage.
    build_name = args(built[0], "FROM")[0].split(" AS ")[-1].strip()
    copies = args(built[-1], "COPY")
    assert copies and all(copy.startswith(f"--from={build_name} ") for copy in copies)


def test_no_compiler_is_installed_in_the_final_stage(final: list[tuple[str, str]]) -> None:
    installs = " ".join(args(final, "RUN"))
    for package in COMPILERS:
        assert not re.search(rf"(^|\s){re.escape(package)}(\s|$)", installs), package


def test_the_gateway_runs_as_a_non_root_user(final: list[tuple[str, str]]) -> None:
    [user] = args(final, "USER")
    name = user.split(":")[0]
    assert name not in {"0", "root"}
    # A numeric uid: Kubernetes' runAsNonRoot can only verify numbers.
    assert name.isdigit()


def test_the_entry_point_is_the_console_script(final: list[tuple[str, str]]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    [entrypoint] = args(final, "ENTRYPOINT")
    assert json.loads(entrypoint) == ["extproc"]
    assert scripts["extproc"] == "extproc.cli:main"
    [cmd] = args(final, "CMD")
    assert json.loads(cmd)[:2] == ["serve", "--config"]


def test_config_and_data_are_volumes(final: list[tuple[str, str]]) -> None:
    [volume] = args(final, "VOLUME")
    volumes = json.loads(volume)
    assert {"/etc/aigw", "/var/lib/aigw"} <= set(volumes)
    [cmd] = args(final, "CMD")
    config = json.loads(cmd)[-1]
    assert config.startswith("/etc/aigw/")


def test_the_health_check_asks_the_gateways_liveness_probe(final: list[tuple[str, str]]) -> None:
    [check] = args(final, "HEALTHCHECK")
    assert "CMD" in check
    assert "127.0.0.1:9464/healthz" in check
    # The probe runs with what the image has: no curl in a slim image.
    assert "curl" not in check and "wget" not in check


def test_only_the_package_goes_into_the_build_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    ignored = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignored[0] == "*"
    assert {"!pyproject.toml", "!extproc/"} <= set(ignored)
