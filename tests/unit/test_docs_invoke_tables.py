"""docs/providers.md's InvokeModel tables against the code that reserves a body's answer.

An operator sizing a token quota for a Bedrock family reads there which field of the
body bounds the answer and what the model generates when the body names none (the
reservation, and what a hard cap leaves alone). Both tables were written by hand beside
``ALLOWANCE_FIELDS`` and ``MODEL_DEFAULTS``: a family added to one and not the other
is a quota that reserves what the page does not say.
"""

from __future__ import annotations

import re
from pathlib import Path

from extproc.bedrock_invoke_bodies import ALLOWANCE_FIELDS, MODEL_DEFAULTS

PAGE = Path("docs/providers.md")


def table_rows(header: str) -> list[tuple[str, str]]:
    """(first cell, second cell) of each row of the table under ``header``."""
    text = PAGE.read_text(encoding="utf-8")
    lines = text.split(header, 1)[1].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.strip().startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append((cells[0], cells[1]))
    return rows


def model_ids(cell: str) -> list[str]:
    """The id prefixes a cell names: `meta.llama*` is `meta.llama`; a short `-lite` after
    `amazon.nova-micro` is `amazon.nova-lite`; a region profile (`us.deepseek...`) is no
    prefix of its own."""
    found: list[str] = []
    root = ""
    for name in re.findall(r"`([^`]+)`", cell):
        name = name.rstrip("*")
        if name.startswith("-"):
            found.append(root + name)
            continue
        if "." not in name or name.count(".") > 1 or name.endswith(":0"):
            continue  # a profile or a full id shown as an example
        root = name.split("-", 1)[0]
        found.append(name)
    return found


def test_the_defaults_table_is_model_defaults() -> None:
    documented = {
        prefix: int(value.replace(",", ""))
        for ids, value in table_rows("| model (ids) | generates by default |")
        for prefix in model_ids(ids)
    }
    assert documented == dict(MODEL_DEFAULTS)


def test_the_allowance_table_names_every_family_and_its_fields() -> None:
    documented: dict[str, set[str]] = {}
    for ids, fields in table_rows("| family (model ids) | allowance |"):
        named = set(re.findall(r"`([A-Za-z_.]+)`", fields))
        for prefix in model_ids(ids):
            documented[prefix] = named
    code = {prefix: {".".join(path) for path in paths} for prefix, paths in ALLOWANCE_FIELDS}
    assert set(documented) == set(code)
    for prefix, fields in code.items():
        assert fields <= documented[prefix], prefix
