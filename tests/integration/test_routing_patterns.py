"""The workshop's routing patterns: the model named by the path, a header or the query."""

from __future__ import annotations

import httpx
import orjson
import pytest

from extproc.devstack import LocalStack
from tests.integration.conftest import GatewayLog, mock_requests

KEY = {"authorization": "Bearer team1-key", "content-type": "application/json"}


def ask(
    http: httpx.Client,
    path: str,
    model: str | None = "gpt-4o-mini",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    body: dict[str, object] = {"messages": [{"role": "user", "content": "route me"}]}
    if model is not None:
        body["model"] = model
    return http.post(path, content=orjson.dumps(body), headers={**KEY, **(headers or {})})


def upstream_model(stack: LocalStack) -> str:
    model: str = mock_requests(stack)[-1]["json"]["model"]
    return model


def test_the_path_names_the_model_even_when_the_body_names_another(
    stack: LocalStack, http: httpx.Client, gateway_log: GatewayLog
) -> None:
    response = ask(http, "/openai/gpt-4o", model="gpt-4o-mini")
    assert response.status_code == 200, response.text
    assert upstream_model(stack) == "gpt-4o"
    [line] = gateway_log.for_request(response.headers["x-request-id"])
    assert (line["route"], line["model"]) == ("openai", "gpt-4o")


def test_the_path_names_the_model_when_the_body_names_none(
    stack: LocalStack, http: httpx.Client
) -> None:
    response = ask(http, "/openai/gpt-4.1-nano", model=None)
    assert response.status_code == 200, response.text
    assert upstream_model(stack) == "gpt-4.1-nano"


def test_a_model_header_picks_the_model(stack: LocalStack, http: httpx.Client) -> None:
    response = ask(http, "/openai", model="gpt-4o-mini", headers={"model": "gpt-4o"})
    assert response.status_code == 200, response.text
    assert upstream_model(stack) == "gpt-4o"


def test_a_model_query_parameter_picks_the_model(stack: LocalStack, http: httpx.Client) -> None:
    response = ask(http, "/openai?model=gpt-4.1-nano", model="gpt-4o-mini")
    assert response.status_code == 200, response.text
    assert upstream_model(stack) == "gpt-4.1-nano"


def test_an_sdk_base_url_under_the_prefix_still_reads_the_body(
    stack: LocalStack, http: httpx.Client
) -> None:
    response = ask(http, "/openai/v1/chat/completions", model="gpt-4o")
    assert response.status_code == 200, response.text
    assert upstream_model(stack) == "gpt-4o"


@pytest.mark.parametrize("path", ["/openai/gpt-unknown", "/openai?model=gpt-unknown"])
def test_an_unknown_model_from_the_path_or_query_is_a_404(http: httpx.Client, path: str) -> None:
    response = ask(http, path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_a_provider_route_refuses_models_of_other_providers(http: httpx.Client) -> None:
    response = ask(http, "/anthropic", model="gpt-4o")
    assert response.status_code == 404
    assert "not served on route 'anthropic'" in response.json()["error"]["message"]
