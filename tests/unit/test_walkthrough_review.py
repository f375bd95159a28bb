"""What `make run` prints, read as the operator who just started it reads it."""

from __future__ import annotations

import itertools
import re

from extproc import devstack

# A line break the text lost: the indentation of the next line left inside this one.
SWALLOWED_LINE_BREAK = re.compile(r"\S {2,}-[Hd] ")


def printed_examples() -> str:
    return devstack._EXAMPLES.format(
        base="http://127.0.0.1:10000",
        metrics="http://127.0.0.1:9464/metrics",
        workdir=".run",
        provider="mock (http://127.0.0.1:8089)",
        key_id="my-team-0a1b2c",
    )


def test_every_continued_example_line_keeps_its_backslash_and_line_break() -> None:
    # Before: four curl examples (embeddings, Messages on Bedrock, Converse, InvokeModel)
    # printed as one long line each, their `-H`/`-d` options strung along after runs of
    # spaces, while the others printed as the multi-line commands they are.
    joined = [line for line in printed_examples().splitlines() if SWALLOWED_LINE_BREAK.search(line)]
    assert joined == []


def test_each_example_option_line_follows_a_continued_line() -> None:
    lines = printed_examples().splitlines()
    for before, line in itertools.pairwise(lines):
        if line.lstrip().startswith(("-H ", "-d ")):
            assert before.endswith("\\"), f"{line.strip()!r} follows {before.strip()!r}"


def test_ports_left_unset_keep_their_defaults_and_a_bad_one_is_named() -> None:
    moved = devstack.Ports.from_environment(
        {"ENVOY_LISTENER_PORT": "18000", "MOCK_LLM_ADDRESS": "127.0.0.1:18089", "X": "1"}
    )
    assert (moved.envoy, moved.mock) == (18000, 18089)
    assert moved.http == devstack.Ports().http
    try:
        devstack.Ports.from_environment({"EXTPROC_HTTP_ADDRESS": "127.0.0.1:http"})
    except ValueError as refused:
        assert "EXTPROC_HTTP_ADDRESS" in str(refused)
    else:
        raise AssertionError("a port that is no number was taken")
