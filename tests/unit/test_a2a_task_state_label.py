"""The ``state`` label of ``aigw_a2a_tasks_total`` holds A2A's task states, nothing else.

An agent may name states A2A does not define (a typo, a state of its own, a new one per
task). Each became a series of its own under the label's budget
(``telemetry.metrics.max_label_values``), and once that was spent every state not seen
yet went to ``other``: after one agent's made-up states, any agent's first ``failed``
task was counted as ``other``, and the failed-task alert (``state="failed"``) saw
nothing. Now a state A2A does not define is counted as ``other`` (the log line keeps its
name), and A2A's own are never folded.
"""

from __future__ import annotations

import orjson

from extproc.config import GatewayConfig
from extproc.runtime import Services
from extproc.telemetry.metrics import GatewayMetrics
from extproc.testing import response_body, response_headers
from tests.unit.conftest import MemoryLog
from tests.unit.test_agent_route_edges import a2a_post, log_line
from tests.unit.test_mcp_gaps import A2A_MESSAGE

JSON = {"content-type": "application/json"}


async def send(config: GatewayConfig, services: Services, state: str) -> None:
    request = {"jsonrpc": "2.0", "id": "r", "method": "SendMessage", "params": A2A_MESSAGE}
    task = {"id": "t", "contextId": "c", "status": {"state": state}}
    answer = orjson.dumps({"jsonrpc": "2.0", "id": "r", "result": {"task": task}})
    await a2a_post(
        config, services, orjson.dumps(request), response_headers(200, JSON),
        response_body(answer),
    )  # fmt: skip


def tasks_by_state(services: Services) -> dict[str, float]:
    return {
        sample.labels["state"]: sample.value
        for family in services.metrics.registry.collect()
        for sample in family.samples
        if sample.name == "aigw_a2a_tasks_total"
    }


async def test_made_up_states_never_push_a_failed_task_into_other(config: GatewayConfig) -> None:
    metrics = GatewayMetrics(max_label_values=3)
    for state in ("pondering", "mulling", "musing", "dreaming"):
        await send(config, Services(metrics=metrics, access_log=MemoryLog()), state)
    services = Services(metrics=metrics, access_log=MemoryLog())
    await send(config, services, "TASK_STATE_FAILED")
    assert tasks_by_state(services) == {"other": 4.0, "failed": 1.0}


async def test_the_log_line_keeps_the_state_the_agent_named(config: GatewayConfig) -> None:
    services = Services(metrics=GatewayMetrics(), access_log=MemoryLog())
    await send(config, services, "pondering")
    assert log_line(services)["agent"]["task_state"] == "pondering"
    assert tasks_by_state(services) == {"other": 1.0}
