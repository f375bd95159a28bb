"""Read the YAML config file: ``${VAR}`` interpolation, then validation.

Interpolation runs on the parsed YAML's string scalars, not on the raw text, so a
value taken from the environment can never change the file's structure.
``${VAR}`` needs VAR set; ``${VAR:-default}`` falls back when VAR is unset or
empty, and the default may itself use ``${OTHER}`` (read only when it is used);
``$${`` writes a literal ``${``. Any other ``${`` is an error, not text: kept as
it stands, ``${KEY-x}`` would become the provider key itself. Text a guard looks
for or a person reads (guard literals, patterns, messages and replacements,
enrichment messages) keeps such a ``${`` as written: a guard against Log4Shell
looks for ``${jndi:`` itself. A value taken from the environment is never
interpolated again, nor read as a template: in an enrichment message its braces are
text, no placeholders. Errors name the field path and the
bad value, and never echo a value that looks like a secret.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from extproc.auth import credential_shapes
from extproc.config.echoed_secrets import hidden, is_secret_field, secrets_of_file
from extproc.config.enrichment_template import literal
from extproc.config.model import GatewayConfig
from extproc.config.published_names import secret_model_names
from extproc.errors import REDACTED, without_secrets

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE_FORMS = "write ${VAR} or ${VAR:-default}, or $${ for a literal ${"
# What may follow a name in a shell's ${NAME...} form: shown in an error, unlike the text
# after it.
_SHELL_OPERATOR = re.compile(r":?[-=?+]?")
# Where a URL's secrets start, cut from echoed values: its query, a `;` parameter, its
# fragment.
_URL_SECRET_MARKS = "?;#"
# Fields holding text that may itself contain ``${`` (a guard looking for ``${jndi:``, a
# prompt quoting a shell form): a ``${`` there that is no reference stays text, as it
# did before the loader refused one elsewhere. A reference there is still read.
_ENRICHMENT_CONTENT = r"^routes\[\d+\]\.enrichment\.(prepend|append)\[\d+\]\.content$"
_TEXT_FIELD = re.compile(
    r"^guardrails\.policies\[\d+\]\.(request|response)\[\d+\]"
    r"\.(literals\[\d+\]|patterns\[\d+\](\.pattern)?|message|replacement)$"
    rf"|{_ENRICHMENT_CONTENT}"
)
# Fields that are templates of their own (an enrichment message's ``{user_id}``): a value
# taken from the environment is written into them as text, its braces no placeholders.
_TEMPLATE_FIELD = re.compile(_ENRICHMENT_CONTENT)


class ConfigError(Exception):
    """The config file cannot be used; ``problems`` holds one line per mistake.

    Each line is printed by ``check-config`` and ``serve`` and logged by a refused
    reload, whichever part found the mistake (the loader, the key files, the signer):
    a credential of a well-known shape in it (pasted as a field's value, a mapping's
    key, a route name) is hidden here, once for all of them."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = [credential_shapes.redacted(problem, REDACTED) for problem in problems]
        super().__init__(f"{source}: " + "; ".join(self.problems))

    def __str__(self) -> str:
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        return f"invalid config {self.source}:\n{lines}"


# libyaml's safe loader when PyYAML was built with it (the wheels are): several times
# faster than the pure-Python one and far lighter on memory for a config carrying
# thousands of keys and rules, which the pure-Python loader left behind as freed
# but still resident memory.
# Deeper than any section of the schema nests (a guard's JSON schema included), far
# below where validation would exhaust Python's stack.
MAX_NESTING = 64
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(_SAFE_LOADER):  # type: ignore[valid-type,misc]
    """The safe loader, refusing a key written twice in one mapping.

    PyYAML keeps the last of them without a word, so a second ``limits:`` section (or a
    model's second ``provider:``) silently replaced the first, settings, mistakes and
    all. YAML itself says a mapping's keys are unique. Merge keys (``<<: *defaults``)
    stay what they are: the mapping's own keys override what they merge."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=deep)
                try:
                    repeated = key in seen
                except TypeError:
                    continue  # unhashable: the constructor's own error names it
                if repeated:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        # In double quotes: the error's single-quoted words are masked.
                        f'the key "{str(key)[:64]}" is written twice in one mapping',
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)  # type: ignore[no-any-return]


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load, interpolate and validate one config file."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [f"cannot read file: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        # A file saved in Latin-1 or UTF-16 (an editor's default): a config mistake,
        # answered as one (exit status 2, a refused reload), not a traceback.
        raise ConfigError(
            source, [f"the file is not UTF-8 text (byte {exc.start} cannot be decoded)"]
        ) from None
    return parse_config(text, source, os.environ if environ is None else environ)


def parse_config(text: str, source: str, environ: Mapping[str, str]) -> GatewayConfig:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
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
    secrets = secrets_of_file(text, environ, interpolated)
    try:
        config = GatewayConfig.model_validate(interpolated)
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
        # A check across sections (an error of the whole config, at no field) reports each
        # of its problems on a line of its own; any other error is one problem, whatever
        # its field's name holds (a YAML key may hold a line break).
        problems = [
            line
            for error in errors
            for line in (_describe(error).split("\n") if not error["loc"] else [_describe(error)])
        ]
        # A key put in the wrong field is echoed by the field's check, or quoted by its
        # message (`unknown provider '...'`), like any other value.
        raise ConfigError(source, hidden(problems, secrets)) from None
    if published := secret_model_names(config, secrets):
        raise ConfigError(source, published)
    config.keep_secrets_read(secrets)
    return config


def _interpolate(
    value: Any,
    environ: Mapping[str, str],
    path: str,
    problems: list[str],
    outer: tuple[int, ...] = (),
) -> Any:
    """``value`` with its references read; ``outer`` holds the ids of the mappings and
    lists it is inside of."""
    if isinstance(value, str):
        return _substitute(value, environ, path, problems)
    if not isinstance(value, dict | list):
        return value
    # An alias inside what it names (`a: &a [*a]`) is a structure without end, and a file
    # nested hundreds deep exhausts Python's stack further on: both ended check-config,
    # serve and a reload with a RecursionError traceback.
    if id(value) in outer:
        problems.append(f"{path or '<root>'}: an alias (*name) inside the anchor it names")
        return None
    if len(outer) >= MAX_NESTING:
        problems.append(f"{_shortened(path)}: nested more than {MAX_NESTING} levels deep")
        return None
    inner = (*outer, id(value))
    if isinstance(value, dict):
        return {
            key: _interpolate(item, environ, _join(path, str(key)), problems, inner)
            for key, item in value.items()
        }
    return [
        _interpolate(item, environ, f"{path}[{index}]", problems, inner)
        for index, item in enumerate(value)
    ]


def _shortened(path: str) -> str:
    """A path a hundred levels long, cut to where it starts."""
    return path if len(path) <= 80 else path[:80] + "..."


def _substitute(text: str, environ: Mapping[str, str], path: str, problems: list[str]) -> str:
    if "$" not in text:
        return text  # no reference, no escape: nearly every scalar of a config
    lenient = _TEXT_FIELD.match(path) is not None
    template = _TEMPLATE_FIELD.match(path) is not None
    expansion = _Expansion(
        text, environ, path or "<root>", problems, lenient=lenient, template=template
    )
    try:
        return expansion.value()
    except _BadReferenceError as exc:
        problems.append(f"{path or '<root>'}: {exc}")
        return ""


class _BadReferenceError(Exception):
    """A ``${`` that is neither a reference the loader reads nor escaped."""


class _Expansion:
    """One string scalar, read left to right: a default may hold references of its
    own, so a pattern cannot find where it ends."""

    def __init__(
        self,
        text: str,
        environ: Mapping[str, str],
        where: str,
        problems: list[str],
        *,
        lenient: bool = False,
        template: bool = False,
    ) -> None:
        self._text = text
        self._environ = environ
        self._where = where
        self._problems = problems
        # True: a ``${`` that is no reference is text, not an error (``_TEXT_FIELD``).
        self._lenient = lenient
        # True: the field is a template, and a value from the environment is text in it
        # (``_TEMPLATE_FIELD``).
        self._template = template
        self._at = 0

    def value(self) -> str:
        return self._until_end(used=True, default_of=None)

    def _until_end(self, *, used: bool, default_of: int | None) -> str:
        """The text up to its end, or to the ``}`` closing the default being read (of the
        reference opened at ``default_of``)."""
        in_default = default_of is not None
        text, parts = self._text, []
        while self._at < len(text):
            if text.startswith("$${", self._at):
                parts.append("${")
                self._at += 3
            elif text.startswith("${", self._at):
                parts.append(self._reference_or_text(used=used))
            elif in_default and text[self._at] == "}":
                return "".join(parts)
            else:
                # Plain text up to the next character that may open or close something.
                stop = self._next_special(in_default)
                parts.append(text[self._at : stop])
                self._at = stop
        if default_of is not None:
            raise self._bad(default_of)  # the reference whose default was never closed
        return "".join(parts)

    def _next_special(self, in_default: bool) -> int:
        """Where the next ``$`` (or, in a default, ``}``) after the cursor is; the end if
        none is: the cursor's own character is taken as text."""
        text, after = self._text, self._at + 1
        ends = [text.find("$", after)]
        if in_default:
            ends.append(text.find("}", after))
        found = [end for end in ends if end >= 0]
        return min(found) if found else len(text)

    def _reference_or_text(self, *, used: bool) -> str:
        """The reference at the cursor; in a text field, its ``$`` as text when it is none."""
        if not self._lenient:
            return self._reference(used=used)
        start, reported = self._at, len(self._problems)
        try:
            return self._reference(used=used)
        except _BadReferenceError:
            # Not a reference after all: nothing it named counts.
            del self._problems[reported:]
            self._at = start + 1
            return "$"

    def _reference(self, *, used: bool) -> str:
        """``${NAME}`` or ``${NAME:-default}`` at the cursor; ``used`` is False inside a
        default that is not taken, whose variables then need not be set."""
        start = self._at
        name = _NAME.match(self._text, start + 2)
        if name is None:
            raise self._bad(start)
        self._at = name.end()
        found = self._environ.get(name.group()) if used else None
        if found and not _is_text(found):
            # Python hands a byte of the environment that is not UTF-8 over as a lone
            # surrogate: kept, it could not be encoded into a header (a provider key's
            # every request failed), so it is refused here as a key file's is.
            self._problems.append(
                f"{self._where}: environment variable {name.group()} is not UTF-8 text"
            )
            found = found.encode("utf-8", "replace").decode()
        if found and self._template:
            found = literal(found)
        if self._text.startswith("}", self._at):
            self._at += 1
            if used and not found:
                state = "is empty" if name.group() in self._environ else "is not set"
                self._problems.append(f"{self._where}: environment variable {name.group()} {state}")
            return found or ""
        if not self._text.startswith(":-", self._at):
            raise self._bad(start)
        self._at += 2
        default = self._until_end(used=used and not found, default_of=start)
        self._at += 1  # the closing brace
        return found or default

    def _bad(self, start: int) -> _BadReferenceError:
        # The variable's name and the shell operator after it (`${PW-...}`), never what
        # follows: a shell form's default is often the secret itself (a password in a
        # store URL, a bearer token in a header), and a reload logs this message.
        name = _NAME.match(self._text, start + 2)
        if name is None:
            written = "a ${"
        else:
            operator = _SHELL_OPERATOR.match(self._text, name.end())
            assert operator is not None  # it matches the empty string too
            rest = "..." if operator.end() < len(self._text) else ""
            written = f"${{{name.group()}{operator.group()}{rest}"
        return _BadReferenceError(f"{written} is not a variable reference: {_REFERENCE_FORMS}")


def _is_text(value: str) -> bool:
    try:
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(error: Any) -> str:
    location = ""
    for part in error["loc"]:
        if isinstance(part, int):
            location += f"[{part}]"
        else:
            location = _join(location, str(part))
    # A message may quote the value itself (`unknown provider '...'`).
    message = without_secrets(str(error["msg"]).removeprefix("Value error, "))
    if error["type"] == "string_pattern_mismatch" and error["loc"][-1] == "name":
        message = "must be 1-63 lower-case letters, digits, '.', '_' or '-'"
    if error["type"] == "extra_forbidden":
        return f"{location}: unknown field"
    if error["type"] == "missing":
        return f"{location}: required field is missing"
    if any(is_secret_field(part) for part in error["loc"]):
        return f"{location}: {message}"
    value = error.get("input")
    if isinstance(value, dict | list) or value is None:
        return f"{location}: {message}" if location else message
    if isinstance(value, str):
        value = _without_userinfo(without_secrets(value))
    return f"{location}: {message} (got {value!r})"


def _without_userinfo(value: str) -> str:
    """A URL with its user and password, and its query, masked (``redis://user:pass@host``,
    ``https://host/mcp?token=...``): the value is echoed in errors, and a store URL often
    carries the store's password.

    Masked up to the last ``@``, not to the end of the authority as a URL parser finds
    it: a password written raw with a '/', '?' or '#' in it (base64 holds '/') ends the
    authority inside the password, and the rest of it would be echoed as the path.

    The query, fragment and ``;`` parameters go whether or not the value has a scheme: a
    URL refused *for* its missing or misspelt scheme (``svc.example/v1?key=...``,
    ``http:/svc...``, an OTLP endpoint or webhook host written as a URL) is the very
    value that would otherwise be echoed whole."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    if "@" in rest:
        # `user:password@host:port` with no scheme too (an OTLP endpoint written so).
        rest = "***@" + rest.rpartition("@")[2]
    # An MCP server's or a proxy's URL often carries its token in the query
    # (`?api_key=...`), a matrix parameter (`;key=`) or a fragment.
    cut = min((rest.find(mark) for mark in _URL_SECRET_MARKS if mark in rest), default=-1)
    if cut >= 0:
        rest = rest[: cut + 1] + "***"
    return f"{scheme}{sep}{rest}"
