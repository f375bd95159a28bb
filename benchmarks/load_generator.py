"""Drive one target with ``wrk`` and read its report: req/s, p50, p99, errors.

Every scenario gets the same request: ``POST /v1/chat/completions`` with an
843-byte OpenAI chat body (the size of DESIGN.md's reference measurements),
``content-type: application/json`` and the scenario's ``authorization`` (the
demo org key, or a JWT). The Lua script wrk needs is written into the run's
work directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks.envoy_configs import CHAT_PATH

MODEL = "gpt-4o-mini"
REQUEST_BODY_BYTES = 843
DEFAULT_AUTHORIZATION = "Bearer team1-key"  # an org key of config/gateway.yaml
WRK_TIMEOUT_S = 5
_FILLER = (
    "Summarise the quarterly report in three bullet points for the platform team, "
    "naming the services whose latency moved and by how much. "
)


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx_3xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors


def request_body() -> bytes:
    """An OpenAI chat request of exactly ``REQUEST_BODY_BYTES`` bytes."""
    messages = [
        {"role": "system", "content": "You are a concise assistant for an operations team."},
        {"role": "user", "content": ""},
    ]
    request = {"model": MODEL, "messages": messages, "max_tokens": 64, "temperature": 0.2}
    room = REQUEST_BODY_BYTES - len(json.dumps(request))
    messages[1]["content"] = (_FILLER * (room // len(_FILLER) + 1))[:room]
    body = json.dumps(request).encode()
    assert len(body) == REQUEST_BODY_BYTES, len(body)
    return body


def request_headers(authorization: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": authorization}


def write_script(
    directory: Path, authorization: str = DEFAULT_AUTHORIZATION, path: str = CHAT_PATH
) -> Path:
    """wrk's Lua script: the body is read from a file next to it, so no quoting issues."""
    directory.mkdir(parents=True, exist_ok=True)
    body_path = directory / "request.json"
    body_path.write_bytes(request_body())
    headers = "".join(
        f"wrk.headers[{json.dumps(name)}] = {json.dumps(value)}\n"
        for name, value in request_headers(authorization).items()
    )
    script = (
        'wrk.method = "POST"\n'
        f"wrk.path = {json.dumps(path)}\n"
        f"{headers}"
        f'local file = assert(io.open({json.dumps(str(body_path))}, "rb"))\n'
        'wrk.body = file:read("*a")\n'
        "file:close()\n"
    )
    script_path = directory / "chat.lua"
    script_path.write_text(script, encoding="utf-8")
    return script_path


def threads_for(connections: int) -> int:
    """One wrk thread for one connection, two otherwise: the machine has two cores."""
    return 1 if connections == 1 else 2


def run_wrk(base_url: str, script: Path, connections: int, duration_s: float) -> LoadResult:
    argv = [
        "wrk",
        "--latency",
        f"--threads={threads_for(connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        f"--script={script}",
        base_url + CHAT_PATH,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk exited with {done.returncode}: {done.stderr.strip()}")
    return parse_wrk(done.stdout)


def parse_wrk(report: str) -> LoadResult:
    """The figures of one ``wrk --latency`` report."""
    percentiles = {
        int(match[1]): _to_ms(float(match[2]), match[3])
        for match in re.finditer(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", report, re.M)
    }
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", report
    )
    return LoadResult(
        requests_per_s=float(_find(r"Requests/sec:\s+([\d.]+)", report)),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        requests=int(_find(r"(\d+) requests in", report)),
        non_2xx_3xx=int(_find(r"Non-2xx or 3xx responses: (\d+)", report, default="0")),
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    )


def check_one_request(
    base_url: str, authorization: str = DEFAULT_AUTHORIZATION, path: str = CHAT_PATH
) -> str | None:
    """Send the benchmark's request once; None if the answer is a 200 completion."""
    request = urllib.request.Request(
        base_url + path,
        data=request_body(),
        headers=request_headers(authorization),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}: {error.read()[:300]!r}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        return f"request failed: {error}"
    if answer.get("object") != "chat.completion" or "usage" not in answer:
        return f"not a chat.completion: {str(answer)[:300]}"
    return None


def check_guard_refuses(
    base_url: str, authorization: str = DEFAULT_AUTHORIZATION, path: str = CHAT_PATH
) -> str | None:
    """None if a prompt carrying an OpenAI-style secret is refused with an OpenAI error:
    proof that a row meant to include the regex guard really runs it."""
    secret = "sk-" + "A1b2C3d4" * 5
    body = {"model": MODEL, "messages": [{"role": "user", "content": f"my key is {secret}"}]}
    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers=request_headers(authorization),
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return f"the guard let a secret through: HTTP {response.status}"
    except urllib.error.HTTPError as error:
        answer = error.read()
        if 400 <= error.code < 500 and b'"error"' in answer:
            return None
        return f"the guard's refusal is not an OpenAI error: HTTP {error.code} {answer[:200]!r}"
    except (urllib.error.URLError, OSError) as error:
        return f"request failed: {error}"


def _find(pattern: str, text: str, default: str | None = None) -> str:
    match = re.search(pattern, text)
    if match:
        return match[1]
    if default is None:
        raise ValueError(f"wrk report without {pattern!r}:\n{text}")
    return default


def _to_ms(value: float, unit: str) -> float:
    return value * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}[unit]
