"""docs/architecture.md's layout against the package.

A contributor reads the layout to find where a request's work happens: a stage the
list leaves out (the failover check, the estimate of an answer cut short) is code
nobody looks for when a request is refused or charged there, and a package missing
from it is a place nobody knows to look. So the stage chain must be the processor's,
in its order, and every package of ``extproc`` must have its line.
"""

from __future__ import annotations

import re
from pathlib import Path

from extproc.stages.pipeline import default_stages

ARCHITECTURE = Path("docs/architecture.md")
# The agent routes' stages: the layout names them by their package, agents/.
AGENT_STAGES = {"AgentRouteStage", "AgentCallStage"}


def _layout() -> str:
    text = ARCHITECTURE.read_text(encoding="utf-8").split("## Layout")[1]
    return text.split("```")[1]


def _words(name: str) -> str:
    """A stage's name as the layout spells it: `ChatRequestStage` and `chat_request`
    are both "chat request"; a plural ("credentials", "stored responses") is the
    class's singular."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.removesuffix("Stage")).replace("_", " ")
    return " ".join(word.lower().removesuffix("s") for word in spaced.split())


def documented_stages() -> list[str]:
    block = re.search(r"^  stages/(.*?)\(extproc/stages/pipeline\.py", _layout(), re.S | re.M)
    assert block is not None
    chain = re.sub(r"\([^)]*\)", "", block.group(1))
    return [_words(name) for name in re.split(r"\s*->\s*", " ".join(chain.split()))]


def test_the_layouts_stage_chain_is_the_processors_in_its_order() -> None:
    stages = [type(stage).__name__ for stage in default_stages()]
    assert documented_stages() == [_words(name) for name in stages if name not in AGENT_STAGES]


def test_the_layout_has_a_line_for_every_package() -> None:
    packages = {path.parent.name for path in Path("extproc").glob("*/__init__.py")}
    listed = set(re.findall(r"^  ([a-z_]+)/", _layout(), re.M))
    assert sorted(packages - listed) == []
