"""A route's own model, and the path segments a model_from_path route reads, fit the
route's API: a forced model that every request on its route would be refused for is
refused at load instead."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.cli import main
from extproc.config import ConfigError, parse_config

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
