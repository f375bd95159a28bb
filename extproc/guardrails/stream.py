"""Guards on streamed answers: masking that survives chunk boundaries.

``TextStream`` guards one channel of text (a choice, or an Anthropic content
block): each delta is scanned together with what it held back, the text
that cannot be part of an unfinished match goes out at once, and only the
trailing characters that could still begin a match stay behind: at most the
longest match minus one, and only characters a match can contain. So a card
number cut over three chunks is masked, while ordinary prose flows with
next to no delay. What is held goes out when its channel closes (the finish
chunk, ``content_block_stop``), at ``[DONE]`` / ``message_stop``, or at the end
of the body.

``StreamGuard`` applies that to the client's SSE events, OpenAI chat
completion chunks or Anthropic Messages events: each text delta carries what
the guard releases at that moment (possibly ""), and released leftovers travel
in an extra text event just before the event that closes their channel. A
reject guard that matches ends the stream: the text is not sent, an error
event follows (OpenAI: an ``error`` chunk and ``[DONE]``; Anthropic: an
``error`` event), and the rest of the upstream stream is dropped (its usage is
still counted by the translator, which sees every byte).

The arguments of each streamed tool call are a channel too, as a buffered
answer's are guarded: OpenAI's ``delta.tool_calls[j].function.arguments`` (and
the deprecated ``delta.function_call.arguments``) per choice and call index,
Anthropic's ``input_json_delta`` ``partial_json`` per content block. They are
JSON text, read as a buffered answer's are (``json_text``): an ``ArgumentsStream``
lexes the fragments as they come, matches each string decoded and each number as
written, each on its own with a text channel's hold-back, and writes masks as JSON
(escaped; a number holding a match becomes a string). What cannot be read yet
waits: an escape cut in two, a number that may still grow. Should the fragments
stop being JSON (a model can write broken arguments), the rest is read as
written, by a ``TextStream``. Leftovers are released the same way as text: in
an extra argument delta before the finish chunk of their choice (OpenAI: a new
call index does not end the one before, parallel calls may interleave) or
before ``content_block_stop``.

Some text comes whole in one event rather than in deltas (``StreamEvent.whole``): what a
server tool or an MCP server returned, an Anthropic ``*_tool_result`` or ``mcp_tool_result``
block in its ``content_block_start`` (read as a whole answer's, ``content``), and a Gemini
function call. It is matched at once, as a buffered answer's is: a mask rewrites the event,
a reject ends the stream before it.

OpenAI's legacy text completions stream the same way, their text in each choice's
``text`` rather than a delta (``completions``): one channel per choice, whose leftovers go
out in an extra ``text_completion`` chunk before the choice's finish chunk.

A structured-output refusal (OpenAI's ``delta.refusal``) is the answer's text in a field
of its own: a ``TextStream`` per choice, held back and released as the content is, in an
extra ``refusal`` delta before the choice's finish chunk.

Reasoning is text the client reads too, a ``TextStream`` per choice (or block) and field:
OpenAI-compatible ``delta.reasoning_content`` / ``delta.reasoning`` and the text of
OpenRouter's ``delta.reasoning_details``, whose held text goes out before the choice's
answer begins, and Anthropic's ``thinking_delta``, released before its ``signature_delta``.
A provider that streams ``delta.content`` as a list of parts (Mistral's reasoning models)
has its text parts read in the choice's text channel and the text chunks of its
``thinking`` parts in a reasoning channel, released as a ``thinking`` part.
Thinking is signed (Anthropic refuses a changed block sent back), so a mask hit there
ends the stream as a reject guard's match does (``signed_channel``).

A custom tool's input (OpenAI's ``delta.tool_calls[j].custom.input``, GPT-5 custom
tools) is a channel of its own per choice and call index too. It is free text, most
often not JSON, but it is read as arguments are (as JSON while it is JSON, as written
from the first fragment that is not), as a buffered answer's custom input is: a tool
that decodes a JSON input would read a key spelled with an escape. Its leftovers go
out in an extra ``custom.input`` delta of the call. A call index carrying both
``function.arguments`` and ``custom.input`` (no provider is known to) has two
channels: a client merging deltas by index assembles two strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.guardrails.content import TextSlot, thinking_chunks, whole_block_slots
from extproc.guardrails.json_fragments import Lexed, LexState, lex, state_at
from extproc.guardrails.matching import Hit, Matchers, apply, onto_json
from extproc.translators.sse import EventBuffer

_EVENT_END = b"\n\n"
DONE = b"data: [DONE]\n\n"

# A tool call's text: (its choice, its index in the choice's ``tool_calls``, what it
# carries) in OpenAI streams, (its content block, 0, _ARGUMENTS) in Anthropic ones. What closes
# the choice or block (``owner``, the first item) closes the call. A plain tuple, not a
# NamedTuple: it is built for every argument fragment, and a NamedTuple costs 6 times more.
CallChannel = tuple[int, int, int]
# What a call's channel carries, the field its rewritten deltas go back in: a function's
# arguments (Anthropic's input too), or a custom tool's input.
_ARGUMENTS = 0
_CUSTOM_INPUT = 1
# Reasoning, plain text (a ``TextStream`` each, never lexed as JSON), a channel per choice
# or block and field, closing with its owner: OpenAI-compatible ``reasoning_content`` and
# ``reasoning`` (call index ``_REASONING_FIELD``), OpenRouter's ``reasoning_details``
# entries by their ``index``, Anthropic's ``thinking_delta`` (signed: a mask there ends
# the stream, see ``TextStream``), Gemini's thought parts.
_REASONING_CONTENT = 2
_REASONING = 3
_DETAIL_TEXT = 4
_DETAIL_SUMMARY = 5
_THINKING = 6
THOUGHT = 7
# A structured-output refusal (``delta.refusal``), call index ``_REFUSAL_FIELD``: the
# answer's text, in a field of its own.
_REFUSAL = 8
# Mistral's reasoning: the text chunks of a ``thinking`` part of ``delta.content`` (its
# reasoning models stream ``content`` as a list of parts), unsigned.
_THINKING_CHUNKS = 9
_FIRST_TEXT = _REASONING_CONTENT
_REASONING_FIELDS = (("reasoning_content", _REASONING_CONTENT), ("reasoning", _REASONING))
_DETAILS = {
    "reasoning.text": ("text", _DETAIL_TEXT),
    "reasoning.summary": ("summary", _DETAIL_SUMMARY),
}
_REASONING_FIELD = -2
_REFUSAL_FIELD = -3
# A channel of text: a choice or content block (an int), or a tool call's text.
Channel = int | CallChannel
# The call index of OpenAI's deprecated ``function_call``: one per choice.
_FUNCTION_CALL = -1
# How many of the longest matches a chain of touching masks held whole may span
# (``_chained``): a list of card numbers, each a few characters from the next.
_CHAIN_MATCHES = 4


def signed_channel(channel: Channel) -> bool:
    """Whether a channel's text is reasoning a signature covers (Anthropic's thinking, and
    Converse's read as it): the provider refuses it changed when the client sends it
    back, so it can be refused but not masked."""
    return isinstance(channel, tuple) and channel[2] == _THINKING


class StreamRejectedError(Exception):
    """A reject guard matched in a stream; ``guard`` is its index in the matchers.

    ``found``: the kinds of data it found (builtin and pattern names, never the text),
    which the refusal names as a whole answer's does. ``signed``: a mask guard's match in
    signed reasoning, refused because it cannot be masked."""

    def __init__(self, guard: int, found: tuple[str, ...] = (), *, signed: bool = False) -> None:
        super().__init__(guard)
        self.guard = guard
        self.found = found
        self.signed = signed


def found_in(matchers: Matchers, guard: int, text: str) -> tuple[str, ...]:
    """The kinds of data ``guard`` finds in ``text``: for a refusal's message, read again
    only when a stream is refused."""
    return tuple(
        sorted(
            {
                span.label
                for detector in matchers.guards[guard].detectors
                for span in detector.find(text)
                if span.label
            }
        )
    )


class TextStream:
    """One channel of streamed text through the phase's matchers."""

    __slots__ = ("_before", "_held", "_matchers", "_open", "_signed", "masked")

    def __init__(self, matchers: Matchers, *, before: str = "", signed: bool = False) -> None:
        self._matchers = matchers
        # Signed reasoning: a mask hit refuses, as a reject guard's match does (the hold-back
        # keeps every character of it from leaving first).
        self._signed = signed
        self._held = ""
        # The last character released, for the "stands alone" checks of builtins.
        self._before = before
        # The guard whose too long match was cut where the released text ends: its
        # mask is out, so the rest of that match leaves as nothing (one mask, as whole).
        self._open: int | None = None
        self.masked: set[int] = set()  # guards that masked something

    def push(self, text: str) -> str:
        return self._release(self._held + text, final=False)

    def flush(self) -> str:
        if not self._held:
            return ""
        return self._release(self._held, final=True)

    def _release(self, buffer: str, *, final: bool) -> str:
        cut, hits, refusing, split = _plan(
            self._matchers, self._before, buffer, final=final, continues=self._open
        )
        if refusing:
            guard = min(refusing)
            raise StreamRejectedError(guard, found_in(self._matchers, guard, buffer))
        if hits and self._signed:
            guard = min(hit.guard for hit in hits)
            found = found_in(self._matchers, guard, buffer)
            raise StreamRejectedError(guard, found, signed=True)
        self.masked.update(hit.guard for hit in hits)
        if cut:
            self._before = buffer[cut - 1]
            self._open = split
        self._held = buffer[cut:]
        return apply(buffer[:cut], hits)


def _plan(
    matchers: Matchers, before: str, buffer: str, *, final: bool, continues: int | None = None
) -> tuple[int, list[Hit], list[int], int | None]:
    """What of ``buffer`` (text that follows ``before``, the last character released) can
    leave now: (where it is cut, the mask hits before the cut, the guards refusing what is
    before it, the guard of a too long match cut there), positions in ``buffer``. The rest
    must wait for more text. ``continues``: the guard of a too long match cut where
    ``before`` ends, whose rest (a match of that guard at the buffer's start) is masked
    by nothing: its mask went out already."""
    context = before
    scanned = context + buffer
    offset = len(context)
    _, hits, rejected = matchers.scan_all(scanned)
    reaching_back = any(hit.start < offset < hit.end for hit in hits) or any(
        span.start < offset < span.end for _, span in rejected
    )
    if offset and reaching_back:
        # A match reaching back into text already sent cannot be masked there,
        # and would hide one starting after it: match the held text on its own.
        scanned, offset = buffer, 0
        _, hits, rejected = matchers.scan_all(scanned)
        hits = [
            Hit(0, hit.end, hit.guard, "") if hit.start == 0 and hit.guard == continues else hit
            for hit in hits
        ]
    cut = len(scanned)
    # A match longer than this is longer than any bounded match can be: one of an
    # unbounded pattern past its cap (``stream_max_match``), which is not held whole.
    # Told by its own length, not where it starts: a short match may start that far
    # before a chunk's end, and cut in two its rest would leave unmasked.
    longest = matchers.max_len
    refusing: list[int] = []
    split: int | None = None
    if not final:
        cut = max(offset, cut - matchers.holdback(scanned))
        # A match that runs past the cut may still grow: keep it whole for later.
        spans = _chained(
            [(hit.start, hit.end) for hit in hits if hit.end - hit.start <= longest],
            longest * _CHAIN_MATCHES,
        )
        spans.extend(
            (span.start, span.end) for _, span in rejected if span.end - span.start <= longest
        )
        moved = True
        while moved:
            moved = False
            for start, end in spans:
                # Only ever earlier, and never before what is already out (a span
                # may start in the released context): so this loop ends.
                if start < cut < end and max(offset, start) < cut:
                    cut = max(offset, start)
                    moved = True
        # Holding a match longer than the cap whole would hold the stream (and scan it
        # all again at each chunk) for as long as the match grows: its part before the
        # cut is refused now, or leaves masked; what follows is matched on its own.
        refusing = [
            guard
            for guard, span in rejected
            if span.end - span.start > longest and span.end > offset
        ]
        for index, hit in enumerate(hits):
            if hit.end - hit.start > longest and hit.start < cut < hit.end:
                hits[index] = Hit(hit.start, cut, hit.guard, hit.replacement)
                split = hit.guard
    # Refused by the first guard (in config order) that found something complete in
    # what would be released.
    refusing.extend(guard for guard, span in rejected if offset < span.end <= cut)
    released = [
        Hit(hit.start - offset, hit.end - offset, hit.guard, hit.replacement)
        for hit in hits
        if hit.start >= offset and hit.end <= cut
    ]
    return cut - offset, released, refusing, split


def _chained(spans: list[tuple[int, int]], limit: int) -> list[tuple[int, int]]:
    """The mask spans, those that touch (at most one character between them) joined
    into one, while the join is at most ``limit`` characters long.

    A match may be found only with the one before it: in ``4111 1111 1111 1111 5105
    1051 0510 5100`` the second card is masked as the rest of a window that begins in
    the first (``detectors.CardDetector``). Released apart, the first masked, the
    second would be matched on its own, without that window, and leave in clear."""
    if len(spans) < 2:
        return spans
    spans.sort()
    joined = [spans[0]]
    for start, end in spans[1:]:
        first, last = joined[-1]
        if last <= start <= last + 1 and end - first <= limit:
            joined[-1] = (first, end)
        else:
            joined.append((start, end))
    return joined


class _JsonStream:
    """What ``ArgumentsStream`` and ``DocumentStream`` share: JSON text held from where the
    last release left the document (``_state``), released by ``_release``, and read as
    plain text by a ``TextStream`` once it stopped being JSON."""

    __slots__ = ("_held", "_matchers", "_state", "_text", "masked")

    def __init__(self, matchers: Matchers) -> None:
        self._matchers = matchers
        self._held = ""  # text not released yet; ``_state`` is where it begins
        self._state = LexState()
        self._text: TextStream | None = None  # once the text stopped being JSON
        self.masked: set[int] = set()

    def push(self, text: str) -> str:
        if self._text is not None:
            return self._text.push(text)
        return self._release(self._held + text, final=False)

    def flush(self) -> str:
        if self._text is not None:
            return self._text.flush()
        if not self._held:
            return ""
        return self._release(self._held, final=True)

    def _release(self, buffer: str, *, final: bool) -> str:
        raise NotImplementedError


class ArgumentsStream(_JsonStream):
    """One tool call's streamed arguments, read as the JSON they are (see module docstring).

    Each push lexes what was held plus the new fragment from where the last release left
    the document, matches each string (decoded) and number on its own with a string's
    hold-back, and releases the JSON text up to the first thing that must wait: the held
    tail of an open string, an escape cut in two, a number that may still grow."""

    __slots__ = ("_last",)

    def __init__(self, matchers: Matchers) -> None:
        super().__init__(matchers)
        self._last = ""  # the last character released, as written

    def _release(self, buffer: str, *, final: bool) -> str:
        lexed = lex(self._state, buffer, final=final)
        if lexed.broken:
            return self._as_text(buffer, final=final)
        cut, hits = self._json_cut(lexed, final=final)
        if final:
            self._state = lexed.state
        else:
            # Were the arguments to stop being JSON later, what was held is read as written
            # with what follows: hold what a text channel would hold too, so a match begun
            # there (a card written as JSON numbers "4111 1111 ...") is still found whole.
            if not _holds_as_text(lexed, len(buffer), cut):
                cut = min(cut, len(buffer) - self._matchers.holdback(buffer))
            if lexed.fixed or hits:
                cut = _outside(cut, [*lexed.fixed, *((hit.start, hit.end) for hit in hits)])
                hits = [hit for hit in hits if hit.end <= cut]
            if cut:
                self._state = state_at(lexed, self._state, buffer, cut)
        self.masked.update(hit.guard for hit in hits)
        if cut:
            self._last = buffer[cut - 1]
        self._held = buffer[cut:]
        return apply(buffer[:cut], hits)

    def _json_cut(self, lexed: Lexed, *, final: bool) -> tuple[int, list[Hit]]:
        """How far the JSON reading lets the text go, and the mask hits (as JSON) before that."""
        cut = lexed.hold
        hits: list[Hit] = []
        refusing: list[int] = []
        refused_in: list[str] = []  # the pieces something was refused in
        for index, (piece, complete) in enumerate(lexed.pieces):
            if not piece.text:
                continue
            # Each piece is read on its own, as in a buffered answer; one going on from
            # the last stretch, after the character released before it.
            before = self._state.before if index == 0 and lexed.continued else ""
            done = final or complete
            piece_cut, found, refused, _ = _plan(self._matchers, before, piece.text, final=done)
            if refused:
                refusing.extend(refused)
                refused_in.append(piece.text)
            if found:
                hits.extend(onto_json(piece, found))
            if not done:
                cut = min(cut, piece.raw(piece_cut))
        if refusing:
            guard = min(refusing)
            kinds = {kind for text in refused_in for kind in found_in(self._matchers, guard, text)}
            raise StreamRejectedError(guard, tuple(sorted(kinds)))
        return cut, hits

    def _as_text(self, buffer: str, *, final: bool) -> str:
        """The arguments stopped being JSON: from what is held on, read them as written."""
        self._held = ""
        text = self._text = TextStream(self._matchers, before=self._last)
        text.masked = self.masked
        released = text.push(buffer)
        return released + text.flush() if final else released


class DocumentStream(_JsonStream):
    """A structured output's streamed text (the request asked for JSON): matched as a
    ``TextStream`` matches, as written and JSON syntax and all (a pattern written against
    the syntax still finds what it found), and masked as a whole answer's text is
    (``matching.onto_document``), so the client still decodes what it assembles.

    Each release is lexed from where the last one left the document (``json_fragments``):
    a mask is kept to the strings and numbers its match covers, its replacement escaped as
    a string needs and a number holding a match made a string; a cut never falls inside an
    escape or a number (held whole until the character after it shows it ended), so no mask
    is written into half of one. Should the text stop being JSON (a model writing prose
    anyway), the rest of it is read and masked as text, by a ``TextStream``."""

    __slots__ = ("_before", "_open")

    def __init__(self, matchers: Matchers) -> None:
        super().__init__(matchers)
        self._before = ""  # the last character released, as written
        # The guard whose too long match was cut where the released text ends (as in a
        # ``TextStream``): its rest leaves as nothing, one mask for the whole match.
        self._open: int | None = None

    def _release(self, buffer: str, *, final: bool) -> str:
        lexed = lex(self._state, buffer, final=final)
        if lexed.broken:
            self._held = ""
            text = self._text = TextStream(self._matchers, before=self._before)
            text.masked = self.masked
            released = text.push(buffer)
            return released + text.flush() if final else released
        cut, hits, refusing, split = _plan(
            self._matchers, self._before, buffer, final=final, continues=self._open
        )
        planned = cut
        if refusing:
            guard = min(refusing)
            raise StreamRejectedError(guard, found_in(self._matchers, guard, buffer))
        if not final:
            # Never into an escape or a number still open (a mask there could not be
            # written as JSON), nor into a match: what follows waits for the next delta.
            cut = min(cut, lexed.hold)
            cut = _outside(cut, [*lexed.fixed, *((hit.start, hit.end) for hit in hits)])
            hits = [hit for hit in hits if hit.end <= cut]
            if cut:
                self._state = state_at(lexed, self._state, buffer, cut)
        else:
            self._state = lexed.state
        self.masked.update(hit.guard for hit in hits)
        if cut:
            self._before = buffer[cut - 1]
            # A too long match cut short goes on only where the plan cut it.
            self._open = split if cut == planned else None
        self._held = buffer[cut:]
        return apply(buffer[:cut], _onto_pieces(lexed, hits))


def _onto_pieces(lexed: Lexed, hits: list[Hit]) -> list[Hit]:
    """Hits found in a stretch read as written, kept to the strings and numbers ``lexed``
    found there, as ``matching.onto_document`` keeps a whole text's: the part of each a hit
    covers is masked, written as JSON (``onto_json``); the syntax around them stays.

    An end that falls inside an escape moves to the escape's end: read as written,
    ``\\njane@example.com`` holds an address beginning at the ``n`` of ``\\n``, and
    masked from there it left half of the escape (``\\<EMAIL>``), no JSON."""
    if not hits:
        return hits
    by_piece: dict[int, list[Hit]] = {}
    for hit in hits:
        for index, (piece, _) in enumerate(lexed.pieces):
            first, last = piece.raw(0), piece.raw(len(piece.text))
            start, end = max(hit.start, first), min(hit.end, last)
            if not piece.number:
                start, end = _past_escape(start, lexed.fixed), _past_escape(end, lexed.fixed)
            if start < end:
                inside = Hit(piece.decoded(start), piece.decoded(end), hit.guard, hit.replacement)
                by_piece.setdefault(index, []).append(inside)
    mapped = [
        hit
        for index, inside in by_piece.items()
        for hit in onto_json(lexed.pieces[index][0], inside)
    ]
    mapped.sort(key=lambda hit: hit.start)
    return mapped


def _past_escape(position: int, spans: list[tuple[int, int]]) -> int:
    """``position``, moved to the end of the span (an escape) it falls strictly inside."""
    for start, end in spans:
        if start < position < end:
            return end
    return position


def _holds_as_text(lexed: Lexed, length: int, cut: int) -> bool:
    """Whether cutting a stretch of ``length`` characters at ``cut`` already holds what a
    text channel would: the stretch ends in a string written without escapes, and the
    hold-back begins inside it, so it was counted over the very characters a text channel
    counts (the common case, spared a second count)."""
    if lexed.hold < length or not lexed.state.in_string or not lexed.pieces:
        return False
    piece, complete = lexed.pieces[-1]
    return not complete and piece.as_written and cut > piece.raw(0)


def _outside(cut: int, spans: list[tuple[int, int]]) -> int:
    """``cut``, moved back out of every span it falls strictly inside."""
    moved = True
    while moved:
        moved = False
        for start, end in spans:
            if start < cut < end:
                cut = start
                moved = True
    return cut


@dataclass(slots=True)
class StreamEvent:
    """One SSE event of the answer, as read: where its text is, and what it closes."""

    raw: bytes
    payload: dict[str, Any] | None = None
    # (channel, the dict holding the text, its key): text deltas and argument fragments
    texts: list[tuple[Channel, dict[str, Any], str]] = field(default_factory=list)
    # Choices or blocks that end here (their calls and reasoning with them), and reasoning
    # channels that end where their choice's answer begins.
    closes: list[Channel] = field(default_factory=list)
    done: bool = False
    changed: bool = False
    # Text that comes whole in this one event (a Gemini function call's arguments):
    # matched at once, as a buffered answer's is (``_guard_whole``). None: there is none.
    whole: list[TextSlot] | None = None


class StreamGuard:
    """The client-bound SSE events of one answer, guarded (see module docstring)."""

    def __init__(
        self,
        matchers: Matchers,
        *,
        anthropic: bool,
        completions: bool = False,
        json_text: bool = False,
    ) -> None:
        self._matchers = matchers
        self._anthropic = anthropic
        # OpenAI text completion chunks: a choice's text is its ``text``, not a delta's.
        self._completions = completions
        # The request asked for JSON (``structured_output``): the answer's text is read as
        # arguments are, so a mask keeps it the JSON the client decodes.
        self._json_text = json_text
        self._channels: dict[Channel, TextStream | ArgumentsStream | DocumentStream] = {}
        # The tool calls (and reasoning) seen, in order: their channels close with their
        # owner's.
        self._calls: list[CallChannel] = []
        # By choice, its reasoning channels: what they hold leaves before its answer.
        self._reasoning: dict[int, list[CallChannel]] = {}
        # The start of an event whose end has not come: LF, CRLF and lone-CR line ends
        # alike, searched only in new bytes, and bounded (``sse.EventBuffer``).
        self._events = EventBuffer()
        self._envelope: dict[str, Any] | None = None
        # The guards that masked text carried whole (``StreamEvent.whole``).
        self._whole_masked: set[int] = set()
        self.ended = False
        self.rejected_by: int | None = None
        # The refusal that ended the stream, for its message (``StreamRejectedError``).
        self.rejection: StreamRejectedError | None = None

    @property
    def masked(self) -> set[int]:
        found = set(self._whole_masked)
        for channel in self._channels.values():
            found |= channel.masked
        return found

    def split(self, data: bytes, end_of_stream: bool) -> list[StreamEvent]:
        """The complete events in ``data`` (a partial one waits for the next chunk)."""
        if self.ended:
            return []
        # An event past the bound is dropped, never sent unguarded; the stream's reader
        # (whose buffer has the same bound) ends the stream with its error.
        complete = self._events.whole_events(data, end_of_stream)
        events: list[StreamEvent] = []
        for raw in complete.split(_EVENT_END):
            if raw.strip():
                events.append(self._read(raw + _EVENT_END))
        return events

    def render(
        self, events: list[StreamEvent], end_of_stream: bool, error: Callable[[int], bytes]
    ) -> bytes:
        """Mask the events' text and serialise them; ``error(guard)`` is the error body used
        when the reject guard ``guard`` matches."""
        if self.ended:
            return b""
        out: list[bytes] = []
        try:
            for event in events:
                if event.whole:
                    self._guard_whole(event)
                for channel, holder, key in event.texts:
                    released = self._channel(channel).push(holder[key])
                    if released != holder[key]:
                        holder[key] = released
                        event.changed = True
                for owner in event.closes:
                    self._close(owner, event, out)
                    if self._calls and isinstance(owner, int):
                        for call in [c for c in self._calls if c[0] == owner]:
                            self._close(call, event, out)
                if event.done:
                    for channel in list(self._channels):
                        out.extend(self._flush(channel, self._envelope))
                out.append(self._serialise(event) if event.changed else event.raw)
            if end_of_stream:
                for channel in list(self._channels):
                    out.extend(self._flush(channel, self._envelope))
        except StreamRejectedError as rejected:
            self.ended = True
            self.rejected_by = rejected.guard
            self.rejection = rejected
            out.append(self._error_event(error(rejected.guard)))
        return b"".join(out)

    def _channel(self, channel: Channel) -> TextStream | ArgumentsStream | DocumentStream:
        found = self._channels.get(channel)
        if found is None:
            if isinstance(channel, tuple) and channel[2] >= _FIRST_TEXT:
                found = self._channels[channel] = TextStream(
                    self._matchers, signed=channel[2] == _THINKING
                )
                self._calls.append(channel)
                if channel[2] != _REFUSAL:
                    self._reasoning.setdefault(channel[0], []).append(channel)
            elif isinstance(channel, tuple):
                # A custom tool's input too: read as JSON while it is JSON (a key
                # spelled with an escape is still found), as written once it is not.
                found = self._channels[channel] = ArgumentsStream(self._matchers)
                self._calls.append(channel)
            elif self._json_text:
                # A structured output's text: masked as JSON while it is JSON (a model
                # writing prose anyway is read as text from its first character).
                found = self._channels[channel] = DocumentStream(self._matchers)
            else:
                found = self._channels[channel] = TextStream(self._matchers)
        return found

    def _close(self, channel: Channel, event: StreamEvent, out: list[bytes]) -> None:
        """Release what ``channel`` held, as ``event`` closes it."""
        own = [(h, k) for c, h, k in event.texts if c == channel]
        if not own:
            out.extend(self._flush(channel, event.payload))
            return
        # The closing event carries text of the channel itself: what was held follows it there.
        stream = self._channels.get(channel)
        rest = stream.flush() if stream is not None else ""
        if rest:
            holder, key = own[-1]
            holder[key] += rest
            event.changed = True

    def _flush(self, channel: Channel, envelope: dict[str, Any] | None) -> list[bytes]:
        stream = self._channels.get(channel)
        if stream is None:
            return []
        text = stream.flush()
        if not text:
            return []
        return [self._released_event(channel, text, envelope)]

    def _read(self, raw: bytes) -> StreamEvent:
        event = StreamEvent(raw)
        lines = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return event
        data = b"\n".join(lines)
        if data == b"[DONE]":
            event.done = True
            return event
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event
        if not isinstance(payload, dict):
            return event
        event.payload = payload
        self._read_payload(event, payload)
        return event

    def _read_payload(self, event: StreamEvent, payload: dict[str, Any]) -> None:
        """Where the event's text is, and what it closes: the API's own reading."""
        if self._anthropic:
            self._read_anthropic(event, payload)
        else:
            self._read_openai(event, payload)

    def _guard_whole(self, event: StreamEvent) -> None:
        """Match the text an event carries whole (an Anthropic tool result, a Gemini
        function call) at once, as a buffered answer's is: a mask writes into the event,
        a reject ends the stream before it."""
        assert event.whole is not None
        for slot in event.whole:
            text = slot.text
            if not text:
                continue
            rejecting, hits, spans = self._matchers.scan(text, json_text=slot.is_json)
            if rejecting is not None:
                found = self._matchers.guards[rejecting].labels(spans)
                raise StreamRejectedError(rejecting, tuple(found))
            if hits:
                slot.write(apply(text, hits))
                self._whole_masked.update(hit.guard for hit in hits)
                event.changed = True

    def _read_openai(self, event: StreamEvent, payload: dict[str, Any]) -> None:
        choices = payload.get("choices")
        if not isinstance(choices, list):
            return
        self._envelope = payload
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) else 0
            if self._completions:
                if isinstance(choice.get("text"), str):
                    event.texts.append((index, choice, "text"))
                if choice.get("finish_reason") is not None:
                    event.closes.append(index)
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                content = delta.get("content")
                if isinstance(content, str):
                    event.texts.append((index, delta, "content"))
                elif isinstance(content, list):
                    # Mistral's reasoning models: parts, not a string. Its text parts
                    # are the answer's text, its thinking parts' chunks reasoning.
                    content = _read_parts(event, index, content)
                # Two key lookups: all a chunk without tool calls pays for them.
                calls = "tool_calls" in delta or "function_call" in delta
                if calls:
                    _read_openai_calls(event, index, delta)
                # Three more for reasoning, which an answer's chunks do not carry.
                for name, carries in _REASONING_FIELDS:
                    if name in delta and isinstance(delta[name], str):
                        event.texts.append(((index, _REASONING_FIELD, carries), delta, name))
                if "reasoning_details" in delta:
                    _read_details(event, index, delta["reasoning_details"])
                # One more for a structured-output refusal (most chunks say null there).
                refusal = delta.get("refusal")
                if isinstance(refusal, str):
                    event.texts.append(((index, _REFUSAL_FIELD, _REFUSAL), delta, "refusal"))
                answers = content or calls or refusal
                if self._reasoning and answers and index in self._reasoning:
                    # The answer begins: the reasoning held goes out before it.
                    event.closes.extend(self._reasoning[index])
            if choice.get("finish_reason") is not None:
                event.closes.append(index)

    def _read_anthropic(self, event: StreamEvent, payload: dict[str, Any]) -> None:
        kind = payload.get("type")
        index = payload.get("index", 0)
        index = index if isinstance(index, int) else 0
        if kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                return
            part = delta.get("type")
            if part == "text_delta" and isinstance(delta.get("text"), str):
                event.texts.append((index, delta, "text"))
            elif part == "thinking_delta" and isinstance(delta.get("thinking"), str):
                event.texts.append(((index, 0, _THINKING), delta, "thinking"))
            elif part == "signature_delta":
                # The signature ends the thinking: what it held goes out before it.
                event.closes.append((index, 0, _THINKING))
            elif part == "input_json_delta" and isinstance(delta.get("partial_json"), str):
                # A tool_use block's input (server and MCP tool calls' too), as JSON text.
                event.texts.append(((index, 0, _ARGUMENTS), delta, "partial_json"))
        elif kind == "content_block_stop":
            event.closes.append(index)
        elif kind == "content_block_start":
            # What a server tool or an MCP server returned comes whole here, no deltas.
            block = payload.get("content_block")
            if isinstance(block, dict):
                event.whole = whole_block_slots(block) or None
        elif kind == "message_stop":
            event.done = True

    def _serialise(self, event: StreamEvent) -> bytes:
        assert event.payload is not None
        if self._anthropic:
            name = str(event.payload.get("type", "")).encode()
            return b"event: " + name + b"\ndata: " + orjson.dumps(event.payload) + _EVENT_END
        return b"data: " + orjson.dumps(event.payload) + _EVENT_END

    def _released_event(
        self, channel: Channel, text: str, envelope: dict[str, Any] | None
    ) -> bytes:
        """An extra delta carrying what ``channel`` held, in the channel's own shape."""
        owner, delta = self._delta(channel, text)
        if self._anthropic:
            payload = {"type": "content_block_delta", "index": owner, "delta": delta}
            return b"event: content_block_delta\ndata: " + orjson.dumps(payload) + _EVENT_END
        chunk = {key: value for key, value in (envelope or {}).items() if key != "choices"}
        chunk.setdefault(
            "object", "text_completion" if self._completions else "chat.completion.chunk"
        )
        if "usage" in chunk:
            chunk["usage"] = None
        # A text completion's channels are its choices' texts alone (no tool calls).
        choice = (
            {"index": owner, "text": text}
            if self._completions
            else {"index": owner, "delta": delta}
        )
        chunk["choices"] = [{**choice, "logprobs": None, "finish_reason": None}]
        return b"data: " + orjson.dumps(chunk) + _EVENT_END

    def _delta(self, channel: Channel, text: str) -> tuple[int, dict[str, Any]]:
        if not isinstance(channel, tuple):
            if self._anthropic:
                return channel, {"type": "text_delta", "text": text}
            return channel, {"content": text}
        owner, call, carries = channel
        if carries == _THINKING:
            return owner, {"type": "thinking_delta", "thinking": text}
        if carries == _REFUSAL:
            return owner, {"refusal": text}
        if carries == _THINKING_CHUNKS:
            thinking = {"type": "thinking", "thinking": [{"type": "text", "text": text}]}
            return owner, {"content": [thinking]}
        if self._anthropic:
            return owner, {"type": "input_json_delta", "partial_json": text}
        if carries in (_REASONING_CONTENT, _REASONING):
            return owner, {_REASONING_FIELDS[carries - _REASONING_CONTENT][0]: text}
        if carries in (_DETAIL_TEXT, _DETAIL_SUMMARY):
            kind, name = next(
                (kind, name) for kind, (name, code) in _DETAILS.items() if code == carries
            )
            return owner, {"reasoning_details": [{"type": kind, name: text, "index": call}]}
        if call == _FUNCTION_CALL:
            return owner, {"function_call": {"arguments": text}}
        # Later deltas of a call carry its index and text only (the first had its id).
        if carries == _CUSTOM_INPUT:
            return owner, {"tool_calls": [{"index": call, "custom": {"input": text}}]}
        return owner, {"tool_calls": [{"index": call, "function": {"arguments": text}}]}

    def _error_event(self, error: bytes) -> bytes:
        if self._anthropic:
            return b"event: error\ndata: " + error + _EVENT_END
        return b"data: " + error + _EVENT_END + DONE

    def texts(
        self, events: list[StreamEvent]
    ) -> list[tuple[StreamEvent, Channel, dict[str, Any], str]]:
        """Every text delta and argument fragment of the events, and the text they carry
        whole, for a webhook to see and rewrite (a buffered answer's webhook sees its tool
        calls' arguments and results too)."""
        found: list[tuple[StreamEvent, Channel, dict[str, Any], str]] = [
            (event, *slot) for event in events for slot in event.texts
        ]
        for event in events:
            for whole in event.whole or ():
                found.append((event, 0, whole.holder, whole.key))
        return found


def _read_openai_calls(event: StreamEvent, choice: int, delta: dict[str, Any]) -> None:
    """The argument (and custom input) fragments of a choice delta's tool calls, a
    channel per call and kind of text."""
    calls = delta.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if not isinstance(call, dict):
                continue
            function = call.get("function")
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                event.texts.append(((choice, _position(call), _ARGUMENTS), function, "arguments"))
            # One membership test: all a function call's delta pays for custom tools.
            if "custom" in call:
                custom = call["custom"]
                if isinstance(custom, dict) and isinstance(custom.get("input"), str):
                    event.texts.append(((choice, _position(call), _CUSTOM_INPUT), custom, "input"))
    legacy = delta.get("function_call")
    if isinstance(legacy, dict) and isinstance(legacy.get("arguments"), str):
        event.texts.append(((choice, _FUNCTION_CALL, _ARGUMENTS), legacy, "arguments"))


def _read_parts(event: StreamEvent, choice: int, content: list[Any]) -> bool:
    """The text of a delta whose ``content`` is a list of parts (Mistral's reasoning
    models): each text part's ``text`` in the choice's text channel, each chunk of a
    ``thinking`` part in its reasoning channel. Whether the answer's text begins here
    (a thinking part alone does not begin it)."""
    answers = False
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            event.texts.append((choice, part, "text"))
            answers = answers or bool(part["text"])
        elif kind == "thinking":
            for chunk in thinking_chunks(part):
                channel = (choice, _REASONING_FIELD, _THINKING_CHUNKS)
                event.texts.append((channel, chunk, "text"))
    return answers


def _read_details(event: StreamEvent, choice: int, details: Any) -> None:
    """The text of a delta's ``reasoning_details`` entries (OpenRouter), a channel per
    entry index and kind."""
    if not isinstance(details, list):
        return
    for detail in details:
        if not isinstance(detail, dict):
            continue
        kind = detail.get("type")
        found = _DETAILS.get(kind) if isinstance(kind, str) else None
        if found is not None and isinstance(detail.get(found[0]), str):
            name, carries = found
            event.texts.append(((choice, _position(detail), carries), detail, name))


def _position(call: dict[str, Any]) -> int:
    """A tool call delta's index. Every call of OpenAI's carries it; one without (or with a
    negative one) is read as the first, so its text is still guarded."""
    position = call.get("index", 0)
    return position if isinstance(position, int) and position >= 0 else 0
