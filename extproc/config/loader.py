"""Read the YAML config file: ``${VAR}`` interpolation, then validation.

Interpolation runs on the parsed YAML's string scalars, not on the raw text, so a
value taken from the environment can never change the file's structure.
``${VAR}`` needs VAR set; ``${VAR:-default}`` falls back when VAR is unset or
empty; ``$${`` writes a literal ``${``. Errors name the field path and the bad
value, and never echo a value that looks like a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from extproc.config.model import GatewayConfig

_VARIABLE = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_FIELD = re.compile(r"(key|secret|token|password|credential)", re.IGNORECASE)


class ConfigError(Exception):
    """The config file cannot be used; ``problems`` holds one line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"invalid config {self.source}:\n{lines}"


# libyaml's safe loader when PyYAML was built with it (the wheels are): several times
# faster than the pure-Python one and far lighter on memory for a config carrying
# thousands of keys and rules, which the pure-Python loader left behind as freed
# but still resident memory.
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load, interpolate and validate one config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror}"]) from None
    return parse_config(text, source, os.environ if environ is None else environ)


def parse_config(text: str, source: str, environ: Mapping[str, str]) -> GatewayConfig:
    try:
        raw = yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        problem = re.sub(r"'[^']{3,}'", "'...'", problem)  # a quoted tag may be a secret (!...)
        raise ConfigError(source, [f"YAML syntax error{where}: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, ["the top level must be a mapping of sections"])
    problems: list[str] = []
    interpolated = _interpolate(raw, environ, "", problems)
    if problems:
        raise ConfigError(source, problems)
    try:
        return GatewayConfig.model_validate(interpolated)
    except ValidationError as exc:
        errors = exc.errors()
        # pydantic also reports a list as too short when all its items failed: noise.
        failed = {tuple(e["loc"][:-1]) for e in errors if len(e["loc"]) > 1}
        errors = [
            e
            for e in errors
            if not (
                e["type"] == "too_short" and tuple(e["loc"]) in {f[: len(e["loc"])] for f in failed}
            )
        ]
        raise ConfigError(source, [_describe(error) for error in errors]) from None


def _interpolate(value: Any, environ: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        return _substitute(value, environ, path, problems)
    if isinstance(value, dict):
        return {
            key: _interpolate(item, environ, _join(path, str(key)), problems)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [
            _interpolate(item, environ, f"{path}[{index}]", problems)
            for index, item in enumerate(value)
        ]
    return value


def _substitute(text: str, environ: Mapping[str, str], path: str, problems: list[str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        name, default = match.group(1), match.group(2)
        found = environ.get(name)
        if found:
            return found
        if default is not None:
            return default
        problems.append(f"{path or '<root>'}: environment variable {name} is not set")
        return ""

    return _VARIABLE.sub(replace, text)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(error: Any) -> str:
    location = ""
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location = _join(location, str(part))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1] == "name":
        message = "must be 1-63 lower-case letters, digits, '.', '_' or '-'"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown field"
    if error["type"] == "missing":
        return f"{location}: required field is missing"
    if any(_SECRET_FIELD.search(str(part)) for part in error["loc"]):
        return f"{location}: {message}"
    value = error.get("input")
    if isinstance(value, dict | list) or value is None:
        return f"{location}: {message}" if location else message
    if isinstance(value, str):
        value = _without_userinfo(value)
    return f"{location}: {message} (got {value!r})"


def _without_userinfo(value: str) -> str:
    """A URL with its user and password masked (``redis://user:pass@host``): the value is
    echoed in errors, and a store URL often carries the store's password."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return value
    return f"{scheme}://***@{authority.rpartition('@')[2]}{slash}{path}"
