"""Values of the quota store as the quota scripts read them: one parse for every reader.

An operator may write an override or a reset generation by hand (``HSET``), and the
gauges and ``extproc quota get`` must show the limit the scripts then check requests
against, or call the value unreadable exactly when the scripts refuse it. The scripts
read an override with Lua 5.1's ``tonumber`` (C's ``strtod``: ``5e3``, ``5000.0``,
`` 5000 `` and ``0x1388`` are all 5000), and a count and a reset generation as Redis's
``INCRBY`` does (plain decimal digits: the reset script bumps a generation with
``HINCRBY``). Python's ``int()`` and ``float()`` differ both ways: ``int()`` refused
``5e3``, and ``float()`` took ``5_000``, which Lua refuses.
"""

from __future__ import annotations

import math
import re

from extproc.config.quota_model import MAX_LIMIT

# Lua's tonumber: optional blanks (C's isspace), a sign, then a decimal number with an
# optional exponent or a hexadecimal one ("0x" digits, optionally a fraction and a
# binary exponent, as strtod reads them); nothing else. ASCII only, no underscores.
_BLANKS = b" \t\n\v\f\r"
_DECIMAL = re.compile(rb"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_HEX = re.compile(rb"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?\d+)?")
# A count as the reserve script takes it (and INCRBY): 0, or digits without a leading 0.
_COUNT = re.compile(rb"0|-?[1-9]\d*")


def script_number(raw: bytes) -> float | None:
    """A number as the quota scripts read it; None when they read none.

    Infinities and NaN are None too: no limit or generation the gateway writes is one,
    and a gauge or ``quota get`` showing ``inf`` would show a guess."""
    text = raw.strip(_BLANKS)
    if _DECIMAL.fullmatch(text):
        found = float(text)
    elif _HEX.fullmatch(text):
        found = float.fromhex(text.decode("ascii"))
    else:
        return None
    return found if math.isfinite(found) else None


def script_limit(raw: bytes) -> int | None:
    """An override as the reserve script takes it: a whole number, however written, up
    to what the scripts count exactly (``MAX_LIMIT``, the config's bound too)."""
    found = script_number(raw)
    if found is None or not found.is_integer() or abs(found) > MAX_LIMIT:
        return None
    return int(found)


def script_count(raw: bytes) -> int | None:
    """A counter or held amount as the scripts take it; None for what they refuse."""
    return int(raw) if _COUNT.fullmatch(raw) else None


def script_generation(raw: bytes) -> int | None:
    """A reset generation as every quota script reads it (``reset_generation.lua``, which
    the reserve, settle, give-back and reset scripts share): an integer as HINCRBY writes
    it, up to what the scripts compare exactly. None for what they refuse (``1.5``,
    ``5e3``, ``007``, `` 7 ``)."""
    count = script_count(raw)
    return count if count is not None and abs(count) <= MAX_LIMIT else None
