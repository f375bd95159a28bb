"""The reference docs against the code: the request log's JSON Schema and the log lines
the docs show, and the metrics reference, checked against what the gateway writes and
registers. Operators build pipelines, dashboards and alerts from these pages, so a field
or a label the page gets wrong breaks them as surely as a code change would."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator, FormatChecker

from extproc.agents import call
from extproc.config import GatewayConfig
from extproc.envoy_bootstrap import render_bootstrap
from extproc.headers import METADATA_NAMESPACE
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import (
    processor_for,
    request_body,
    request_headers,
    response_body,
    response_headers,
    run_stream,
)
from tests.exported_metrics import code_metrics
from tests.unit.conftest import MemoryLog
from tests.unit.test_agents import TEAM2, with_agents
from tests.unit.test_envoy_bootstrap import gateway, hcm
from tests.unit.test_model_credentials import OPENAI_KEY, refused_before_the_model
from tests.unit.test_request_log import AUTH, CHAT, COMPLETION, chat, with_log

SCHEMA_DOC = orjson.loads(Path("docs/log-schema.json").read_bytes())
SCHEMA = Draft202012Validator(SCHEMA_DOC, format_checker=FormatChecker())
DOCS = [*sorted(Path("docs").glob("*.md")), Path("README.md")]
# Fields only some lines carry: the text (include_content) and agent routes' call.
CONTENT_FIELDS = {"prompt", "completion", "content_truncated"}
AGENT_FIELD = "agent"


async def completed_line(config: GatewayConfig, services: Services) -> dict[str, Any]:
    """The line of a chat completion answered whole, as the gateway writes it."""
    processor = processor_for(config, services)
    await run_stream(
        processor,
        [
            request_headers(CHAT, headers=AUTH),
            request_body(chat()),
            response_headers(),
            response_body(COMPLETION),
        ],
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


async def denied_tool_call_line(config: GatewayConfig, services: Services) -> dict[str, Any]:
    """The line of an MCP tool call an access rule refused."""
    processor = processor_for(with_agents(config), services)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "deploy_prod", "arguments": {}}}  # fmt: skip
    await run_stream(
        processor, [request_headers("/mcp", headers=TEAM2), request_body(orjson.dumps(call))]
    )
    [line] = services.access_log.lines()  # type: ignore[attr-defined]
    return line  # type: ignore[no-any-return]


def fresh() -> Services:
    """Services of their own, for a second request whose line is read alone."""
    return Services(metrics=GatewayMetrics(), access_log=MemoryLog())


def schema_errors(line: dict[str, Any]) -> list[str]:
    return [error.message for error in SCHEMA.iter_errors(line)]


# --- docs/log-schema.json -------------------------------------------------------------


async def test_every_field_every_line_carries_is_required_by_the_schema(
    config: GatewayConfig, services: Services
) -> None:
    """A consumer that validates lines strictly relies on `required`: a field the code
    writes on every line but the schema leaves optional may be dropped by a pipeline
    without anyone noticing, and a required one the code may leave out rejects lines."""
    line = await completed_line(config, services)
    assert schema_errors(line) == []
    assert set(SCHEMA_DOC["required"]) == set(line)


async def test_the_schema_describes_exactly_the_fields_the_code_writes(
    config: GatewayConfig, services: Services
) -> None:
    """Every field of a line with content and of an agent line is a property of the
    schema (which forbids others), and no property is one the code never writes."""
    plain = await completed_line(config, services)
    with_content = await completed_line(with_log(config, include_content=True), fresh())
    agent = await denied_tool_call_line(config, fresh())
    for line in (with_content, agent):
        assert schema_errors(line) == []
    assert set(with_content) - set(plain) == CONTENT_FIELDS
    assert set(agent) - set(plain) == {AGENT_FIELD}
    assert set(SCHEMA_DOC["properties"]) == set(plain) | CONTENT_FIELDS | {AGENT_FIELD}
    agent_schema = SCHEMA_DOC["properties"][AGENT_FIELD]
    assert set(agent_schema["properties"]) == set(agent_schema["required"]) == set(agent["agent"])


def test_the_schema_allows_every_status_an_agent_call_can_end_with() -> None:
    """A line whose ``agent.status`` the schema does not list fails strict validation in
    the pipeline, and that line is the one an operator looks for (a refusal, an outage)."""
    statuses = {
        value
        for name, value in vars(call).items()
        if name.isupper() and isinstance(value, str) and value.islower()
    }
    agent_schema = SCHEMA_DOC["properties"][AGENT_FIELD]
    assert statuses == set(agent_schema["properties"]["status"]["enum"])


async def test_numbers_the_code_always_writes_are_never_null_in_the_schema(
    config: GatewayConfig, services: Services
) -> None:
    """A refused request's line still has its counts and its cost: 0, never null, so a
    consumer summing them needs no null handling. The schema says so."""
    await run_stream(
        processor_for(config, services),
        [request_headers(CHAT, headers={"authorization": "Bearer wrong-key"})],
    )
    [refused] = services.access_log.lines()  # type: ignore[attr-defined]
    assert schema_errors(refused) == []
    numbers = [name for name, value in refused.items() if isinstance(value, int | float)]
    assert "cost_usd" in numbers and "prompt_tokens" in numbers
    for name in numbers:
        declared = SCHEMA_DOC["properties"][name].get("type", [])
        assert "null" not in declared, f"{name} is never null, the schema allows null"


async def test_the_path_fields_reference_says_a_credential_in_it_reads_redacted() -> None:
    """A pipeline that takes the model from `/openai/<model>` is written from the field's
    description: since a key sent in the path is logged `[redacted]`, that word is a value
    such a parser meets, and both references must say so."""
    status, [line], _ = await refused_before_the_model(
        f"/openai/{OPENAI_KEY}", {"authorization": "Bearer gpt-4o-mini"}
    )
    assert (status, line["path"]) == (401, "/openai/[redacted]")
    assert schema_errors(line) == []
    assert "[redacted]" in SCHEMA_DOC["properties"]["path"]["description"]
    assert "`/openai/[redacted]`" in field_reference_row("`method`, `path`")


def field_reference_row(fields: str) -> str:
    """The row of docs/logging.md's field reference that starts with ``fields``."""
    page = Path("docs/logging.md").read_text(encoding="utf-8")
    [row] = [row for row in page.splitlines() if row.startswith(f"| {fields} |")]
    return row


# --- log lines shown in the docs ------------------------------------------------------

_EXAMPLE = re.compile(r'^\{"schema_version".*\}$', re.MULTILINE)


def doc_log_lines() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in DOCS:
        for text in _EXAMPLE.findall(path.read_text(encoding="utf-8")):
            found.append((path.name, orjson.loads(text)))
    return found


def test_the_docs_show_log_lines() -> None:
    pages = {page for page, _ in doc_log_lines()}
    assert {"logging.md", "agents.md"} <= pages


@pytest.mark.parametrize(("page", "line"), doc_log_lines())
async def test_a_log_line_a_doc_shows_is_one_the_code_writes(
    page: str, line: dict[str, Any], config: GatewayConfig, services: Services
) -> None:
    """Same fields in the same order as a real line (people copy these into parsers and
    test fixtures), and valid against the schema."""
    real = await completed_line(config, services)
    expected = [*real, AGENT_FIELD] if AGENT_FIELD in line else list(real)
    assert list(line) == expected, page
    assert schema_errors(line) == [], page


# --- docs/metrics.md and docs/agents.md#metrics ------------------------------------------

_ROW = re.compile(
    r"^\| `(?P<name>[a-z0-9_:]+)` \| (?P<type>counter|gauge|histogram) \| (?P<labels>[^|]*) \|",
    re.MULTILINE,
)
_INLINE = re.compile(r"`(?P<name>aigw_[a-z0-9_]+)\{(?P<labels>[a-z_,]+)\}`")


def documented_metrics(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, labels) of every row of the page's metric tables ("same": the
    labels of the row above; "none": no label)."""
    found: dict[str, tuple[str, frozenset[str]]] = {}
    labels: frozenset[str] = frozenset()
    for row in _ROW.finditer(path.read_text(encoding="utf-8").replace("\r", "")):
        text = row.group("labels").strip()
        if text == "none":
            labels = frozenset()
        elif text != "same":
            labels = frozenset(re.findall(r"`([a-z_]+)`", text))
        found[row.group("name")] = (row.group("type"), labels)
    return found


def test_the_metrics_reference_lists_every_metric_with_its_type_and_labels() -> None:
    documented = documented_metrics(Path("docs/metrics.md"))
    agents = documented_metrics(Path("docs/agents.md"))
    # agents.md repeats aigw_rate_limited_total: both pages must say the same.
    for name in documented.keys() & agents.keys():
        assert documented[name] == agents[name], name
    assert {**documented, **agents} == code_metrics()


def test_the_metrics_references_short_list_of_agent_metrics_matches_the_code() -> None:
    section = Path("docs/metrics.md").read_text(encoding="utf-8").split("## Agent traffic")[1]
    listed = {
        found.group("name"): frozenset(found.group("labels").split(","))
        for found in _INLINE.finditer(section.split("\n## ")[0])
    }
    exported = code_metrics()
    assert listed
    for name, labels in listed.items():
        suffixed = name if name in exported else name + "_total"
        assert exported[suffixed][1] == labels, name


def label_sources_table() -> set[str]:
    """The labels of docs/metrics.md's table "Where each label's values come from"."""
    section = Path("docs/metrics.md").read_text(encoding="utf-8").split("Where each label")[1]
    rows = [line for line in section.split("\n\n")[1].splitlines() if line.startswith("| `")]
    return {label for row in rows for label in re.findall(r"`([a-z_]+)`", row.split("|")[1])}


def test_the_label_sources_table_covers_every_label_the_gateway_exports() -> None:
    """Whoever sizes Prometheus or reviews what a label may hold (a client's string, a
    config name, a fixed word) reads that table: the agent metrics' `server`, `tool`,
    `agent` and `state` and the quota gauges' `subject` and `counter` were missing, so
    nothing said that `tool` is the client's own string, within the label budget, and
    shown as `[redacted]` when it holds a credential."""
    exported = {label for _, labels in code_metrics().values() for label in labels}
    assert label_sources_table() == exported


# --- docs/logging.md#envoys-access-log -----------------------------------------------


def test_the_access_log_fields_the_gateway_hands_envoy_are_the_ones_listed() -> None:
    """The page lists the `io.aigw` metadata Envoy's access log line carries; a shipper's
    parser is written from that list, so a field the bootstrap adds or drops without
    the page is one the pipeline silently loses or waits for in vain."""
    section = Path("docs/logging.md").read_text(encoding="utf-8").split("## Envoy's access log")[1]
    listed = re.search(rf"in the `{METADATA_NAMESPACE}` namespace \(([^)]*)\)", section)
    assert listed is not None
    manager = hcm(render_bootstrap(gateway(envoy={"access_log": True})))
    fields = manager["access_log"][0]["typed_config"]["log_format"]["json_format"]
    from_metadata = {
        name
        for name, value in fields.items()
        if value == f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:{name})%"
    }
    assert set(re.findall(r"`([a-z_]+)`", listed.group(1))) == from_metadata
