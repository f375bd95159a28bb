"""A route's own model, and the path segments a model_from_path route reads, fit the
route's API: a forced model that every request on its route would be refused for is
refused at load instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc import headers
from extproc.cli import main
from extproc.config import ConfigError, parse_config
from extproc.processor import Processor
from extproc.runtime import Runtime, Services
from extproc.stages.pipeline import default_stages
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.conftest import MemoryLog

CONFIG = """
providers:
  - {name: mock, base_url: http://127.0.0.1:8089/v1, api_key: k}
  - {name: claude, type: anthropic, base_url: https://api.anthropic.com, api_key: k}
models:
  - {name: gpt-4o-mini, provider: mock, kind: chat}
  - {name: plain, provider: mock}
  - {name: embed, provider: mock, kind: embeddings, aliases: [embed-alias]}
  - {name: ranker, provider: mock, kind: rerank}
  - {name: whisper-1, provider: mock, kind: transcription}
  - {name: tts-1, provider: mock, kind: speech}
  - {name: omni, provider: mock, kind: moderation}
model_groups:
  - {name: chat-group, members: [{model: gpt-4o-mini}, {model: plain}]}
routes:
"""


def problems(route: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(CONFIG + "  - " + route + "\n", "test.yaml", {})
    return caught.value.problems


@pytest.mark.parametrize(
    ("route", "said"),
    [
        (
            "{name: e, path: /v1/embeddings, api: openai_embeddings, model: gpt-4o-mini}",
            "'gpt-4o-mini' is a chat model, which an openai_embeddings route does not"
            " serve (it serves embeddings models)",
        ),
        (
            "{name: r, path: /v1/rerank, api: rerank, model: gpt-4o-mini}",
            "'gpt-4o-mini' is a chat model, which a rerank route does not serve",
        ),
        (
            "{name: m, path: /v1/moderations, api: openai_moderations, model: plain}",
            "'plain' states no kind, and an openai_moderations route serves models of"
            " kind moderation alone",
        ),
        (
            "{name: c, path: /x/chat, model: embed-alias}",
            "'embed-alias' is an embeddings model, which an openai_chat route does not serve",
        ),
        (
            "{name: g, path: /v1/embeddings, api: openai_embeddings, model: chat-group}",
            "'chat-group' is a chat model",
        ),
        (
            "{name: a, path: /v1/audio/speech, api: openai_audio, model: gpt-4o-mini}",
            "(it serves transcription and speech models, by the path)",
        ),
    ],
)
def test_a_forced_model_the_routes_api_does_not_serve_is_refused_at_load(
    route: str, said: str
) -> None:
    """Taken before, every request on the route was a 400 unsupported_model_for_route."""
    [found] = problems(route)
    assert found.startswith("routes[0].model: "), found
    assert said in found, found


def test_check_config_names_the_route_whose_model_it_does_not_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG + "  - {name: r, path: /v1/rerank, api: rerank, model: embed}\n")
    with pytest.raises(SystemExit) as exited:
        main(["check-config", "--config", str(bad)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "routes[0].model: 'embed' is an embeddings model" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("route", "said"),
    [
        (
            "{name: r, path: /v1/rerank, api: rerank, provider: claude}",
            "routes[0].provider: 'claude' is an anthropic provider, which a rerank route"
            " cannot send to (it sends to openai providers)",
        ),
        (
            "{name: e, path: /v1/embeddings, api: openai_embeddings, provider: claude}",
            "(it sends to openai, bedrock and vertex providers)",
        ),
        (
            "{name: m, path: /v1/messages, api: anthropic_messages, provider: mock}",
            "routes[0].provider: 'mock' is an openai provider, which an anthropic_messages",
        ),
    ],
)
def test_a_route_provider_that_cannot_serve_its_api_is_refused_at_load(
    route: str, said: str
) -> None:
    """Taken before, every request on the route was refused for its provider's type."""
    [found] = problems(route)
    assert said in found, found


# --- model_from_path ---------------------------------------------------------------------


def _team_routes() -> Processor:
    """The default config with a model_from_path prefix route of each API (at /team/<api>)."""
    raw = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    apis = ["openai_embeddings", "rerank", "openai_moderations", "openai_audio", "openai_images"]
    raw["routes"] = [
        {"name": f"team-{api}", "path_prefix": f"/team/{api}", "api": api, "model_from_path": True}
        for api in apis
    ] + raw["routes"]
    runtime = Runtime(parse_config(yaml.safe_dump(raw), "test", {}), _services())
    return Processor(lambda: runtime, default_stages())


def _services() -> Services:
    return Services(GatewayMetrics(), MemoryLog())


def _json(**fields: Any) -> bytes:
    return orjson.dumps(fields)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # An SDK based at the prefix, or at <prefix>/v1: the path names the endpoint.
        ("/team/openai_embeddings/embeddings", _json(model="text-embedding-3-small", input="hi")),
        ("/team/rerank/rerank", _json(model="rerank-v3.5", query="q", documents=["a"])),
        ("/team/rerank/v2/rerank", _json(model="rerank-v3.5", query="q", documents=["a"])),
        ("/team/openai_moderations/moderations", _json(model="omni-moderation-latest", input="x")),
        ("/team/openai_audio/audio/speech", _json(model="tts-1", input="hi", voice="alloy")),
        ("/team/openai_images/images/generations", _json(model="gpt-image-1", prompt="a cat")),
        ("/team/openai_images/generations", _json(model="gpt-image-1", prompt="a cat")),
    ],
)
async def test_a_model_from_path_route_never_reads_its_apis_endpoint_as_the_model(
    path: str, body: bytes
) -> None:
    """Before, `/team/embeddings` asked for a model named `embeddings` (and
    `/team/v2/rerank` for one named `v2`): a 400 or 404 for a model nobody named."""
    answers = await run_stream(
        _team_routes(),
        [request_headers(path, headers={"authorization": "Bearer team1-key"}), request_body(body)],
    )
    assert answers[1].WhichOneof("response") == "request_body", answers[1]
    mutation = answers[1].request_body.response.header_mutation
    set_headers = {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}
    assert set_headers[headers.CLUSTER] == "provider_mock"
