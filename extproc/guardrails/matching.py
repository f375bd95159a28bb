"""The matcher guards of one phase, evaluated together on a text.

All literal, pattern and builtin guards of a phase look at the same text at
once: a reject guard that matches anywhere rejects; the spans of the mask
guards are resolved (earliest first, then longest, then the guard listed
first) and replaced. Evaluating them together keeps one pass per text and
lets a stream compute one hold-back for all of them.

A tool call's arguments are JSON text: ``scan(text, json_text=True)`` reads each
of their strings decoded and each number as written (``json_text``), and answers
with spans of the JSON text whose replacements keep it valid JSON. Every other
text (arguments that are no JSON object or array, a tool's output, a prompt) is read
as written and, where it holds JSON escapes, decoded as well (``json_text.loose``):
the model reads ``\\u0040`` as ``@`` there too, and programs write JSON with escapes.
Where such a text is a JSON object or array (a tool's output, a structured answer), its
masks are kept to its strings and numbers (``onto_document``), so it stays JSON.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any

import re2

from extproc.config.guard_model import GuardAction, GuardConfig
from extproc.guardrails.detectors import Detector, Span, builtin, literals, pattern
from extproc.guardrails.fenced_json import fenced_documents
from extproc.guardrails.json_text import Loose, Piece, Pieces, escape, loose, pieces

MASK_DEFAULT = "****"
# What in a pattern looks at where a text begins or ends (``^`` and ``$`` as anchors, or
# anywhere else: a few patterns give up the joined search for nothing).
_ANCHORS = re2.compile(r"[\^$]|\\[Az]")


@dataclass(frozen=True, slots=True)
class Hit:
    """A span one guard found, and what it becomes when masked."""

    start: int
    end: int
    guard: int  # index into Matchers.guards
    replacement: str


class MatcherGuard:
    """One configured literal/pattern/builtin guard, compiled."""

    __slots__ = ("action", "config", "detectors", "name")

    def __init__(self, config: GuardConfig, unbounded_cap: int) -> None:
        self.config = config
        self.name = config.name
        self.action = config.action
        detectors: list[Detector] = []
        if config.literals:
            detectors.append(
                literals(config.literals, "", case_insensitive=config.case_insensitive)
            )
        for entry in config.patterns:
            cap = entry.max_match_chars or unbounded_cap
            detectors.append(
                pattern(
                    entry.pattern,
                    entry.name or "",
                    case_insensitive=config.case_insensitive,
                    unbounded_cap=cap,
                )
            )
        detectors.extend(builtin(kind) for kind in config.builtins)
        self.detectors = tuple(detectors)

    def replacement(self, span: Span) -> str:
        if self.config.replacement is not None:
            return self.config.replacement
        return f"<{span.label}>" if span.label else MASK_DEFAULT

    def found(self, text: str) -> list[str]:
        """What the guard finds in ``text`` read as ``Matchers.scan`` reads plain text
        (as written, and decoded where it holds JSON escapes), by kind, never the text."""
        readings = [text]
        decoded = loose(text)
        if decoded is not None:
            readings.append(decoded.text)
        spans = [span for reading in readings for d in self.detectors for span in d.find(reading)]
        return self.labels(spans)

    def labels(self, spans: list[Span]) -> list[str]:
        """What the guard found, by kind (builtin or pattern name), never the text."""
        return sorted({span.label for span in spans if span.label})


class Matchers:
    """Every matcher guard of one phase of one route.

    All their patterns also form one alternation, searched first: most texts
    hold nothing to find, and then one linear pass answers for every guard.
    """

    __slots__ = ("_any", "_joined", "guards", "max_len")

    def __init__(self, guards: tuple[MatcherGuard, ...]) -> None:
        self.guards = guards
        detectors = [d for guard in guards for d in guard.detectors]
        self.max_len = max((d.max_len for d in detectors), default=1)
        self._any: Any = None
        self._joined: Any = None
        options = re2.Options()
        options.log_errors = False
        options.never_capture = True
        try:
            union = re2.compile("|".join(f"(?:{d.source})" for d in detectors), options)
        except re2.error:
            union = None  # too big for one program: scan pattern by pattern
        if len(detectors) > 1:
            self._any = union
        # Texts joined by newlines hold every match each text holds, where no pattern
        # looks at where a text begins or ends: a newline is no word character, as the
        # edge of a text is not, so ``\b`` reads the same there (``candidates``).
        if detectors and not any(_ANCHORS.search(d.source) for d in detectors):
            self._joined = union

    def __bool__(self) -> bool:
        return bool(self.guards)

    def candidates(self, texts: list[str]) -> set[int] | None:
        """The indexes of the ``texts`` that may hold a match, found by one search over
        them all rather than one per text (a request's tool definitions are hundreds of
        short strings, whose searches cost far more than their text); None when the
        phase's patterns cannot be searched that way (one looks at a text's edges).

        Every text holding a match is among them: the match is in the joined text too,
        and a match the search finds first that runs over it names it as well."""
        if self._joined is None:
            return None
        ends: list[int] = []
        position = 0
        for text in texts:
            position += len(text)
            ends.append(position)
            position += 1  # the newline after it
        found: set[int] = set()
        for match in self._joined.finditer("\n".join(texts)):
            start, end = match.span()
            first = bisect.bisect_left(ends, start)
            last = bisect.bisect_left(ends, max(start, end - 1))
            found.update(range(first, last + 1))
        return found

    def scan(
        self, text: str, *, json_text: bool = False
    ) -> tuple[int | None, list[Hit], list[Span]]:
        """(the first rejecting guard, the mask hits to apply, the rejecting spans).

        With ``json_text`` (a tool call's arguments), a JSON object or array is read
        piece by piece (see ``_scan_json``). Any other text is read as written and,
        where it holds JSON escapes, decoded as well (``_scan_loose``): a tool's
        output is most often JSON a program wrote (``json.dumps`` writes ``José`` as
        ``Jos\\u00e9``), which the model reads as the characters it stands for."""
        found = self._scan_json(text) if json_text else None
        if found is not None:
            rejecting, hits, every = found
        else:
            rejecting, hits, every = self._scan_loose(text)
            if hits and rejecting is None and not json_text:
                # Text that is a JSON document (a tool's output, a structured answer) stays
                # one. Arguments that reach here are known to be none (``_scan_json``).
                hits = onto_document(text, hits)
        return rejecting, hits, [span for guard, span in every if guard == rejecting]

    def _scan_loose(self, text: str) -> tuple[int | None, list[Hit], list[tuple[int, Span]]]:
        """``scan_all`` over text that is no JSON document read piece by piece, as
        written and, where it holds JSON escapes, with every escape decoded
        (``json_text.loose``); text without a backslash is read once, as before.

        Both: the model reads ``\\u0073k-`` as ``sk-`` (in a tool's JSON output, in
        arguments the provider gets as they are or Claude as ``unparsed_arguments``), yet
        may read ``C:\\new`` as a path, not a newline. A decoded match maps onto the
        characters it came from, its escapes whole, and is replaced there by the
        replacement as it is, as a match found as written is."""
        rejecting, hits, every = self.scan_all(text)
        piece = loose(text)
        if piece is None:
            return rejecting, hits, every
        first, decoded_hits, decoded_spans = self.scan_all(piece.text)
        if first is not None and (rejecting is None or first < rejecting):
            rejecting = first
        every.extend(
            (guard, Span(piece.raw(span.start), piece.raw(span.end), span.label))
            for guard, span in decoded_spans
        )
        decoded = [
            Hit(piece.raw(hit.start), piece.raw(hit.end), hit.guard, hit.replacement)
            for hit in decoded_hits
        ]
        if hits:
            hits = _out_of_escapes(hits, piece, decoded)
        # A match found in both readings (no escape in it) is one span: masked once.
        return rejecting, _resolve(hits + decoded), every

    def _scan_json(self, text: str) -> tuple[int | None, list[Hit], list[tuple[int, Span]]] | None:
        """``scan_all`` over each string (decoded, keys too) and number of a JSON document,
        with spans and hits mapped back onto the JSON text; None when it is not one.

        Each piece is read on its own, as each string of an Anthropic tool ``input`` is:
        what its decoded text holds is what the provider and the client read."""
        found = pieces(text)
        if found is None:
            return None
        # One search over the pieces says which may hold a match (``candidates``): a
        # call's arguments can be thousands of strings and numbers, and a search per
        # piece cost more than reading it (records of numbers: 36 ms for 64 KB).
        # Only those are built as pieces (``json_text.Pieces``), in order.
        maybe = self.candidates(found.texts)
        read = range(len(found)) if maybe is None else sorted(maybe)
        rejecting: int | None = None
        hits: list[Hit] = []
        every: list[tuple[int, Span]] = []
        for index in read:
            if not found.texts[index]:
                continue
            piece = found[index]
            first, piece_hits, piece_spans = self.scan_all(piece.text)
            if first is not None and (rejecting is None or first < rejecting):
                rejecting = first
            every.extend(
                (guard, Span(piece.raw(span.start), piece.raw(span.end), span.label))
                for guard, span in piece_spans
            )
            if piece_hits:
                hits.extend(onto_json(piece, piece_hits, nested=True))
        return rejecting, hits, every

    def scan_all(self, text: str) -> tuple[int | None, list[Hit], list[tuple[int, Span]]]:
        """Like ``scan``, with the spans of every rejecting guard (by guard index): a
        stream may release text before a rejecting match that is still growing, and
        must still refuse what another rejecting guard found in it."""
        rejecting: int | None = None
        rejected_spans: list[tuple[int, Span]] = []
        hits: list[Hit] = []
        if self._any is not None and self._any.search(text) is None:
            return rejecting, hits, rejected_spans
        for index, guard in enumerate(self.guards):
            for detector in guard.detectors:
                for span in detector.find(text):
                    if guard.action is GuardAction.REJECT:
                        if rejecting is None:
                            rejecting = index
                        rejected_spans.append((index, span))
                        break
                    hits.append(Hit(span.start, span.end, index, guard.replacement(span)))
        return rejecting, _resolve(hits), rejected_spans

    def holdback(self, text: str, cap: int | None = None) -> int:
        """How many trailing characters could still begin a match that is not complete."""
        longest = 0
        length = len(text)
        for guard in self.guards:
            for detector in guard.detectors:
                limit = min(detector.max_len - 1, length)
                if cap is not None:
                    limit = min(limit, cap)
                if limit <= longest:
                    continue
                longest = max(longest, detector.holdback(text, limit))
        return longest


def _resolve(hits: list[Hit]) -> list[Hit]:
    """Non-overlapping hits: earliest start first, then the longest, then the first guard.

    A hit that overlaps one kept and runs past it keeps its rest: in ``123-45-6789
    4111 1111 1111 1111`` the SSN comes first and a card window begins in it
    (``6789 4111 1111 1111``); dropped whole, it left the card's first twelve digits in
    clear. Every character some mask guard found is masked."""
    if len(hits) < 2:
        return hits
    hits.sort(key=lambda hit: (hit.start, hit.start - hit.end, hit.guard))
    kept: list[Hit] = []
    end = -1
    for hit in hits:
        if hit.start >= end:
            kept.append(hit)
            end = hit.end
        elif hit.end > end:
            kept.append(Hit(end, hit.end, hit.guard, hit.replacement))
            end = hit.end
    return kept


def _out_of_escapes(written: list[Hit], piece: Loose, decoded: list[Hit]) -> list[Hit]:
    """The hits of the reading as written, none of them beginning or ending inside an
    escape of the decoded reading (``\\n`` at its ``n``).

    As written, ``Hi,\\njane@example.com`` holds the address ``njane@example.com``: masked
    there, the ``\\`` was left before the replacement, an escape JSON does not have, so a
    tool's JSON output, or a structured output's answer the client decodes, was no JSON
    any more (``Hi,\\<EMAIL>``), and its newline was lost. Where the decoded reading
    found a match from that escape on (the address after the newline), that one is the
    match: the hit as written keeps to it and the escape stays. Otherwise (``C:\\newsletter``,
    a path's backslash) the hit takes the escape whole, so nothing of what it found is
    left and no half of an escape either."""
    starts = {hit.start for hit in decoded}
    ends = {hit.end for hit in decoded}
    kept: list[Hit] = []
    for hit in written:
        start, end = hit.start, hit.end
        if (inside := piece.escape_around(start)) is not None:
            start = inside[1] if inside[1] in starts else inside[0]
        if (inside := piece.escape_around(end)) is not None:
            end = inside[0] if inside[0] in ends else inside[1]
        if start < end:
            kept.append(Hit(start, end, hit.guard, hit.replacement))
    return kept


def onto_json(piece: Piece, hits: list[Hit], *, nested: bool = False) -> list[Hit]:
    """A piece's hits as spans of the JSON text, replaced by JSON that stays valid.

    In a string, a replacement is escaped (a quote or backslash in it would end or
    break the string). A number is no place for text: one holding a match becomes a
    string, its first hit opening the quote and its last closing it, so every hit
    still names its guard.

    With ``nested`` (the piece is whole, not a stream's string still arriving), a string
    whose text is itself a JSON object or array (JSON encoded twice: a tool's field
    holding a document) has its hits kept to that document's strings and numbers too
    (``onto_document``), each escaped for the inner string and then for the outer one: the
    inner document stays JSON, as the outer one does."""
    if not piece.number:
        inner = pieces(piece.text) if nested else None
        if inner is not None:
            return [
                Hit(piece.raw(hit.start), piece.raw(hit.end), hit.guard, escape(hit.replacement))
                for hit in _onto_pieces(inner, hits)
            ]
        return [
            Hit(piece.raw(hit.start), piece.raw(hit.end), hit.guard, escape(hit.replacement))
            for hit in hits
        ]
    number = piece.text  # as written: digits, ".", "e", "+" and "-" need no escaping
    mapped: list[Hit] = []
    last = len(hits) - 1
    for index, hit in enumerate(hits):
        start, end = piece.start + hit.start, piece.start + hit.end
        replacement = escape(hit.replacement)
        if index == 0:
            replacement = '"' + number[: hit.start] + replacement
            start = piece.start
        if index == last:
            replacement += number[hit.end :] + '"'
            end = piece.end
        mapped.append(Hit(start, end, hit.guard, replacement))
    return mapped


def onto_document(text: str, hits: list[Hit]) -> list[Hit]:
    """Hits found in ``text`` read whole, kept to the strings and numbers of the JSON
    object or array ``text`` is, so that it stays JSON; ``hits`` as they are when it is
    none.

    A tool's output is most often JSON, and so is a structured output's answer, which the
    client's code decodes; both are read as one text (the model reads the JSON syntax
    too), and a match written in that text became JSON no longer: a replacement holding
    a quote ended its string early, a card written as a number became ``<CREDIT_CARD>``
    bare, and a pattern running over a quote or a comma (``secret\\W+\\w+`` in
    ``{"secret": "abc"}``) took the syntax with it (``{"****"}``). Now each string a
    match touches has the part it covers masked, with the replacement escaped as a
    string needs; a number it touches becomes a string, as in a tool call's arguments
    (``onto_json``); the quotes, commas, braces, ``true``, ``false`` and ``null`` and
    the spaces between stay. No character of a string or number the guard found is left.
    """
    found = pieces(text)
    if found is None:
        return _onto_fenced(text, hits)
    return _onto_pieces(found, hits)


def _onto_fenced(text: str, hits: list[Hit]) -> list[Hit]:
    """Hits in prose kept, in each fenced block of it that is a JSON object or array
    (``fenced_json``), to that document's strings and numbers, so the block the user copies
    out stays JSON; the prose around the blocks takes the replacement as it is. A hit
    running from the prose into a block is cut there, each part masked where it falls."""
    blocks = fenced_documents(text)
    if not blocks:
        return hits
    starts = [start for start, _, _ in blocks]
    ends = [end for _, end, _ in blocks]
    inside: list[list[Hit]] = [[] for _ in blocks]
    mapped: list[Hit] = []
    for hit in hits:
        position = hit.start
        index = bisect.bisect_right(ends, position)
        while position < hit.end:
            if index < len(blocks) and starts[index] <= position:
                # In the block: its part, relative to the block's content.
                end = min(hit.end, ends[index])
                offset = starts[index]
                part = Hit(position - offset, end - offset, hit.guard, hit.replacement)
                inside[index].append(part)
                index += 1
            else:
                end = min(hit.end, starts[index]) if index < len(blocks) else hit.end
                mapped.append(Hit(position, end, hit.guard, hit.replacement))
            position = end
    for index, (offset, _, block) in enumerate(blocks):
        if inside[index]:
            mapped += [
                Hit(hit.start + offset, hit.end + offset, hit.guard, hit.replacement)
                for hit in _onto_pieces(block, inside[index])
            ]
    mapped.sort(key=lambda hit: hit.start)
    return mapped


def _onto_pieces(found: Pieces, hits: list[Hit]) -> list[Hit]:
    """``onto_document`` for the document cut into ``found``."""
    by_piece: dict[int, list[Hit]] = {}
    for hit in hits:
        for index in found.touching(hit.start, hit.end):
            piece = found[index]
            # A string's content lies between its quotes; a number is all content.
            first = piece.start if piece.number else piece.start + 1
            last = piece.end if piece.number else piece.end - 1
            start, end = max(hit.start, first), min(hit.end, last)
            if start < end:
                # Its ends fall between escapes (``_out_of_escapes``, or a decoded
                # match's own ends), so they are places in the piece's text.
                inside = Hit(piece.decoded(start), piece.decoded(end), hit.guard, hit.replacement)
                by_piece.setdefault(index, []).append(inside)
    mapped = [
        hit
        for index, inside in by_piece.items()
        for hit in onto_json(found[index], inside, nested=True)
    ]
    mapped.sort(key=lambda hit: hit.start)
    return mapped


def apply(text: str, hits: list[Hit]) -> str:
    """The text with each hit replaced; hits are sorted and do not overlap."""
    if not hits:
        return text
    parts: list[str] = []
    position = 0
    for hit in hits:
        parts.append(text[position : hit.start])
        parts.append(hit.replacement)
        position = hit.end
    parts.append(text[position:])
    return "".join(parts)
