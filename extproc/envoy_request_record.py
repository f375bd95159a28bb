"""The request's method and path as Envoy's access log and span record them, told by the gateway.

The gateway answers the first message of every request Envoy passes it, and names the
method and path there, in its ``io.aigw`` metadata (``METHOD_METADATA_KEY``,
``PATH_METADATA_KEY``): the access log line of such a request prints both as they are
(``envoy_bootstrap``'s access loggers, picked by whether the metadata holds a path), with
no CEL per request. Envoy's CEL formatters (``http_methods.ENVOY_METHOD``,
``envoy_paths.ENVOY_PATH``: a method-registry check and nine RE2 searches of the path)
are left to the requests the gateway never answered: refused by Envoy first, a local
reply, the gateway unreachable.

What the gateway names is what those formatters would have printed:

- the method as the gateway records it (``stages.method_names``: ``[redacted]`` when a
  method outside the registry holds a credential);
- the path without its query, as the gateway recorded it when it hid a credential in
  it (``RequestContext.recorded_path``); else with the request's own key ``[redacted]``
  wherever in it, as sent or percent-encoded (as the gateway's line shows it), and
  ``/[redacted]`` when it holds a well-known key shape (the patterns Envoy's RE2
  searched, ``credential_shapes.RE2_SHAPES``: a segment the gateway itself does not
  search on a served request).

Later answers name the path again only when the gateway hides a credential in it after
the first (``span_attributes.request_metadata``); Envoy merges them key by key.

A config whose bootstrap has neither Envoy's access log nor its tracer
(``envoy.access_log: false``, ``telemetry.tracing.enabled: false``) renders nothing that
reads the two entries, so the gateway leaves them out (``envoy_reads_request``). A
reload that turns both off while Envoy still runs a bootstrap with its log loses no
line: that log's other logger, picked when the path is missing, prints the same method
and path through its CEL formatters, at their cost, until Envoy is restarted on the
bootstrap rendered again (which the reload warns of, ``envoy_drift``).
"""

from __future__ import annotations

import re

from extproc.auth.credential_shapes import RE2_SHAPES
from extproc.config.model import GatewayConfig
from extproc.context import RequestContext
from extproc.credential_cleaner import echoed_credential
from extproc.envoy_paths import PATH_METADATA_KEY, REDACTED_PATH
from extproc.http_methods import METHOD_METADATA_KEY
from extproc.stages.model_credentials import path_without_credential

_JWT = next(shape for shape in RE2_SHAPES if shape.startswith("eyJ"))
# Every other shape is of bounded length: one search of the path stays linear. Standing
# apart from the letters and digits before it, as Envoy's patterns have it.
_BOUNDED_SHAPES = re.compile(
    "(?<![A-Za-z0-9])(?:" + "|".join(shape for shape in RE2_SHAPES if shape != _JWT) + ")"
)
# A JWT's first part runs to the end of its run of base64url characters, and a dot must
# follow the run. Searched as Envoy's pattern, each "eyJ" of a long run ("eyJ-eyJ-...", a
# path of tens of kilobytes) would read the run to its end again: seconds of the event
# loop. So each run that a dot and five more characters follow is found once
# (possessive, from its start alone), and only then looked into for an "eyJ" that stands
# apart with five characters after it.
_RUN_BEFORE_DOT = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]++(?=\.[A-Za-z0-9_-]{5})")
_JWT_START = re.compile(r"(?:^|[_-])eyJ[A-Za-z0-9_-]{5}")


def holds_key_shape(path: str) -> bool:
    """Whether ``path`` (without its query) holds a key shape Envoy's RE2 finds."""
    if _BOUNDED_SHAPES.search(path) is not None:
        return True
    return "eyJ" in path and any(
        _JWT_START.search(run.group()) is not None for run in _RUN_BEFORE_DOT.finditer(path)
    )


def envoy_reads_request(config: GatewayConfig) -> bool:
    """Whether the bootstrap ``config`` renders reads the method and path the first answer
    names: its access log prints them, its span tags them (``envoy_tracing``)."""
    return config.envoy.access_log or config.telemetry.tracing.enabled


def recorded_request(ctx: RequestContext) -> dict[str, str]:
    """The metadata of the gateway's first answer that Envoy's records read (module
    docstring). Two entries and, for a path the gateway hid nothing in, one substring
    test and one search of a few dozen characters: about a microsecond."""
    path = ctx.recorded_path
    if path is None:
        path = ctx.path.partition("?")[0]
        if ctx.route is not None:
            # The request's own key, which the gateway's line hides wherever in the path
            # (stages.model_credentials.hide_own_key_in_path, run at the body: the path
            # the stages read until then stays the client's).
            credential = echoed_credential(ctx)
            if credential is not None:
                path = path_without_credential(path, credential) or path
        if holds_key_shape(path):
            path = REDACTED_PATH
    return {METHOD_METADATA_KEY: ctx.method, PATH_METADATA_KEY: path}
