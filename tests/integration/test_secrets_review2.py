"""A store password written raw into ``store.url``: what the operator's terminal shows.

Generated passwords hold '/' (base64) and now and then '#' or '?'. Written raw into
``REDIS_URL=redis://:<password>@host:6379``, such a character ends the URL's authority
inside the password, whose start a URL parser then reads as a host and a port. The
gateway must refuse to start with a config error that says what is wrong and how to
write it, and quote no part of the password: not a traceback ending in redis-py's
"Port could not be cast to integer value as '<start of the password>'". The same for
a usage report read from that store. Real processes, as an operator runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from extproc.devstack import DEFAULT_CONFIG, LocalStack
from extproc.mock_llm.vertex_auth import write_service_account
from extproc.store.embedded import free_port
from tests.integration.conftest import (
    default_config,
    envoy_access_log,
    metric,
    readable_places,
    running_stack,
    scrape,
    wait_for,
    write_config,
)
from tests.integration.mock_vertex import vertex_provider, vertex_requests
from tests.integration.otlp_receiver import OtlpReceiver
from tests.integration.test_secrets_review import DebugStack

PASSWORD_HEAD = "Ab3Q"
PASSWORD_TAIL = "Xy9Z"


def password(splitter: str) -> str:
    return f"{PASSWORD_HEAD}{splitter}mid{PASSWORD_TAIL}"


def quotes_the_password(text: str) -> bool:
    return PASSWORD_HEAD in text or PASSWORD_TAIL in text or "mid" in text


def environment(tmp_path: Path, store_url: str) -> dict[str, str]:
    """What the default config reads, on free ports, with ``store_url`` as REDIS_URL."""
    return {
        **os.environ,
        "REDIS_URL": store_url,
        "MOCK_LLM_API_KEY": "mock-provider-key-0001",
        "TEAM1_API_KEY": "team1-key-000000001",
        "TEAM2_API_KEY": "team2-key-000000002",
        "AIGW_ADMIN_TOKEN": "admin-token-00000001",
        "EXTPROC_GRPC_ADDRESS": f"127.0.0.1:{free_port()}",
        "EXTPROC_HTTP_ADDRESS": f"127.0.0.1:{free_port()}",
        "EXTPROC_MANAGEMENT_ADDRESS": f"127.0.0.1:{free_port()}",
        "EXTPROC_DATA_DIR": str(tmp_path / "valkey"),
        "EXTPROC_SPOOL_DIR": str(tmp_path / "spool"),
    }


def run(tmp_path: Path, store_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "extproc", *args, "--config", str(DEFAULT_CONFIG.resolve())],
        env=environment(tmp_path, store_url), cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("splitter", ["/", "#", "?"])
@pytest.mark.parametrize(
    "template",
    [
        "redis://:{pw}@127.0.0.1:6379/0",
        "redis+cluster://default:{pw}@127.0.0.1:7000",
        "redis+sentinel://:{pw}@127.0.0.1:26379/mymaster",
    ],
    ids=["redis", "cluster", "sentinel"],
)
def test_serve_refuses_a_raw_password_in_the_store_url_without_quoting_it(
    tmp_path: Path, template: str, splitter: str
) -> None:
    done = run(tmp_path, template.format(pw=password(splitter)), "serve")
    shown = done.stdout + done.stderr
    assert done.returncode == 2, shown
    assert "invalid config" in shown and "store.url:" in shown
    assert "percent-encode" in shown
    assert "Traceback" not in shown
    assert not quotes_the_password(shown), shown


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_workers_refuses_it_too(tmp_path: Path, workers: str) -> None:
    """The supervisor of several workers opens the store itself, before any worker."""
    url = f"redis://:{password('/')}@127.0.0.1:6379/0"
    done = run(tmp_path, url, "serve", "--workers", workers)
    shown = done.stdout + done.stderr
    assert done.returncode == 2, shown
    assert "store.url:" in shown and "Traceback" not in shown
    assert not quotes_the_password(shown), shown


def test_a_usage_report_from_that_store_does_not_quote_it(tmp_path: Path) -> None:
    url = f"redis://:{password('/')}@127.0.0.1:6379/0"
    done = subprocess.run(
        [sys.executable, "-m", "extproc", "usage", "report", "--config",
         str(DEFAULT_CONFIG.resolve()), "--by", "api_key"],
        env=environment(tmp_path, url), cwd=tmp_path, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    shown = done.stdout + done.stderr
    assert done.returncode != 0, shown
    assert "store.url" in shown and "Traceback" not in shown
    assert not quotes_the_password(shown), shown


# --- Vertex AI and Gemini's API: the gateway's Google credentials ---------------------

# The client's key, as Google's SDKs send it (x-goog-api-key) and as a curl example would
# (?key=): its first and last four characters are found nowhere else.
GOOGLE_CLIENT_KEY = "Rk5mGOOGLEclient-team1-71c2Hq8w"


@pytest.fixture(scope="module")
def vertex_stack(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpReceiver
) -> Iterator[LocalStack]:
    """A stack at DEBUG with the mock's Vertex AI, Gemini's API on the SDK's path, spans
    exported to a receiver and the request log to a file: every place a leak would show."""
    workdir = tmp_path_factory.mktemp("secrets-vertex")
    raw = default_config()
    raw["providers"].append(vertex_provider())
    raw["models"].append(
        {"name": "gemini-flash", "provider": "vertex", "upstream_model": "google/gemini-2.5-flash"}
    )
    raw["routes"].insert(
        0, {"name": "gemini", "path_prefix": "/v1beta/models", "api": "gemini_generate_content"}
    )
    raw["telemetry"]["tracing"]["flush_interval_ms"] = 200
    env = {
        "TEAM1_API_KEY": GOOGLE_CLIENT_KEY,
        "AIGW_TRACING_ENABLED": "true",
        "AIGW_OTLP_ENDPOINT": collector.endpoint,
        "AIGW_LOG_FILE": str(workdir / "requests.log"),
    }
    config = write_config(workdir, raw)
    with running_stack(workdir, config, extra_env=env, stack_type=DebugStack) as running:
        yield running


def google_secrets(stack: LocalStack) -> dict[str, str]:
    """The service account key's private parts, by what they are."""
    key = orjson.loads(stack.gcp_credentials.read_bytes())
    pem_body = "".join(key["private_key"].splitlines()[1:-1])
    return {
        f"private key of {key['private_key_id'][:4]}": pem_body[40:80],
        f"private key id {key['private_key_id'][:4]}": key["private_key_id"],
    }


def test_no_google_credential_is_in_any_log_span_or_answer(
    vertex_stack: LocalStack, collector: OtlpReceiver
) -> None:
    stack = vertex_stack
    shown: list[str] = []
    looked_for = {
        piece: "the client's key"
        for piece in (GOOGLE_CLIENT_KEY, GOOGLE_CLIENT_KEY[:4], GOOGLE_CLIENT_KEY[-4:])
    }
    looked_for.update({piece: what for what, piece in google_secrets(stack).items()})
    gemini = f"{stack.base_url}/v1beta/models/gemini-flash"
    contents = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    by_header = {"x-goog-api-key": GOOGLE_CLIENT_KEY}
    answers = [
        httpx.post(f"{gemini}:generateContent", json=contents, headers=by_header, timeout=30),
        httpx.post(
            f"{gemini}:streamGenerateContent?alt=sse", json=contents, headers=by_header,
            timeout=30,
        ),
        httpx.post(f"{gemini}:countTokens", json=contents, headers=by_header, timeout=30),
        httpx.post(
            f"{stack.base_url}/v1/chat/completions", headers=by_header, timeout=30,
            json={"model": "gemini-flash", "messages": [{"role": "user", "content": "hi"}]},
        ),
        # Vertex refusing the gateway's token, in each client API.
        httpx.post(
            f"{gemini}:generateContent", json=contents, timeout=30,
            headers={**by_header, "x-mock-fault": "status=401"},
        ),
        httpx.post(
            f"{stack.base_url}/v1/chat/completions", timeout=30,
            headers={**by_header, "x-mock-fault": "status=401"},
            json={"model": "gemini-flash", "messages": [{"role": "user", "content": "hi"}]},
        ),
        # The key where curl examples put it: refused, never passed on.
        httpx.post(f"{gemini}:generateContent?key={GOOGLE_CLIENT_KEY}", json=contents, timeout=30),
    ]  # fmt: skip
    assert [answer.status_code for answer in answers[:4]] == [200] * 4, answers[0].text
    assert answers[-1].status_code == 400
    for answer in answers:
        shown += [answer.text, orjson.dumps(dict(answer.headers)).decode()]
    # A rotated key (a reload mints a new token), then a key the token endpoint refuses.
    secrets_before = google_secrets(stack)
    write_service_account(stack.gcp_credentials, token_uri=f"{stack.mock_url}/token")
    looked_for.update({piece: what for what, piece in google_secrets(stack).items()})
    assert wait_for(lambda: reloads(stack, "success") >= 1, 45)
    assert httpx.post(
        f"{gemini}:generateContent", json=contents, headers=by_header, timeout=30
    ).is_success
    write_service_account(stack.gcp_credentials, token_uri=f"{stack.mock_url}/refuse-token")
    looked_for.update({piece: what for what, piece in google_secrets(stack).items()})
    assert wait_for(lambda: reloads(stack, "failure") >= 1, 45)
    assert secrets_before  # the first key's parts are looked for too
    # Every access token the gateway sent Vertex, whole and by its ends.
    tokens = {
        request["headers"]["authorization"].removeprefix("Bearer ")
        for request in vertex_requests(stack)
    }
    assert len(tokens) >= 2  # minted at start and at the reload
    for token in tokens:
        for piece in (token, token[:8], token[-8:]):
            looked_for[piece] = "an access token"
    last = answers[-1].headers["x-request-id"]
    assert wait_for(lambda: last in envoy_access_log(stack), 30)
    assert wait_for(lambda: any(last in repr(span) for span in collector.spans), 30)
    places = readable_places(stack, collector, shown)
    assert "cannot obtain a Google Cloud access token" in places["gateway stderr"]  # the control
    found = sorted(
        {
            (place, f"{piece[:3]}... ({what})")
            for place, text in places.items()
            for piece, what in looked_for.items()
            if piece in text
        }
    )
    assert found == []


def reloads(stack: LocalStack, result: str) -> float:
    return metric(scrape(stack.metrics_url), "aigw_config_reloads_total", result=result)
