"""The error codes the gateway answers with, against docs/errors.md's table.

A client's code branches on an error's ``code`` (``insufficient_quota`` stops, a
``rate_limit_exceeded`` waits) and an operator's alert or log query names one
(``quota_store_unavailable``). A code the gateway writes that no page lists is one
nobody can look up, and a row whose code the gateway no longer writes is a branch that
never runs. So every code written anywhere in ``extproc`` (outside the mock provider,
whose errors are the providers' own) must be a row of the table, every row must be a
code the gateway writes, and the row must name each status the code is raised with.

The codes are read from the source, the way a reviewer would find them: a ``code=``
argument (a literal or a module constant), an error class's ``default_code``, a
``code`` parameter's default, a module constant named ``*_CODE``, a ``"code": ...``
entry of a JSON-RPC error's ``data``, and the bootstrap's rewrites of Envoy's own replies.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from pathlib import Path

from extproc import envoy_bootstrap, errors
from extproc.converse_api import OperationNotServedError
from extproc.guardrails.policy import GuardrailRejectedError
from extproc.translators.answer_errors import ProviderStreamError
from extproc.translators.unreadable_answers import UnreadableAnswerError

ERRORS_PAGE = Path("docs/errors.md")
PACKAGE = Path("extproc")
# The mock provider answers as the providers do, with their codes, not the gateway's.
NOT_THE_GATEWAYS = {PACKAGE / "mock_llm"}
_CODE = re.compile(r"^[a-z][a-z0-9_]*$")
# A row of the table: | `code` | status(es) | type | when |
# Built as a 400 and then given Envoy's own status (``envoy_replies.envoy_reply_error``):
# the class's status is never the client's.
_ENVOYS_STATUS_KEPT = ("request_rejected",)
_ENVOY_STATUS = re.compile(r"response\.code == (\d+)")
_ROW = re.compile(r"^\| `([a-z0-9_]+)` \| ([^|]+) \|", re.MULTILINE)

# Error classes by the name a raise site calls them by, with the status they carry
# (None: the status is the caller's, as a guard's configured one).
_CLASSES: dict[str, int | None] = {
    cls.__name__: cls.status
    for cls in (
        errors.BadRequestError,
        errors.AuthenticationError,
        errors.PermissionDeniedError,
        errors.NotFoundError,
        errors.ModelNotFoundError,
        errors.MethodNotAllowedError,
        errors.PayloadTooLargeError,
        errors.UnsupportedMediaTypeError,
        errors.RateLimitError,
        errors.UpstreamError,
        errors.ServiceUnavailableError,
        errors.GatewayTimeoutError,
        OperationNotServedError,
        UnreadableAnswerError,
    )
}
_CLASSES |= {
    GuardrailRejectedError.__name__: None,
    ProviderStreamError.__name__: None,
    errors.GatewayError.__name__: None,
    # authentication.py's 401 with its WWW-Authenticate challenge
    "_challenge": errors.AuthenticationError.status,
}


def _sources() -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text()))
        for path in sorted(PACKAGE.rglob("*.py"))
        if not any(path.is_relative_to(other) for other in NOT_THE_GATEWAYS)
    ]


def _constants(sources: list[tuple[Path, ast.Module]]) -> dict[str, set[str]]:
    """Module-level UPPER_CASE names bound to a code-like string: name -> its values in
    every module (a raise site may import it; two modules may reuse a name)."""
    found: dict[str, set[str]] = defaultdict(set)
    for _, tree in sources:
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
                and _CODE.match(node.value.value)
            ):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.lstrip("_").isupper():
                        found[target.id].add(node.value.value)
    return found


def _called(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else ""


def written_codes() -> dict[str, set[int | None]]:
    """Every error code the gateway writes, with the statuses it is raised with (None
    where the raise site's status is not the class's own)."""
    return {code: set(statuses) for code, statuses in _written_codes().items()}


# Read once a test process: the walk parses the whole package (about 5 s of CPU).
@functools.cache
def _written_codes() -> dict[str, set[int | None]]:
    sources = _sources()
    constants = _constants(sources)
    codes: dict[str, set[int | None]] = defaultdict(set)

    def values(node: ast.expr) -> set[str]:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        return constants.get(node.id, set()) if isinstance(node, ast.Name) else set()

    for _, tree in sources:
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                for keyword in node.keywords:
                    for code in values(keyword.value) if keyword.arg == "code" else ():
                        codes[code].add(_CLASSES.get(_called(node)))
            elif isinstance(node, ast.ClassDef):
                status = _CLASSES.get(node.name)
                for item in node.body:
                    if isinstance(item, ast.Assign) and any(
                        getattr(target, "id", "") == "default_code" for target in item.targets
                    ):
                        for code in values(item.value):
                            codes[code].add(status)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                arguments = node.args.kwonlyargs
                for argument, default in zip(arguments, node.args.kw_defaults, strict=True):
                    if argument.arg == "code" and default is not None:
                        for code in values(default):
                            codes[code].add(None)
            elif isinstance(node, ast.Dict):
                for key, item in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        for code in values(item):
                            codes[code].add(None)
    for name, named in constants.items():
        for code in named if name.endswith("_CODE") else ():
            codes[code].add(None)
    # Envoy's own replies, as the bootstrap's local reply mappers rewrite them: (filter,
    # type, code, message, the status the mapper sets or None to keep Envoy's, ...).
    for condition, _, code, _, status, _ in envoy_bootstrap._local_replies():
        kept = _ENVOY_STATUS.search(condition or "")
        if status is None and kept is not None:
            status = int(kept.group(1))
        codes[code].add(status)
    for code in _ENVOYS_STATUS_KEPT:
        codes[code] = {None}
    return dict(codes)


def documented_codes() -> dict[str, str]:
    """code -> the status column of each row of docs/errors.md's table."""
    return dict(_ROW.findall(ERRORS_PAGE.read_text()))


def test_the_collector_finds_codes_of_every_kind_of_site() -> None:
    """Each kind of site the collector reads, by one code it must find there: a literal
    ``code=``, a constant, a ``default_code``, a parameter's default, a ``*_CODE``
    constant, a dict entry and Envoy's replies' table."""
    codes = written_codes()
    assert codes["quota_store_unavailable"] == {503}
    assert codes["invalid_token"] == {401}
    assert 404 in codes["model_not_found"]
    assert None in codes["guardrail_rejected"]
    assert "gateway_overloaded" in codes
    assert "tool_not_allowed" in codes
    assert codes["upstream_timeout"] == {504}
    assert "upstream_failed" in codes
    assert codes["gateway_unavailable"] == {503}
    assert codes["gateway_timeout"] == {504}


def test_every_code_the_gateway_writes_is_in_the_error_table() -> None:
    missing = sorted(set(written_codes()) - set(documented_codes()))
    assert not missing, f"docs/errors.md lists no row for {missing}"


def test_every_code_of_the_error_table_is_one_the_gateway_writes() -> None:
    stale = sorted(set(documented_codes()) - set(written_codes()))
    assert not stale, f"docs/errors.md lists codes the gateway never writes: {stale}"


def test_each_row_names_the_statuses_its_code_is_raised_with() -> None:
    documented = documented_codes()
    wrong = {
        code: (sorted(s for s in statuses if s is not None), documented[code])
        for code, statuses in written_codes().items()
        if code in documented
        and not all(str(status) in documented[code] for status in statuses if status is not None)
    }
    assert not wrong, f"code: (statuses raised, the row's status column): {wrong}"
