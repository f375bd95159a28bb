"""The caller's own key or token, starred out of the errors an agent server answers with.

The client's credential never goes upstream (``caller``), but a client whose settings
were swapped puts its key where it does not belong (a tool's arguments, a message's
text), and a server's error quotes what it refused ("invalid value '...'"). The
client's SDK raises that error, and whatever logs the client's errors keeps its key:
the LLM path stars the request's key out of a provider's error answers for the same
reason (``backends._error_needles``). So on an answer already searched for the server's
own credential (``credential_echo``), the request's key or token is searched for too,
in every form a server could quote it (``credential_forms.quoted_forms``), and starred
where the answer is an error: everywhere in an HTTP error (4xx, 5xx), and inside a
JSON-RPC message that has an ``"error"`` member (an MCP or A2A error under HTTP 200).
Elsewhere (a tool's result echoing its arguments, an agent repeating a message) it is
the client's own data, passed on as it came, as a model's answer is.

Byte searches, no parse: the ``"error"`` key comes before its message and data, so a
key found after it in the same message (a JSON body; an SSE event) sits in an error,
or, rarely, in a result after a value ``"error"``, where starring the client's own key
costs it nothing. Not counted in ``aigw_agent_credential_echoes_total``: the server did
not leak the gateway's credential, it quoted what the client sent.
"""

from __future__ import annotations

from extproc.credential_forms import quoted_forms, shared_lead, starred, unfinished_at

_ERROR_MEMBER = b'"error"'
# The bytes before a chunk that may hold the start of an ``"error"`` key or of an event's
# end (``\r\n\r\n``) the chunk finishes.
_CARRIED = len(_ERROR_MEMBER) - 1
_EVENT_ENDS = (b"\r\n\r\n", b"\n\n", b"\r\r")


class CallerKeySearch:
    """One answer's search for the request's own credential (``forms``): everywhere in
    an HTTP error (``everywhere``), else in its JSON-RPC errors, an SSE stream's (``sse``)
    message by event."""

    def __init__(self, forms: tuple[bytes, ...], *, everywhere: bool, sse: bool) -> None:
        self.forms = forms
        self._lead = shared_lead(forms)
        self._everywhere = everywhere
        self._sse = sse
        # Whether the message the bytes passed so far end in has an "error" member.
        self._in_error = False
        self._carried = b""

    def star(self, data: bytes) -> bytes:
        """``data`` (what follows the bytes passed so far) with the credential starred
        where it is in an error; ``data`` itself when nothing is."""
        if self._everywhere:
            return starred(data, self.forms, self._lead)
        if self._lead and self._lead not in data:
            return data
        out: bytearray | None = None
        for form in self.forms:
            at = data.find(form)
            while at != -1:
                if self._in_error_at(data, at):
                    out = out if out is not None else bytearray(data)
                    out[at : at + len(form)] = b"*" * len(form)
                at = data.find(form, at + len(form))
        return bytes(out) if out is not None else data

    def unfinished_at(self, data: bytes) -> int:
        """Where a tail of ``data`` that could begin the credential starts."""
        return unfinished_at(data, self.forms, self._lead)

    def passed(self, data: bytes) -> None:
        """``data`` went on to the client (after the search): the message it ends in.
        One scan of a chunk in the common case (no ``"error"`` in it, none open)."""
        if self._everywhere or not data:
            return
        if not self._sse:
            # One message (or batch) the whole body long: once in error, it stays so.
            if not self._in_error:
                self._in_error = self._in_error_at(data, len(data))
        elif (last := data.rfind(_ERROR_MEMBER)) != -1:
            # In error unless an event ended after its last "error" member.
            self._in_error = all(data.find(mark, last) == -1 for mark in _EVENT_ENDS)
        elif self._in_error or (self._carried + data[:_CARRIED]).find(_ERROR_MEMBER) != -1:
            self._in_error = self._in_error_at(data, len(data))
        self._carried = (self._carried + data[-_CARRIED:])[-_CARRIED:]

    def _in_error_at(self, data: bytes, at: int) -> bool:
        """Whether ``data[at]`` is in a message with an ``"error"`` member before it.
        Searched in place (a copy of a large chunk cost more than the search); the few
        bytes passed before ``data`` are joined to its first few only, for a member or an
        event's end split between them."""
        carried = len(self._carried)
        head = self._carried + data[: min(at, _CARRIED)]
        began = -1  # where the last event that began before ``at`` did, in ``data``
        if self._sse:
            began = _message_start(data, at)
            if began == -1 and (split := _message_start(head, len(head))) > carried:
                began = split - carried
        if began != -1:
            return data.find(_ERROR_MEMBER, began, at) != -1
        # No event began in ``data`` before ``at``: the one the passed bytes ended in goes
        # on, with an "error" member seen before, split over the join, or in ``data``.
        if self._in_error:
            return True
        after = max(_message_start(head, len(head)), 0) if self._sse else 0
        return head.find(_ERROR_MEMBER, after) != -1 or data.find(_ERROR_MEMBER, 0, at) != -1


def _message_start(text: bytes, end: int) -> int:
    """Where the last SSE event that ``text[:end]`` begins starts (after the blank line
    that ended the one before); -1 when it begins none."""
    found = [at + len(mark) for mark in _EVENT_ENDS if (at := text.rfind(mark, 0, end)) != -1]
    return max(found, default=-1)


def caller_key_search(credential: str | None, status: int, sse: bool) -> CallerKeySearch | None:
    """The search for the request's own ``credential`` (``echoed_credential``) in an
    answer of HTTP ``status``; None when the request presented none."""
    if credential is None:
        return None
    # Not through the cache the servers' credentials share: a key per client.
    forms: tuple[bytes, ...] = quoted_forms.__wrapped__((credential,))
    return CallerKeySearch(forms, everywhere=status >= 400, sse=sse)
