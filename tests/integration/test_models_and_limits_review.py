"""What clients see of models and limits: the model list, access by any spelling of a
model's name, and the ``x-ratelimit-*`` headers, through the real Envoy, gateway and
Valkey with the official ``openai`` client.

One stack of its own: the default config's providers, models and routes, plus keys
and access rules that make the model list's decisions visible, quota rules whose
headers the client reads, and one OpenAI-compatible provider that, like OpenAI,
answers with its own account's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from tests.integration.conftest import mock_requests, running_stack

KEYS = {
    "team1": "team1-key",
    "team2": "team2-key",
    "haiku-only": "haiku-only-secret-1",
    "paced": "paced-secret-1",
    "half-metered": "half-metered-secret-1",
    "unmetered": "unmetered-secret-1",
    "chat-only": "chat-only-secret-1",
}
AUTH = """
auth:
  api_keys:
    - {id: team1, key: team1-key, user_id: alice, group_id: engineering}
    - {id: team2, key: team2-key, user_id: bob, group_id: marketing}
    - {id: haiku-only, key: haiku-only-secret-1, allowed_models: [haiku]}
    - {id: paced, key: paced-secret-1, group_id: paced-team}
    - {id: half-metered, key: half-metered-secret-1}
    - {id: unmetered, key: unmetered-secret-1}
    - {id: chat-only, key: chat-only-secret-1, allowed_routes: [openai-chat]}
  access_rules:
    # Engineering only, and only on the /anthropic route: elsewhere anyone may.
    - {name: sonnet-via-anthropic-route, models: [claude-sonnet-4-0], routes: [anthropic],
       groups: [engineering]}
    - {name: haiku-latest-for-engineering, models: [claude-3-5-haiku-latest],
       groups: [engineering]}
"""
QUOTAS = """
quotas:
  rules:
    - {name: paced-key, subject: api_key, match: paced, requests_per_day: 1000,
       tokens_per_day: 1000000}
    # Tighter than the key's own: this is the one the headers must describe.
    - {name: paced-team, subject: group, match: paced-team, requests_per_day: 3}
    - {name: half-metered-key, subject: api_key, match: half-metered, requests_per_day: 1000}
"""
# What OpenAI tells its own customers about their organisation's account.
ACCOUNT_LIMITS = {
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "30000000",
    "x-ratelimit-remaining-tokens": "29999990",
    "x-ratelimit-reset-tokens": "0s",
}
MESSAGES: list[Any] = [{"role": "user", "content": "what may I use?"}]


class _AccountLimitedProvider(BaseHTTPRequestHandler):
    """An OpenAI-compatible provider that sends its account's rate-limit headers, as OpenAI does."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))))
        answer = json.dumps(
            {
                "id": "chatcmpl-account",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": request["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(answer)))
        for name, value in ACCOUNT_LIMITS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def account_provider() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AccountLimitedProvider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def review_stack(
    tmp_path_factory: pytest.TempPathFactory, account_provider: str
) -> Iterator[LocalStack]:
    workdir = tmp_path_factory.mktemp("models-and-limits")
    text = DEFAULT_CONFIG.read_text()
    start, end = text.index("\nauth:\n"), text.index("\nroutes:\n")
    text = text[:start] + AUTH + text[end:]
    text = text.replace(
        "\nproviders:\n",
        f"\nproviders:\n  - {{name: account, base_url: '{account_provider}', api_key: acct-key}}\n",
        1,
    ).replace("\nmodels:\n", "\nmodels:\n  - {name: gpt-account, provider: account}\n", 1)
    config = workdir / "gateway.yaml"
    config.write_text(text + QUOTAS)
    with running_stack(workdir, config) as running:
        yield running


def client(stack: LocalStack, key: str, base_path: str = "/v1") -> OpenAI:
    return OpenAI(base_url=f"{stack.base_url}{base_path}", api_key=KEYS[key], max_retries=0)


def listed(stack: LocalStack, key: str) -> set[str]:
    return {model.id for model in client(stack, key).models.list()}


# --- the model list -------------------------------------------------------------------


def test_a_key_allowed_only_an_alias_finds_it_in_the_model_list(review_stack: LocalStack) -> None:
    """`allowed_models: [haiku]` lets the key use `haiku`; the list showed it nothing."""
    answer = client(review_stack, "haiku-only").chat.completions.create(
        model="haiku", messages=MESSAGES
    )
    assert answer.choices[0].message.content
    assert listed(review_stack, "haiku-only") == {"haiku"}


def test_a_key_kept_to_one_route_may_still_list_its_models(review_stack: LocalStack) -> None:
    """`allowed_routes: [openai-chat]`: the SDK's models.list() was a 403; it lists what
    the key may use there, and the key is still kept from the other routes."""
    names = listed(review_stack, "chat-only")
    assert "gpt-4o-mini" in names
    # Only what the chat route serves (the Anthropic-only names of /anthropic are not).
    assert names <= listed(review_stack, "unmetered")
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(review_stack, "chat-only", "/openai").chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
    assert refused.value.code == "route_not_allowed"


def test_the_model_list_names_every_alias_a_caller_may_send(review_stack: LocalStack) -> None:
    names = listed(review_stack, "team1")
    assert {"haiku", "titan", "llama"} <= names
    assert {"anthropic.claude-3-haiku-20240307-v1:0", "gpt-4o-mini"} <= names
    # Each name it lists is one the caller can send as it is.
    answer = client(review_stack, "team1").chat.completions.create(model="titan", messages=MESSAGES)
    assert answer.choices[0].message.content


def test_a_rule_kept_to_one_route_does_not_hide_the_model_from_the_others(
    review_stack: LocalStack,
) -> None:
    """Marketing may use claude-sonnet-4-0 on /v1/chat/completions (the rule covers only
    the /anthropic route), so its model list must show it."""
    marketing = client(review_stack, "team2")
    answer = marketing.chat.completions.create(model="claude-sonnet-4-0", messages=MESSAGES)
    assert answer.choices[0].message.content
    with pytest.raises(openai.PermissionDeniedError):
        client(review_stack, "team2", "/anthropic").chat.completions.create(
            model="claude-sonnet-4-0", messages=MESSAGES
        )
    assert "claude-sonnet-4-0" in listed(review_stack, "team2")
    # A rule without routes still hides its model from those it does not allow.
    assert "claude-3-5-haiku-latest" not in listed(review_stack, "team2")
    assert "claude-3-5-haiku-latest" in listed(review_stack, "team1")


# --- spellings of a model's name ------------------------------------------------------


@pytest.mark.parametrize(
    ("base_path", "spelling"),
    [
        # The /anthropic route sends names it does not list to its provider as they are.
        ("/anthropic", "Claude-3-5-Haiku-Latest"),
        # The claude- prefix sends any claude-* name to Anthropic as it is.
        ("/v1", "claude-3-5-haiku-latest "),
        ("/v1", "claude-3-5-HAIKU-latest"),
    ],
)
def test_another_spelling_of_a_model_does_not_escape_its_access_rule(
    review_stack: LocalStack, base_path: str, spelling: str
) -> None:
    before = len(mock_requests(review_stack))
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client(review_stack, "team2", base_path).chat.completions.create(
            model=spelling, messages=MESSAGES
        )
    assert refused.value.code == "model_not_allowed"
    assert "haiku-latest-for-engineering" in refused.value.message
    assert len(mock_requests(review_stack)) == before, "the provider was reached"


# --- the x-ratelimit-* headers --------------------------------------------------------

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(\d+)s$")


def seconds_of(duration: str) -> int:
    """The whole seconds of an OpenAI reset value such as `1s`, `6m0s` or `13h2m5s`."""
    found = _DURATION.fullmatch(duration)
    assert found is not None, f"{duration!r} is not a duration like OpenAI's"
    hours, minutes, seconds = (int(part or 0) for part in found.groups())
    return hours * 3600 + minutes * 60 + seconds


def openai_style(seconds: int) -> str:
    """How OpenAI writes that many seconds (Go's durations: `6m0s`, never `360s`)."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def assert_reset_like_openai(value: str, at_most: int) -> int:
    seconds = seconds_of(value)
    assert value == openai_style(seconds), f"OpenAI writes {openai_style(seconds)!r}, not {value!r}"
    assert 0 <= seconds <= at_most
    return seconds


def test_the_headers_describe_the_tightest_limit_in_openais_format(
    review_stack: LocalStack,
) -> None:
    """The key may send 1000 a day, its group 3: every answer, streamed or not, and the
    429 describe the group's limit; resets read like OpenAI's (`13h2m5s`)."""
    paced = client(review_stack, "paced")
    first = paced.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    with paced.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True
    ) as streamed:
        list(streamed.iter_lines())
    third = paced.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    answers = [first.headers, streamed.headers, third.headers]
    assert [h["x-ratelimit-limit-requests"] for h in answers] == ["3", "3", "3"]
    assert [h["x-ratelimit-remaining-requests"] for h in answers] == ["2", "1", "0"]
    for headers in answers:
        assert_reset_like_openai(headers["x-ratelimit-reset-requests"], 86_400)
        assert headers["x-ratelimit-limit-tokens"] == "1000000"
        assert_reset_like_openai(headers["x-ratelimit-reset-tokens"], 86_400)

    with pytest.raises(openai.RateLimitError) as refused:
        paced.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    headers = refused.value.response.headers
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    waited = assert_reset_like_openai(headers["x-ratelimit-reset-requests"], 86_400)
    assert int(headers["retry-after"]) == max(1, waited)


def test_without_a_limit_the_client_sees_no_rate_limit_headers(review_stack: LocalStack) -> None:
    """No rule applies to this key: the provider's account limits (every team's usage
    of the organisation's OpenAI account) are not the caller's and must not show."""
    answer = client(review_stack, "unmetered").chat.completions.with_raw_response.create(
        model="gpt-account", messages=MESSAGES
    )
    assert answer.parse().choices[0].message.content == "ok"
    shown = {name: answer.headers[name] for name in ACCOUNT_LIMITS if name in answer.headers}
    assert shown == {}


def test_a_request_limit_alone_shows_no_token_headers(review_stack: LocalStack) -> None:
    answer = client(review_stack, "half-metered").chat.completions.with_raw_response.create(
        model="gpt-account", messages=MESSAGES
    )
    assert answer.headers["x-ratelimit-limit-requests"] == "1000"
    assert "x-ratelimit-limit-tokens" not in answer.headers
    assert "x-ratelimit-remaining-tokens" not in answer.headers


def test_answers_no_rule_applies_to_carry_no_gateway_headers(review_stack: LocalStack) -> None:
    answer = client(review_stack, "unmetered").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES
    )
    assert not [name for name in answer.headers if name.startswith("x-ratelimit-")]
    assert "retry-after" not in answer.headers


def test_the_model_list_answers_with_the_openai_shape(review_stack: LocalStack) -> None:
    page = httpx.get(
        f"{review_stack.base_url}/v1/models",
        headers={"authorization": f"Bearer {KEYS['team1']}"},
        timeout=30.0,
    ).json()
    assert page["object"] == "list"
    for entry in page["data"]:
        assert set(entry) == {"id", "object", "created", "owned_by"}
        assert entry["object"] == "model"
    ids = [entry["id"] for entry in page["data"]]
    assert len(ids) == len(set(ids)), "each name once"
