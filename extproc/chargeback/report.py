"""Usage reports: rollup rows as records, and those records as a table, CSV or JSON.

One record per group of the ``--by`` dimensions, with the summed measures, the
exact cost and the latency p50/p95 of the requests in the group, then what explains
the cost beyond plain tokens: the prompt-cache writes (their 1-hour part apart), each
server tool's requests, the audio parts of the token counts (billed at the audio
prices), the image parts of the completion and of the prompt (billed at the image
prices), the pictures of the Responses API's image generation tool (billed at the image
model's prices) and the searches a rerank's provider billed instead of tokens (Cohere's
search units, billed per search). The same
records feed the CLI (``extproc usage report|export``) and the management API, so both
say the same thing.

JSON always carries those last counts (``server_tool_requests`` as an object by tool,
the audio counts after it, then the image counts, then the search units). CSV and the
table flatten the tools into one ``server_tool_requests:<tool>`` column per tool the
period used, after every other column; CSV always has the cache-write, audio, image and
search-unit columns, the table only
those the period has. Each is added after the earlier columns, and the tools, whose number
changes from month to month, stay last, so a billing import reading CSV by position
finds every fixed column where it was.

Money leaves as exact decimal text (``"0.000123"``), never a binary float: a
billing system adding the rows gets the total to the picodollar.

JSON carries every value exactly as the gateway saw it; CSV too, but for one mark: a
spreadsheet opening the file runs a cell starting with ``=``, ``+``, ``-`` or ``@`` as a
formula (Google Sheets' ``IMPORTXML`` sends the sheet's other cells to any URL), and
a client chooses its model's name, so a dimension value starting so, or with a tab, a
carriage return or ``'``, is written after a ``'`` (``_spreadsheet_text``), which
spreadsheets read as "text follows" and a program drops to get the value back; so is
one starting so after spaces a spreadsheet trims, or with a look-alike it may
normalise (a full-width ``=``, a minus sign: ``_starts_like_a_formula``). A
dimension the requests had no value for (no user, no group) is ``(none)`` in CSV,
``-`` in the table and null in JSON, never a blank cell. A mark
at the start is not enough (OWASP's cheat sheet says so): a spreadsheet in a locale whose
list separator is ``;`` (most of continental Europe) opens a ``.csv`` splitting its lines
at ``;``, and some import dialogs split at tabs too, so ``claude-x;=cmd|...;`` left
unquoted began a cell with ``=`` in the middle of the value. A cell holding either is
quoted as one holding a comma is (``_csv_cell``), and every spreadsheet keeps a quoted
cell whole.

The table goes to a terminal, where a value's control characters would act: a model name
a client chose, or a JWT claim, holding a line break or an escape sequence could split a
row, print a line that reads as another team's or as the TOTAL, or erase a row from the
screen. The table shows those characters escaped (``_visible``), and a rule of dashes
above the TOTAL line, so that a row named ``TOTAL`` reads as a row.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import orjson

from extproc.chargeback.period import Period
from extproc.chargeback.pricing import usd_text
from extproc.store.usage import (
    AUDIO,
    DIMENSIONS,
    IMAGE,
    IMAGE_GENERATION,
    IMAGE_INPUT,
    SEARCH,
    TOOL_MEASURE,
    UnreadableHour,
    UsageRead,
    UsageRow,
)

# `--by api_key,user,group` reads better than the stored dimension names.
DIMENSION_ALIASES = {"api_key": "api_key_id", "user": "user_id", "group": "group_id"}
_SHORT_NAMES = {stored: short for short, stored in DIMENSION_ALIASES.items()}
COUNTS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "total_tokens",
    "unpriced_requests",
)
COLUMNS = (*COUNTS, "cost_usd", "latency_p50_ms", "latency_p95_ms")
# After COLUMNS in CSV and the table (see the module's docstring).
CACHE_WRITE_COUNTS = ("cache_write_tokens", "cache_write_1h_tokens")
# The rollup's own names for them, which are the log line's too.
AUDIO_COUNTS = AUDIO
# After the audio counts, as added later: the image part of completion_tokens.
# After it, as added later still: the image part of prompt_tokens, then the image
# generation tool's counts (parts of prompt_tokens and completion_tokens).
IMAGE_COUNTS = (*IMAGE, *IMAGE_INPUT, *IMAGE_GENERATION)
# After the image counts, as added later still: the searches a rerank's provider billed
# (Cohere's search units), which no token count holds.
SEARCH_COUNTS = SEARCH
# Summed by ``totals`` besides the latency buckets and the server tools.
_SUMMED = (
    *COUNTS[:4],
    "unpriced_requests",
    "cost_picousd",
    *CACHE_WRITE_COUNTS,
    *AUDIO_COUNTS,
    *IMAGE_COUNTS,
    *SEARCH_COUNTS,
)


# What a terminal acts on rather than prints: C0 and C1 controls and DEL (line breaks,
# escape sequences), the Unicode line and paragraph separators, and the bidirectional
# controls, which reorder the characters shown after them. Not the other format
# characters (the joiner inside an emoji), which only change how a glyph is drawn.
_ACTING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(found: re.Match[str]) -> str:
    char = found.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _visible(text: str) -> str:
    """``text`` as the table prints it: its control characters written as Python writes
    them in a string (``\\n``, ``\\x1b``, ``\\u202e``), so that each shows, and does
    nothing, in the terminal."""
    return _ACTING.sub(_escaped, text)


# The first characters that make a spreadsheet read a cell as a formula (OWASP's list), and
# the mark itself, so that dropping one leading mark always gives the value back.
_FORMULA_STARTS = frozenset("=+-@\t\r'")
# Categories of characters a spreadsheet passes over before a formula's first character
# (spaces, U+3000 among them; zero-width and other format characters; controls): LibreOffice
# and Excel trim " =1+1" on import and run it.
_SKIPPED_CATEGORIES = frozenset({"Zs", "Cf", "Cc"})
# Categories whose characters are look-alikes of "=", "+" and "-" (U+FF1D, U+2212, U+FE63...)
# that a spreadsheet may normalise to them; marking every math symbol and dash costs a
# value nothing a program cannot drop.
_FORMULA_LIKE_CATEGORIES = frozenset({"Sm", "Pd"})
# How a CSV and the table write a dimension a request had no value for (no user, no
# group); JSON writes null. A value that is this word is marked, so it never reads as none.
NO_VALUE = "(none)"


def _starts_like_a_formula(value: str) -> bool:
    """Whether a spreadsheet could run ``value`` as a formula: its first character, after
    any it passes over, is one of ``_FORMULA_STARTS`` or a look-alike of one (the same
    after NFKC, as the full-width U+FF1D and U+FF20 are, or a math symbol or a dash)."""
    for char in value:
        if char in _FORMULA_STARTS:
            return True
        if char.isspace() or unicodedata.category(char) in _SKIPPED_CATEGORIES:
            continue
        if unicodedata.normalize("NFKC", char)[:1] in _FORMULA_STARTS:
            return True
        return unicodedata.category(char) in _FORMULA_LIKE_CATEGORIES
    return False


def _spreadsheet_text(value: str | None) -> str:
    """A dimension's value as a CSV cell: ``NO_VALUE`` for none; after a ``'`` when a
    spreadsheet would run it, or when it is the word for none."""
    if value is None:
        return NO_VALUE
    return "'" + value if value == NO_VALUE or _starts_like_a_formula(value) else value


# RFC 4180 quotes a cell holding the comma, the quote or a line break; the ``;`` and the
# tab are the separators a spreadsheet may split at instead (see the module's docstring).
_NEEDS_QUOTES = re.compile('[,"\r\n;\t]')


def _csv_cell(value: object) -> str:
    """One CSV cell: quoted (its quotes doubled) when it holds a separator of any reader."""
    text = "" if value is None else str(value)
    if _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + text.replace('"', '""') + '"'


def _csv(headers: list[str], records: list[dict[str, Any]], by: tuple[str, ...]) -> str:
    """The CSV of ``records``, RFC 4180 with CRLF line ends: the csv module quotes a ``;``
    or a tab only when it is the delimiter, so the cells are written here."""
    lines = [headers]
    for found in records:
        cells = dict(found)
        for name in by:
            cells[name] = _spreadsheet_text(cells[name])
        lines.append([cells[name] for name in headers])
    return "".join(",".join(map(_csv_cell, line)) + "\r\n" for line in lines)


def dimensions(by: str) -> tuple[str, ...]:
    """``--by`` as stored dimension names, in the order given, without repeats; in any
    case (``Model``); ValueError naming an unknown one and the names ``--by`` takes,
    before the store is asked."""
    names: list[str] = []
    for part in by.split(","):
        given = part.strip().lower()
        name = DIMENSION_ALIASES.get(given, given)
        if name and name not in DIMENSIONS:
            choices = ", ".join(_SHORT_NAMES.get(known, known) for known in DIMENSIONS)
            raise ValueError(f"unknown dimension {part.strip()!r}; choose from {choices}")
        if name and name not in names:
            names.append(name)
    return tuple(names)


def _latency(row: UsageRow, quantile: float) -> float | None:
    found = row.latency_ms(quantile)
    return None if found is None else round(found, 1)


def record(row: UsageRow) -> dict[str, Any]:
    """One report row: its dimensions, the columns of ``COLUMNS``, the cache writes,
    ``server_tool_requests`` (by tool name, in name order), the audio counts, the
    image counts and the search units."""
    return {
        **row.dimensions,
        **{name: getattr(row, name) for name in COUNTS},
        "cost_usd": usd_text(row.cost_picousd),
        "latency_p50_ms": _latency(row, 0.50),
        "latency_p95_ms": _latency(row, 0.95),
        **{name: getattr(row, name) for name in CACHE_WRITE_COUNTS},
        "server_tool_requests": dict(sorted(row.server_tool_requests.items())),
        **{name: getattr(row, name) for name in AUDIO_COUNTS},
        **{name: getattr(row, name) for name in IMAGE_COUNTS},
        **{name: getattr(row, name) for name in SEARCH_COUNTS},
    }


def totals(rows: list[UsageRow]) -> UsageRow:
    """Every row added up (latency buckets too, so the total has its own percentiles)."""
    total = UsageRow({})
    for row in rows:
        for name in _SUMMED:
            setattr(total, name, getattr(total, name) + getattr(row, name))
        for index, count in enumerate(row.latency_buckets):
            total.latency_buckets[index] += count
        for tool, count in row.server_tool_requests.items():
            total.server_tool_requests[tool] = total.server_tool_requests.get(tool, 0) + count
    return total


def _tool_column(tool: str) -> str:
    return TOOL_MEASURE + tool


def _flat(found: dict[str, Any], tools: list[str]) -> dict[str, Any]:
    """A record with one column per tool of ``tools`` (0 for a tool the row did not use),
    after its other columns."""
    flat = dict(found)
    used = flat.pop("server_tool_requests")
    flat.update((_tool_column(tool), used.get(tool, 0)) for tool in tools)
    return flat


def _extra_columns(total: UsageRow, fmt: str) -> tuple[list[str], list[str]]:
    """The count columns and the tools to show after ``COLUMNS``: in CSV every cache-write
    audio, image and search-unit column (a file a billing job imports keeps them from month
    to month), in
    the table those the period has; in both, the tools the period used, by name."""
    counts = [
        name
        for name in (*CACHE_WRITE_COUNTS, *AUDIO_COUNTS, *IMAGE_COUNTS, *SEARCH_COUNTS)
        if fmt == "csv" or getattr(total, name)
    ]
    tools = sorted(tool for tool, count in total.server_tool_requests.items() if count)
    return counts, tools


def _without_empty_dimensions(found: dict[str, Any], by: tuple[str, ...]) -> dict[str, Any]:
    """``found`` with None for a dimension the requests had no value for (stored empty:
    an API key without a user or group): JSON's null, CSV's ``NO_VALUE``, the table's
    ``-``. An empty cell was a blank a spreadsheet's pivot table merges with any other
    blank (a value of spaces it trimmed), and JSON's "" read as a name."""
    for name in by:
        if found[name] == "":
            found[name] = None
    return found


def missing_note(hour: UnreadableHour) -> str:
    """The stderr line of an hour the report could not read whole."""
    return (
        f"warning: the usage of the hour from {hour.start.isoformat()} is missing from"
        f" this report, in part or whole: {hour.reason}"
    )


def render(read: UsageRead | list[UsageRow], by: tuple[str, ...], period: Period, fmt: str) -> str:
    """``read``: the rows, and what of the period they lack, which JSON names: the hours
    not read whole, and the first hour kept when earlier ones expired (the CLI says so on
    stderr for every format, and exits 1). A list is rows the period lacks nothing of."""
    if isinstance(read, list):
        read = UsageRead(read, [])
    rows, unreadable = read.rows, read.unreadable
    records = [_without_empty_dimensions(record(row), by) for row in rows]
    summed = totals(rows)
    if fmt == "json":
        total = record(summed)
        document = {
            "from": period.start.isoformat(),
            "to": period.end.isoformat(),
            "group_by": list(by),
            "currency": "USD",
            "rows": records,
            "totals": total,
            "partial": read.short,
            "unreadable_hours": [
                {"hour": hour.start.isoformat(), "key": hour.key, "reason": hour.reason}
                for hour in unreadable
            ],
            # Added after the others: the hours before this one expired, counted as none.
            "expired_before": read.expired_before,
            "usage_retention_days": read.usage_retention_days,
        }
        return orjson.dumps(document, option=orjson.OPT_INDENT_2).decode() + "\n"
    counts, tools = _extra_columns(summed, fmt)
    headers = [*by, *COLUMNS, *counts, *map(_tool_column, tools)]
    flat = [_flat(found, tools) for found in records]
    if fmt == "csv":
        return _csv(headers, flat, by)
    return _table(flat, headers, by, _flat(record(summed), tools), period)


def _table(
    records: list[dict[str, Any]],
    headers: list[str],
    by: tuple[str, ...],
    total: dict[str, Any],
    period: Period,
) -> str:
    def cells(found: dict[str, Any]) -> list[str]:
        return ["-" if found.get(h) is None else _visible(str(found.get(h))) for h in headers]

    total_cells = cells({**total, **{name: "" for name in by}})
    if by:
        total_cells[0] = "TOTAL"
    # Grouped by nothing, the one row is the total: printed twice, the second without
    # the TOTAL label (there is no column to hold it), it read as two groups.
    body = [cells(found) for found in records] if by else []
    widths = [
        max(len(h), *(len(row[i]) for row in [*body, total_cells])) for i, h in enumerate(headers)
    ]
    lines = [
        f"usage from {period.start.isoformat()} to {period.end.isoformat()}"
        " (hourly rollups, UTC; cost in USD; latency p50/p95 in ms)"
    ]
    # The dimensions read left to right; every other column is a number, right-aligned so
    # that digits of one magnitude stand above each other.
    named = len(by)
    rows = [headers, *body, total_cells]
    if by:
        # A rule above the total: a group (or user, key, model) may well be named TOTAL,
        # and its row then read like the sum. No row is dashes alone (every row has its
        # request count), so the line after the rule is the total, whatever the names.
        rows.insert(-1, ["-" * width for width in widths])
    for row in rows:
        line = "  ".join(
            cell.ljust(width) if index < named else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"
