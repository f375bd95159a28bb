"""A model's fallbacks serve the API of the model they stand in for, refused at load
otherwise (a request that failed over would be sent to a model that serves no such
request): a chat model's (or one of no stated kind, whose chat requests fail over) are
chat models or of no stated kind, an embeddings model's embeddings models or of no stated
kind. And a route forcing an audio model of the kind its one path does not serve (a
speech model on a transcription path) is refused, where a route by the audio prefix,
serving both, takes either."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import parse_config
from extproc.config.loader import ConfigError

DEFAULT = Path("config/gateway.yaml").read_text(encoding="utf-8")


def loaded(change: Callable[[dict[str, Any]], None]) -> str | None:
    """The default config with a provider `other` and ``change`` made: None where it
    loads, else its load error."""
    raw = yaml.safe_load(DEFAULT)
    raw["providers"].append({"name": "other", "base_url": "http://127.0.0.1:1/v1"})
    change(raw)
    try:
        parse_config(yaml.safe_dump(raw), "t", {})
    except ConfigError as refused:
        return str(refused)
    return None


def model(raw: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(m for m in raw["models"] if m["name"] == name)
    return found


def index(raw: dict[str, Any], name: str) -> int:
    return [m["name"] for m in raw["models"]].index(name)


def add(raw: dict[str, Any], **entry: Any) -> None:
    raw["models"].append({"provider": "other", **entry})


def test_an_embeddings_model_is_no_fallback_of_a_model_of_no_stated_kind() -> None:
    # gpt-4o-mini states no kind: its chat requests fail over, to a model that embeds.
    def change(raw: dict[str, Any]) -> None:
        model(raw, "text-embedding-3-large")["provider"] = "other"
        model(raw, "gpt-4o-mini")["fallbacks"] = ["text-embedding-3-large"]

    error = loaded(change)
    assert error is not None
    raw = yaml.safe_load(DEFAULT)
    assert f"models[{index(raw, 'gpt-4o-mini')}].fallbacks: 'text-embedding-3-large'" in error
    assert "is an embeddings model" in error
    assert "'gpt-4o-mini' states no kind" in error


def test_an_embeddings_model_is_no_fallback_of_a_chat_model() -> None:
    def change(raw: dict[str, Any]) -> None:
        add(raw, name="vectors", upstream_model="text-embedding-3-small", kind="embeddings")
        model(raw, "gpt-4o-mini")["kind"] = "chat"
        model(raw, "gpt-4o-mini")["fallbacks"] = ["vectors"]

    error = loaded(change)
    assert error is not None
    assert "'vectors' is an embeddings model, and 'gpt-4o-mini' is a chat model" in error
    assert "serves no chat" in error


def test_a_chat_model_is_no_fallback_of_an_embeddings_model() -> None:
    def change(raw: dict[str, Any]) -> None:
        add(raw, name="chatty", upstream_model="gpt-4o", kind="chat")
        model(raw, "text-embedding-3-small")["fallbacks"] = ["chatty"]

    error = loaded(change)
    assert error is not None
    field = f"models[{index(yaml.safe_load(DEFAULT), 'text-embedding-3-small')}].fallbacks"
    assert f"{field}: 'chatty' is a chat model" in error
    assert "'text-embedding-3-small' is an embeddings model" in error
    assert "serves no embeddings" in error


@pytest.mark.parametrize(
    ("primary", "fallback"),
    [
        # Of one kind.
        ({"name": "text-embedding-3-small"}, {"kind": "embeddings"}),
        ({"name": "gpt-4o-mini", "kind": "chat"}, {"kind": "chat"}),
        ({"name": "gpt-4o-mini"}, {"kind": "chat"}),
        # A fallback of no stated kind stands in for either, as every route sends it.
        ({"name": "text-embedding-3-small"}, {}),
        ({"name": "gpt-4o-mini", "kind": "chat"}, {}),
        ({"name": "gpt-4o-mini"}, {}),
    ],
)
def test_a_fallback_that_serves_its_models_api_loads(
    primary: dict[str, Any], fallback: dict[str, Any]
) -> None:
    def change(raw: dict[str, Any]) -> None:
        add(raw, name="stand-in", upstream_model=primary["name"], **fallback)
        own = model(raw, primary["name"])
        own.update(primary)
        own["fallbacks"] = ["stand-in"]

    assert loaded(change) is None


def test_check_config_names_the_field_and_value_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_text(
        DEFAULT.replace(
            "  - name: gpt-4o-mini\n",
            "  - name: gpt-4o-mini\n    fallbacks: [cohere.embed-english-v3]\n",
            1,
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "extproc", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "models[0].fallbacks: 'cohere.embed-english-v3' is an embeddings model" in output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("path", "forced"),
    [
        ("/forced/v1/audio/transcriptions", "tts-1"),
        ("/forced/v1/audio/translations", "tts-1"),
        ("/forced/v1/audio/speech", "whisper-1"),
    ],
)
def test_an_audio_route_by_path_forced_to_the_other_endpoints_kind_is_refused(
    path: str, forced: str
) -> None:
    # Every request on it was a 400 saying the openai_audio route does not serve the
    # model, though the API serves it at its other endpoint.
    def change(raw: dict[str, Any]) -> None:
        route = {"name": "forced", "path": path, "api": "openai_audio", "model": forced}
        raw["routes"].insert(0, route)

    error = loaded(change)
    assert error is not None
    assert f"routes[0].model: {forced!r}" in error
    assert f"the route's path {path!r}" in error


@pytest.mark.parametrize(
    ("where", "forced"),
    [
        # The audio prefix serves both endpoints, the forced model's among them.
        ({"path_prefix": "/forced/v1/audio"}, "tts-1"),
        ({"path_prefix": "/forced/v1/audio"}, "whisper-1"),
        # A path of the forced model's own endpoint.
        ({"path": "/forced/v1/audio/speech"}, "tts-1"),
        ({"path": "/forced/v1/audio/translations"}, "whisper-1"),
    ],
)
def test_an_audio_route_forced_to_a_model_it_serves_loads(
    where: dict[str, str], forced: str
) -> None:
    def change(raw: dict[str, Any]) -> None:
        raw["routes"].insert(0, {"name": "forced", **where, "api": "openai_audio", "model": forced})

    assert loaded(change) is None
