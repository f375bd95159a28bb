"""The gateway's credential for an agent server, kept out of that server's answers.

Every caller reaches a server with the gateway's own ``api_key`` (``caller``); the
client never holds it. A server that quotes what it was sent (a 403 "invalid key
...", a 400 listing its headers, a JSON-RPC error or a tool's result echoing
``Authorization``, an SSE event of either, a debug header) would hand it to whoever
called. So every answer of a server with a gateway credential is searched for it, in
each form a server could quote it (``credential_forms.quoted_forms``: as sent,
JSON-escaped, percent-encoded), before any reader or the client sees it: byte
searches, no parse. Each one found becomes as many asterisks, so the answer keeps its
length (a ``content-length`` passed on stays true). A chunk's tail that could begin
the credential waits for the next chunk (at most its length less one byte), so one
split over two chunks is found too. The first find of a request is logged, without
the value, and counted in ``aigw_agent_credential_echoes_total{server}``.

An answer in an encoding the gateway cannot decode (br, zstd) cannot be searched: it
fails closed with a JSON-RPC error (``answer_reading``), as an unreadable tool list
does. A server without a gateway credential pays nothing: its answers are read only
where rules need them. The same search stars the caller's own key out of the errors
of a searched answer (``caller_key_echo``), uncounted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from extproc.agents.call import AgentCall
from extproc.agents.caller_key_echo import CallerKeySearch
from extproc.agents.decoded import AnswerFeed
from extproc.context import PhaseOutput, RequestContext
from extproc.credential_forms import shared_lead, starred, unfinished_at

log = logging.getLogger(__name__)


class StarredAnswer:
    """``reader`` (None: the answer is only searched) fed the server's answer with its
    credential starred out, and the caller's own where the answer is an error
    (``caller``: ``caller_key_echo``); the client gets what the reader makes of it,
    else the starred bytes."""

    def __init__(
        self,
        reader: AnswerFeed | None,
        forms: tuple[bytes, ...],
        found: Callable[[], None],
        caller: CallerKeySearch | None = None,
    ) -> None:
        self.reader = reader
        self._forms = forms
        self._lead = shared_lead(forms)
        self._found = found
        self._caller = caller
        self._seen = False
        self._held = b""

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        data = self._held + chunk if self._held else chunk
        self._held = b""
        searched = starred(data, self._forms, self._lead)
        if searched is not data and not self._seen:
            self._seen = True
            self._found()
        caller = self._caller
        if caller is not None:
            searched = caller.star(searched)
        if not end_of_stream:
            cut = unfinished_at(searched, self._forms, self._lead)
            if caller is not None:
                cut = min(cut, caller.unfinished_at(searched))
            if cut < len(searched):
                searched, self._held = searched[:cut], searched[cut:]
        if caller is not None:
            caller.passed(searched)
        out = self.reader.feed(searched, end_of_stream) if self.reader is not None else None
        if out is None and searched is not chunk:
            return searched  # the reader passes on what it was fed: not the server's chunk
        return out


def star_headers(
    ctx: RequestContext,
    out: PhaseOutput,
    response_headers: dict[str, str],
    forms: tuple[bytes, ...],
    caller: CallerKeySearch | None = None,
) -> None:
    """Star the credential out of the answer's headers, and of those the gateway sets
    from them (a redirect's ``location``); the caller's own too, given its search
    (``caller``: an error answer's, which stars it everywhere)."""
    # The gateway's own value of a header (a redirect's, pointed at the route) is the
    # one that leaves, so it is the one searched.
    theirs = [item for item in response_headers.items() if item[0] not in out.set_headers]
    for name, value in (*theirs, *out.set_headers.items()):
        if name.startswith(":"):
            continue
        encoded = value.encode()
        searched = starred(encoded, forms)
        if searched is not encoded:
            call = ctx.agent
            assert call is not None
            credential_echoed(ctx, call)
        if caller is not None:
            searched = caller.star(searched)
        if searched is not encoded:
            out.set_headers[name] = searched.decode()


def credential_echoed(ctx: RequestContext, call: AgentCall) -> None:
    """Log and count a request whose answer quoted the credential, once."""
    if call.credential_echoed:
        return
    call.credential_echoed = True
    log.warning(
        "the %s server '%s' quoted the gateway's credential for it in its answer to"
        " request %s; starred out before the client (check the server's error messages"
        " and debug settings)",
        call.protocol.value.upper(),
        call.server.name,
        ctx.request_id or "-",
    )
    metrics = ctx.runtime.services.metrics.agents
    metrics.child(metrics.credential_echoes, call.server.name).inc()
