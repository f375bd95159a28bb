"""An ``openai_audio`` route by ``path`` serves the one endpoint its path ends in
(transcriptions, translations or speech, as each request's path is read): one whose path
ends in none of them (``/team/audio``, or a misspelt ``/team/audio/transcription``)
answered every request with a 404 ``route_not_found``, though the config loaded. It is
refused at load, naming the route; a route by ``path_prefix`` serves all three."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import parse_config
from extproc.config.loader import ConfigError
from extproc.testing import request_headers, run_stream
from tests.unit.test_accounting_review_streams import OPENAI_KEY
from tests.unit.test_guard_flow import Gateway, immediate

DEFAULT = Path("config/gateway.yaml").read_text(encoding="utf-8")


def with_route(route: dict[str, Any]) -> str:
    """The default config with ``route`` first among its routes."""
    raw = yaml.safe_load(DEFAULT)
    raw["routes"].insert(0, {"name": "team-audio", "api": "openai_audio", **route})
    return yaml.safe_dump(raw)


@pytest.mark.parametrize("path", ["/team/audio", "/team/audio/transcription", "/team/v1"])
def test_an_audio_route_by_a_path_of_no_audio_endpoint_is_refused(path: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_config(with_route({"path": path}), "gateway.yaml", {})
    [problem] = refused.value.problems
    assert problem.startswith("routes[0]: ")
    assert repr(path) in problem
    assert "transcriptions, translations or speech" in problem


@pytest.mark.parametrize(
    "where",
    [
        {"path": "/team/audio/transcriptions"},
        {"path": "/team/audio/translations"},
        {"path": "/team/audio/speech"},
        # Read as each request's path is: the last segment, a trailing slash aside.
        {"path": "/team/audio/speech/"},
        {"path_prefix": "/team/audio"},
    ],
)
async def test_an_audio_route_of_an_endpoint_or_a_prefix_loads_and_serves(
    where: dict[str, str],
) -> None:
    gateway = Gateway(parse_config(with_route(where), "gateway.yaml", {}))
    path = where.get("path") or "/team/audio/transcriptions"
    # The headers pass the routing stage: the body (a form) is read next.
    answers = await run_stream(gateway.processor, [request_headers(path, headers=OPENAI_KEY)])
    assert not answers[-1].HasField("immediate_response"), immediate(answers[-1])
