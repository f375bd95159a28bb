"""An image model's fallbacks, which the Images API does not use: refused for a model of
``kind: images``, warned of at load and by check-config for one without a kind (its chat
requests fail over; its Images API requests go to its own provider alone)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from extproc.cli import main
from extproc.config import ConfigError, GatewayConfig, parse_config
from extproc.server import Gateway as ServingGateway
from extproc.testing import request_body, request_headers, run_stream
from tests.unit.test_accounting_review_streams import OPENAI_KEY
from tests.unit.test_guard_flow import Gateway
from tests.unit.test_images_api import asked, error_of

WARNING = "'gpt-image-1' is priced for the pictures it draws, and the Images API does not fail over"


def default_config(**image_model: Any) -> dict[str, Any]:
    """The default config, gpt-image-1 given ``image_model``'s settings and
    gpt-image-1-mini served by OpenAI (another provider than gpt-image-1's)."""
    raw: dict[str, Any] = yaml.safe_load(Path("config/gateway.yaml").read_text(encoding="utf-8"))
    models = {model["name"]: model for model in raw["models"]}
    models["gpt-image-1"].update(image_model)
    models["gpt-image-1-mini"]["provider"] = "openai"
    return raw


def index_of(raw: dict[str, Any], name: str) -> int:
    return next(i for i, model in enumerate(raw["models"]) if model["name"] == name)


def parsed(raw: dict[str, Any]) -> GatewayConfig:
    return parse_config(yaml.safe_dump(raw), "gateway.yaml", {})


def test_an_images_model_with_fallbacks_is_refused_naming_the_field_and_why() -> None:
    raw = default_config(kind="images", fallbacks=["gpt-image-1-mini"])
    with pytest.raises(ConfigError) as refused:
        parsed(raw)
    message = str(refused.value)
    assert f"models[{index_of(raw, 'gpt-image-1')}].fallbacks: 'gpt-image-1'" in message
    assert "the Images API does not fail over" in message


def test_check_config_warns_of_an_image_model_without_a_kind_with_fallbacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = default_config(fallbacks=["gpt-image-1-mini"])
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 0  # still served
    _, err = capsys.readouterr()
    field = f"models[{index_of(raw, 'gpt-image-1')}].fallbacks"
    assert f"  - {field}: {WARNING}" in err
    assert "set its kind to images" in err


def test_the_default_config_without_fallbacks_warns_of_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(default_config()), encoding="utf-8")
    assert main(["check-config", "--config", str(path)]) == 0
    _, err = capsys.readouterr()
    assert "fallbacks" not in err


async def test_the_gateway_warns_at_load_of_an_image_model_with_fallbacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="extproc.config.load_warnings")
    gateway = ServingGateway(parsed(default_config(fallbacks=["gpt-image-1-mini"])), None)
    try:
        found = [r.getMessage() for r in caplog.records if r.name.endswith("load_warnings")]
        assert any(WARNING in line for line in found)
    finally:
        await gateway.stop()


async def test_an_images_model_sent_to_chat_completions_is_a_400_naming_the_images_api() -> None:
    gateway = Gateway(parsed(default_config(kind="images")))
    chat = orjson.dumps({"model": "gpt-image-1", "messages": [{"role": "user", "content": "hi"}]})
    answers = await run_stream(
        gateway.processor,
        [request_headers("/v1/chat/completions", headers=OPENAI_KEY), request_body(chat)],
    )
    status, error = error_of(answers[-1])
    assert (status, error["code"], error["param"]) == (400, "unsupported_model_for_route", "model")
    assert "an images model" in error["message"]
    assert "/v1/images/generations" in error["message"]


async def test_a_chat_model_sent_to_the_images_api_is_a_400_naming_chat_completions() -> None:
    raw = default_config(kind="images")
    raw["models"][index_of(raw, "gpt-4o-mini")]["kind"] = "chat"
    gateway = Gateway(parsed(raw))
    answers = await run_stream(
        gateway.processor,
        [
            request_headers("/v1/images/generations", headers=OPENAI_KEY),
            request_body(asked(model="gpt-4o-mini")),
        ],
    )
    status, error = error_of(answers[-1])
    assert (status, error["code"]) == (400, "unsupported_model_for_route")
    assert "a chat model" in error["message"] and "/v1/chat/completions" in error["message"]
