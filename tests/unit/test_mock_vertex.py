"""The mock's Google Cloud Vertex AI surface, driven by the real clients: google-auth trades a
service account key for an access token at the mock's token endpoint, then the anthropic
SDK's ``AsyncAnthropicVertex`` and the openai client (Vertex's OpenAI-compatible endpoint)
call Vertex's routes with it. Raw httpx sends what the clients will not."""

from __future__ import annotations

import asyncio
import contextlib
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import orjson
import pytest
import urllib3
from anthropic import AsyncAnthropicVertex
from google.auth.exceptions import RefreshError
from google.auth.transport.urllib3 import Request
from google.oauth2 import service_account
from openai import AsyncOpenAI

from extproc.cli import build_parser
from extproc.mock_llm import MockOptions, create_app
from extproc.mock_llm.vertex_auth import (
    CLOUD_PLATFORM_SCOPE,
    JWT_BEARER_GRANT,
    ServiceAccount,
    write_service_account,
)
from extproc.testing import serve_mock

PROJECT = "mock-project"
REGION = "us-east5"
# Vertex names Claude models with an @version; its answers name them as Anthropic does.
CLAUDE = "claude-sonnet-4-5@20250929"
# What count-tokens names the model by: without Vertex's version.
CLAUDE_NAME = "claude-sonnet-4-5"
CLAUDE_ANSWERED = "claude-sonnet-4-5-20250929"
GEMINI = "google/gemini-2.5-flash"
VERSION = "vertex-2023-10-16"
# anthropic 2.15 puts its own API version (2026-10-21) in the body unless the body names one.
VERTEX_BODY = {"anthropic_version": VERSION}
PROMPT = "Say hello, mock!"
REPLY = "Mock reply to: Say hello, mock!"
# Say hello , mock ! -> 5 tokens, + 4 for the message, + 2 for the request.
INPUT_TOKENS = 11
OUTPUT_TOKENS = 9  # Mock reply to : Say hello , mock !
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
LOCATION = f"/v1/projects/{PROJECT}/locations/{REGION}"
CLAUDE_PATH = f"{LOCATION}/publishers/anthropic/models/{CLAUDE}"
COUNT_PATH = f"{LOCATION}/publishers/anthropic/models/count-tokens:rawPredict"
CHAT_PATH = f"{LOCATION}/endpoints/openapi/chat/completions"
CLAUDE_BODY = {"anthropic_version": VERSION, "max_tokens": 50, "messages": MESSAGES}
COUNT_BODY = {"anthropic_version": VERSION, "model": CLAUDE_NAME, "messages": MESSAGES}
CHAT_BODY = {"model": GEMINI, "messages": MESSAGES}
# Each Vertex route, with a body it answers 200.
ROUTES = [
    pytest.param(f"{CLAUDE_PATH}:rawPredict", CLAUDE_BODY, id="claude"),
    pytest.param(COUNT_PATH, COUNT_BODY, id="count-tokens"),
    pytest.param(CHAT_PATH, CHAT_BODY, id="openai-chat"),
]


@dataclass(frozen=True, slots=True)
class Vertex:
    """A mock serving Vertex, and the service account whose key it trusts."""

    url: str
    account: ServiceAccount


@contextlib.asynccontextmanager
async def vertex_mock(key_file: Path, **options: Any) -> AsyncIterator[Vertex]:
    """A mock trusting the key at ``key_file``, written once the mock's token URL is known."""
    async with serve_mock(MockOptions(gcp_service_account=str(key_file), **options)) as url:
        yield Vertex(url, write_service_account(key_file, f"{url}/token"))


@pytest.fixture(scope="module")
async def vertex(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Vertex]:
    async with vertex_mock(tmp_path_factory.mktemp("gcp") / "key.json") as mock:
        yield mock


# google-auth has no type hints: its calls are marked below.
def credentials(key_file: Path) -> service_account.Credentials:
    load = service_account.Credentials.from_service_account_file
    creds: service_account.Credentials = load(  # type: ignore[no-untyped-call]
        str(key_file), scopes=[CLOUD_PLATFORM_SCOPE]
    )
    return creds


async def refresh(creds: service_account.Credentials) -> str:
    """Have google-auth mint a token (blocking I/O, so in a thread: the mock runs on this loop)."""

    def mint() -> None:
        with urllib3.PoolManager() as pool:
            creds.refresh(Request(pool))  # type: ignore[no-untyped-call]

    await asyncio.to_thread(mint)
    assert isinstance(creds.token, str)
    return creds.token


@pytest.fixture(scope="module")
async def token(vertex: Vertex) -> str:
    return await refresh(credentials(vertex.account.path))


@pytest.fixture
async def http(vertex: Vertex) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=vertex.url) as client:
        yield client


@pytest.fixture
async def claude(vertex: Vertex, token: str) -> AsyncIterator[AsyncAnthropicVertex]:
    async with AsyncAnthropicVertex(
        region=REGION,
        project_id=PROJECT,
        access_token=token,
        base_url=f"{vertex.url}/v1",
        max_retries=0,
    ) as client:
        yield client


@pytest.fixture
async def gemini(vertex: Vertex, token: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=f"{vertex.url}{LOCATION}/endpoints/openapi", api_key=token, max_retries=0
    ) as client:
        yield client


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **more}


async def tokens_issued(http: httpx.AsyncClient) -> int:
    answer = await http.get("/_mock/gcp/tokens")
    assert answer.status_code == 200
    issued: int = answer.json()["issued"]
    return issued


def google_error(answer: httpx.Response, code: int, status: str) -> str:
    """The message of a Google-shaped error, after checking its shape."""
    assert answer.status_code == code, answer.text
    error = answer.json()["error"]
    assert set(error) == {"code", "message", "status"}
    assert (error["code"], error["status"]) == (code, status)
    message: str = error["message"]
    return message


def anthropic_error(answer: httpx.Response, code: int, error_type: str) -> str:
    assert answer.status_code == code, answer.text
    document = answer.json()
    assert document["type"] == "error" and document["error"]["type"] == error_type
    message: str = document["error"]["message"]
    return message


# --- The service account key file ---


def test_the_key_file_is_a_google_service_account_key(tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    account = write_service_account(key_file, "http://127.0.0.1:1/token", project="p-1")

    document = orjson.loads(key_file.read_bytes())
    assert document["type"] == "service_account"
    assert document["project_id"] == account.project_id == "p-1"
    assert document["client_email"] == account.client_email
    assert account.client_email.endswith("@p-1.iam.gserviceaccount.com")
    assert document["private_key_id"] == account.private_key_id
    assert document["private_key"].startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert document["token_uri"] == account.token_uri == "http://127.0.0.1:1/token"
    assert document["client_id"].isdigit()
    # A private key: readable by its owner only.
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The key google-auth signs with is the one the account's public key verifies.
    signed = jwt.encode({"sub": "x"}, document["private_key"], algorithm="RS256")
    assert jwt.decode(signed, account.public_key, algorithms=["RS256"]) == {"sub": "x"}


def test_each_key_file_holds_a_new_key(tmp_path: Path) -> None:
    first = write_service_account(tmp_path / "a.json", "http://127.0.0.1:1/token")
    second = write_service_account(tmp_path / "b.json", "http://127.0.0.1:1/token")
    assert first.private_key_id != second.private_key_id
    assert first.public_key.public_numbers() != second.public_key.public_numbers()


# --- The token endpoint ---


async def test_google_auth_trades_the_key_for_a_token_the_routes_take(
    vertex: Vertex, http: httpx.AsyncClient
) -> None:
    before = await tokens_issued(http)
    creds = credentials(vertex.account.path)

    fresh = await refresh(creds)

    assert fresh.startswith("ya29.mock-")
    assert creds.valid
    assert await tokens_issued(http) == before + 1
    answer = await http.post(CHAT_PATH, json=CHAT_BODY, headers=bearer(fresh))
    assert answer.status_code == 200, answer.text


def assertion(account: ServiceAccount, **claims: Any) -> str:
    """A JWT-bearer assertion as google-auth makes it, signed with the account's key; a
    claim given as None is left out, ``kid`` replaces the header's key id."""
    now = int(time.time())
    document = orjson.loads(account.path.read_bytes())
    kid = claims.pop("kid", account.private_key_id)
    payload = {
        "iss": account.client_email,
        "aud": account.token_uri,
        "scope": CLOUD_PLATFORM_SCOPE,
        "iat": now,
        "exp": now + 3600,
        **claims,
    }
    payload = {name: value for name, value in payload.items() if value is not None}
    return jwt.encode(payload, document["private_key"], algorithm="RS256", headers={"kid": kid})


async def test_the_token_answer_is_googles(vertex: Vertex, http: httpx.AsyncClient) -> None:
    answer = await http.post(
        "/token", data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion(vertex.account)}
    )

    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    document = answer.json()
    assert set(document) == {"access_token", "expires_in", "token_type"}
    assert document["token_type"] == "Bearer"
    assert document["expires_in"] == 3600
    assert document["access_token"].startswith("ya29.mock-")


async def test_a_key_the_mock_does_not_trust_is_an_invalid_grant(
    vertex: Vertex, tmp_path: Path
) -> None:
    # The same account name and token URL, another key.
    stranger = write_service_account(tmp_path / "other.json", vertex.account.token_uri)
    assert stranger.client_email == vertex.account.client_email

    with pytest.raises(RefreshError, match="invalid_grant"):
        await refresh(credentials(stranger.path))


@pytest.mark.parametrize(
    ("claims", "error"),
    [
        pytest.param({"kid": "0" * 40}, "invalid_grant", id="another-key-id"),
        pytest.param({"iss": "someone@else.iam.gserviceaccount.com"}, "invalid_grant", id="iss"),
        pytest.param({"aud": "https://example.com/token"}, "invalid_grant", id="aud"),
        pytest.param(
            {"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600},
            "invalid_grant",
            id="expired",
        ),
        pytest.param({"exp": int(time.time()) + 7200}, "invalid_grant", id="lives-two-hours"),
        pytest.param({"exp": None}, "invalid_grant", id="no-exp"),
        pytest.param({"scope": None}, "invalid_scope", id="no-scope"),
        pytest.param(
            {"scope": "https://www.googleapis.com/auth/devstorage.read_only"},
            "invalid_scope",
            id="not-cloud-platform",
        ),
    ],
)
async def test_an_assertion_google_refuses_gets_no_token(
    vertex: Vertex, http: httpx.AsyncClient, claims: dict[str, Any], error: str
) -> None:
    before = await tokens_issued(http)

    answer = await http.post(
        "/token",
        data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion(vertex.account, **claims)},
    )

    assert answer.status_code == 400
    document = answer.json()
    assert document["error"] == error
    assert document["error_description"]
    assert await tokens_issued(http) == before


@pytest.mark.parametrize(
    "audience",
    [
        pytest.param(None, id="the-key-files-token-uri"),
        # What google-auth signs, whatever the key file's token_uri.
        pytest.param("https://oauth2.googleapis.com/token", id="googles-token-url"),
    ],
)
async def test_either_audience_google_takes_is_taken(
    vertex: Vertex, http: httpx.AsyncClient, audience: str | None
) -> None:
    claims = {} if audience is None else {"aud": audience}
    answer = await http.post(
        "/token",
        data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion(vertex.account, **claims)},
    )
    assert answer.status_code == 200, answer.text


async def test_an_assertion_with_many_scopes_including_cloud_platform_is_taken(
    vertex: Vertex, http: httpx.AsyncClient
) -> None:
    scopes = f"openid {CLOUD_PLATFORM_SCOPE} https://www.googleapis.com/auth/userinfo.email"
    answer = await http.post(
        "/token",
        data={"grant_type": JWT_BEARER_GRANT, "assertion": assertion(vertex.account, scope=scopes)},
    )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("form", "error"),
    [
        pytest.param({"grant_type": "client_credentials"}, "unsupported_grant_type", id="grant"),
        pytest.param({"grant_type": JWT_BEARER_GRANT}, "invalid_request", id="no-assertion"),
        pytest.param(
            {"grant_type": JWT_BEARER_GRANT, "assertion": "x.y"}, "invalid_grant", id="jwt"
        ),
    ],
)
async def test_a_malformed_token_request_is_refused(
    http: httpx.AsyncClient, form: dict[str, str], error: str
) -> None:
    answer = await http.post("/token", data=form)
    assert answer.status_code == 400
    assert answer.json()["error"] == error


async def test_without_a_service_account_every_token_request_is_an_invalid_grant(
    tmp_path: Path,
) -> None:
    async with serve_mock() as url:
        account = write_service_account(tmp_path / "key.json", f"{url}/token")
        with pytest.raises(RefreshError, match="invalid_grant"):
            await refresh(credentials(account.path))


async def test_an_expired_token_is_refused_and_google_auth_mints_another(tmp_path: Path) -> None:
    async with (
        vertex_mock(tmp_path / "key.json", gcp_token_lifetime_s=0) as mock,
        httpx.AsyncClient(base_url=mock.url) as http,
    ):
        creds = credentials(mock.account.path)
        first = await refresh(creds)

        answer = await http.post(CHAT_PATH, json=CHAT_BODY, headers=bearer(first))
        google_error(answer, 401, "UNAUTHENTICATED")
        # google-auth reads expires_in: it knows to mint another.
        assert creds.expired
        second = await refresh(creds)
        assert second != first
        assert await tokens_issued(http) == 2


async def test_a_token_that_outlives_a_refresh_still_works(tmp_path: Path) -> None:
    # A minute: google-auth calls a token expired minutes early, so it refreshes at once.
    async with (
        vertex_mock(tmp_path / "key.json", gcp_token_lifetime_s=60) as mock,
        httpx.AsyncClient(base_url=mock.url) as http,
    ):
        creds = credentials(mock.account.path)
        first = await refresh(creds)
        assert creds.expired
        second = await refresh(creds)

        assert await tokens_issued(http) == 2
        for token in (first, second):
            answer = await http.post(CHAT_PATH, json=CHAT_BODY, headers=bearer(token))
            assert answer.status_code == 200, answer.text


async def test_the_mock_reads_a_rotated_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key.json"
    async with vertex_mock(key_file) as mock:
        await refresh(credentials(key_file))
        old = tmp_path / "old.json"
        old.write_bytes(key_file.read_bytes())
        write_service_account(key_file, mock.account.token_uri)

        assert (await refresh(credentials(key_file))).startswith("ya29.mock-")
        with pytest.raises(RefreshError, match="invalid_grant"):
            await refresh(credentials(old))


# --- Authentication and the path on the Vertex routes ---


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="missing"),
        pytest.param("Bearer ya29.mock-unknown", id="unknown"),
        pytest.param("Bearer", id="no-token"),
        pytest.param("Basic dXNlcjpwYXNz", id="not-bearer"),
    ],
)
@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_a_route_without_a_valid_token_is_unauthenticated(
    http: httpx.AsyncClient, path: str, body: dict[str, Any], authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = await http.post(path, json=body, headers=headers)
    google_error(answer, 401, "UNAUTHENTICATED")


async def test_the_openai_compatible_route_is_vertexs_not_openais(
    http: httpx.AsyncClient,
) -> None:
    # Any bearer key would do for the mock's OpenAI endpoint; Vertex wants a token it issued.
    answer = await http.post(CHAT_PATH, json=CHAT_BODY, headers=bearer("sk-test"))
    google_error(answer, 401, "UNAUTHENTICATED")


@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_another_project_is_permission_denied(
    http: httpx.AsyncClient, token: str, path: str, body: dict[str, Any]
) -> None:
    answer = await http.post(
        path.replace(f"/projects/{PROJECT}/", "/projects/someone-else/"),
        json=body,
        headers=bearer(token),
    )
    message = google_error(answer, 403, "PERMISSION_DENIED")
    assert "someone-else" in message


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(CHAT_PATH.replace(REGION, "europe-west1"), id="another-region"),
        # Gemini's own methods are served (test_mock_vertex_gemini); another model is not.
        pytest.param(
            f"{LOCATION}/publishers/google/models/gpt-4o:generateContent",
            id="not-googles-model",
        ),
        pytest.param(f"{LOCATION}/publishers/anthropic/models/gpt-4o:rawPredict", id="not-claude"),
        pytest.param(f"{CLAUDE_PATH}:predict", id="another-method"),
        pytest.param(f"{LOCATION}/endpoints/openapi/completions", id="not-chat"),
    ],
)
async def test_a_region_or_path_vertex_does_not_serve_is_not_found(
    http: httpx.AsyncClient, token: str, path: str
) -> None:
    answer = await http.post(path, json=CLAUDE_BODY, headers=bearer(token))
    google_error(answer, 404, "NOT_FOUND")


# --- Claude ---


async def test_claude_answers_through_anthropic_vertex(claude: AsyncAnthropicVertex) -> None:
    message = await claude.messages.create(
        model=CLAUDE, max_tokens=100, messages=MESSAGES, extra_body=VERTEX_BODY
    )

    assert message.model == CLAUDE_ANSWERED
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )


async def test_claude_streams_anthropics_events(
    claude: AsyncAnthropicVertex, http: httpx.AsyncClient, token: str
) -> None:
    async with claude.messages.stream(
        model=CLAUDE, max_tokens=100, messages=MESSAGES, extra_body=VERTEX_BODY
    ) as stream:
        message = await stream.get_final_message()
    assert message.model == CLAUDE_ANSWERED
    assert message.content[0].type == "text" and message.content[0].text == REPLY
    assert message.usage.output_tokens == OUTPUT_TOKENS

    answer = await http.post(
        f"{CLAUDE_PATH}:streamRawPredict",
        json={**CLAUDE_BODY, "stream": True},
        headers=bearer(token),
    )
    assert answer.headers["Content-Type"].startswith("text/event-stream")
    names = [line[7:] for line in answer.text.splitlines() if line.startswith("event: ")]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


async def test_claude_counts_tokens_as_the_answer_reports_them(
    claude: AsyncAnthropicVertex,
) -> None:
    count = await claude.messages.count_tokens(
        model=CLAUDE_NAME, messages=MESSAGES, extra_body=VERTEX_BODY
    )
    assert count.input_tokens == INPUT_TOKENS


async def test_a_count_without_anthropic_version_is_counted(
    http: httpx.AsyncClient, token: str
) -> None:
    # Google's count-tokens example sends none.
    body = {"model": CLAUDE_NAME, "messages": MESSAGES}
    answer = await http.post(COUNT_PATH, json=body, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"input_tokens": INPUT_TOKENS}


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        pytest.param(
            f"{CLAUDE_PATH}:rawPredict",
            {**CLAUDE_BODY, "model": CLAUDE},
            "model: Extra inputs are not permitted",
            id="model-in-body",
        ),
        pytest.param(
            f"{CLAUDE_PATH}:rawPredict",
            {"max_tokens": 50, "messages": MESSAGES},
            "anthropic_version: Field required",
            id="no-version",
        ),
        pytest.param(
            f"{CLAUDE_PATH}:streamRawPredict",
            {**CLAUDE_BODY, "anthropic_version": "bedrock-2023-05-31", "stream": True},
            f"anthropic_version: Input should be '{VERSION}'",
            id="bedrock-version",
        ),
        pytest.param(
            f"{CLAUDE_PATH}:rawPredict",
            {**CLAUDE_BODY, "anthropic_version": "2023-06-01"},
            f"anthropic_version: Input should be '{VERSION}'",
            id="api-version",
        ),
        pytest.param(
            COUNT_PATH,
            {**COUNT_BODY, "anthropic_version": "2026-10-21"},
            f"anthropic_version: Input should be '{VERSION}'",
            id="count-version",
        ),
        pytest.param(
            COUNT_PATH,
            {**COUNT_BODY, "model": CLAUDE},
            f"{CLAUDE} is not supported for token counting",
            id="count-versioned-model",
        ),
        pytest.param(
            f"{CLAUDE_PATH}:rawPredict",
            {"anthropic_version": VERSION, "messages": MESSAGES},
            "max_tokens: Field required",
            id="anthropics-own-check",
        ),
    ],
)
async def test_a_claude_body_vertex_refuses_is_anthropics_400(
    http: httpx.AsyncClient, token: str, path: str, body: dict[str, Any], message: str
) -> None:
    answer = await http.post(path, json=body, headers=bearer(token))
    assert anthropic_error(answer, 400, "invalid_request_error") == message


async def test_a_chosen_reply_reaches_claude_on_vertex(claude: AsyncAnthropicVertex) -> None:
    message = await claude.messages.create(
        model=CLAUDE,
        max_tokens=100,
        messages=MESSAGES,
        extra_body=VERTEX_BODY,
        extra_headers={"x-mock-reply": "Chosen words."},
    )
    assert message.content[0].type == "text" and message.content[0].text == "Chosen words."
    assert message.usage.output_tokens == 3


async def test_the_record_shows_the_request_as_the_client_sent_it(
    http: httpx.AsyncClient, token: str
) -> None:
    await http.delete("/_mock/requests")
    answer = await http.post(f"{CLAUDE_PATH}:rawPredict", json=CLAUDE_BODY, headers=bearer(token))
    assert answer.status_code == 200

    [recorded] = (await http.get("/_mock/requests")).json()
    assert recorded["path"] == f"{CLAUDE_PATH}:rawPredict"
    assert recorded["json"] == CLAUDE_BODY
    # The mock reads Vertex's version from the body; it adds no header to the record.
    assert "anthropic-version" not in recorded["headers"]


# --- Gemini through the OpenAI-compatible endpoint ---


async def test_gemini_answers_openai_chat(gemini: AsyncOpenAI) -> None:
    completion = await gemini.chat.completions.create(model=GEMINI, messages=MESSAGES)

    assert completion.model == GEMINI
    assert completion.choices[0].message.content == REPLY
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )


async def test_gemini_streams_openai_chunks_with_usage(gemini: AsyncOpenAI) -> None:
    stream = await gemini.chat.completions.create(
        model=GEMINI, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == OUTPUT_TOKENS
    assert chunks[-1].usage.prompt_tokens == INPUT_TOKENS


@pytest.mark.parametrize(
    ("headers", "traffic_type"),
    [
        ({}, "ON_DEMAND"),
        ({"X-Vertex-AI-LLM-Shared-Request-Type": "priority"}, "ON_DEMAND_PRIORITY"),
        ({"X-Vertex-AI-LLM-Shared-Request-Type": "flex"}, "ON_DEMAND_FLEX"),
        ({"X-Vertex-AI-LLM-Request-Type": "dedicated"}, "PROVISIONED_THROUGHPUT"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_gemini_names_its_traffic_type_where_vertex_does(
    http: httpx.AsyncClient, token: str, headers: dict[str, str], traffic_type: str, stream: bool
) -> None:
    # Vertex's OpenAI-compatible endpoint writes no top-level service_tier: the capacity
    # that served the request is in usage.extra_properties.google.traffic_type.
    body = {**CHAT_BODY, "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        del body["stream_options"]
    answer = await http.post(CHAT_PATH, json=body, headers=bearer(token, **headers))
    assert answer.status_code == 200, answer.text
    if stream:
        chunks = [
            orjson.loads(line[6:])
            for line in answer.text.splitlines()
            if line.startswith("data: {")
        ]
        assert all("service_tier" not in chunk for chunk in chunks)
        usage = chunks[-1]["usage"]
    else:
        assert "service_tier" not in answer.json()
        usage = answer.json()["usage"]
    assert usage["extra_properties"] == {"google": {"traffic_type": traffic_type}}


async def test_a_model_without_its_publisher_is_invalid(
    http: httpx.AsyncClient, token: str
) -> None:
    answer = await http.post(
        CHAT_PATH, json={**CHAT_BODY, "model": "gemini-2.5-flash"}, headers=bearer(token)
    )
    assert "google/gemini-2.5-flash" in google_error(answer, 400, "INVALID_ARGUMENT")


# --- Faults ---


@pytest.mark.parametrize(
    ("status", "google_status"),
    [
        (429, "RESOURCE_EXHAUSTED"),
        (503, "UNAVAILABLE"),
        (500, "INTERNAL"),
        (403, "PERMISSION_DENIED"),
    ],
)
@pytest.mark.parametrize(("path", "body"), ROUTES)
async def test_a_fault_status_comes_in_googles_shape(
    http: httpx.AsyncClient,
    token: str,
    path: str,
    body: dict[str, Any],
    status: int,
    google_status: str,
) -> None:
    answer = await http.post(
        path, json=body, headers=bearer(token, **{"x-mock-fault": f"status={status}"})
    )
    google_error(answer, status, google_status)


async def test_claude_overloaded_keeps_anthropics_shape(
    http: httpx.AsyncClient, token: str
) -> None:
    # Vertex passes Claude's own 529 on as Anthropic wrote it.
    answer = await http.post(
        f"{CLAUDE_PATH}:rawPredict",
        json=CLAUDE_BODY,
        headers=bearer(token, **{"x-mock-fault": "status=529"}),
    )
    anthropic_error(answer, 529, "overloaded_error")


async def test_a_fault_is_checked_after_the_token(http: httpx.AsyncClient) -> None:
    answer = await http.post(CHAT_PATH, json=CHAT_BODY, headers={"x-mock-fault": "status=429"})
    google_error(answer, 401, "UNAUTHENTICATED")


async def test_a_malformed_fault_is_an_invalid_argument(
    http: httpx.AsyncClient, token: str
) -> None:
    answer = await http.post(
        CHAT_PATH, json=CHAT_BODY, headers=bearer(token, **{"x-mock-fault": "status=teapot"})
    )
    assert "x-mock-fault" in google_error(answer, 400, "INVALID_ARGUMENT")


async def test_a_claude_stream_fails_midway_as_anthropics_does(
    http: httpx.AsyncClient, token: str
) -> None:
    answer = await http.post(
        f"{CLAUDE_PATH}:streamRawPredict",
        json={**CLAUDE_BODY, "stream": True},
        headers=bearer(token, **{"x-mock-fault": "error_after=2"}),
    )
    assert answer.status_code == 200
    names = [line[7:] for line in answer.text.splitlines() if line.startswith("event: ")]
    assert names.count("content_block_delta") == 2
    assert names[-1] == "error"
    assert "message_stop" not in names


# --- The command line ---


def test_the_mock_llm_command_takes_the_gcp_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[MockOptions] = []

    def run(host: str, port: int, options: MockOptions | None = None) -> None:
        assert options is not None
        started.append(options)

    monkeypatch.setattr("extproc.mock_llm.run", run)
    args = build_parser().parse_args(
        [
            "mock-llm",
            "--gcp-project", "p-7",
            "--gcp-region", "europe-west4",
            "--gcp-service-account", "sa.json",
            "--gcp-token-lifetime", "120",
        ]
    )  # fmt: skip
    assert args.run(args) == 0

    [options] = started
    assert (options.gcp_project, options.gcp_region) == ("p-7", "europe-west4")
    assert options.gcp_service_account == "sa.json"
    assert options.gcp_token_lifetime_s == 120


def test_the_gcp_defaults_of_the_command_are_the_options_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[MockOptions] = []
    monkeypatch.setattr(
        "extproc.mock_llm.run", lambda host, port, options=None: started.append(options)
    )
    args = build_parser().parse_args(["mock-llm"])
    args.run(args)

    [options] = started
    defaults = MockOptions()
    assert options.gcp_project == defaults.gcp_project
    assert options.gcp_region == defaults.gcp_region
    assert options.gcp_service_account is None
    assert options.gcp_token_lifetime_s == defaults.gcp_token_lifetime_s


def test_a_negative_token_lifetime_is_refused() -> None:
    with pytest.raises(ValueError, match="gcp_token_lifetime_s"):
        create_app(MockOptions(gcp_token_lifetime_s=-1))
