"""Where the text of a request or a buffered answer lives, as slots a guard reads and writes.

A ``TextSlot`` points at one string inside the parsed body (a message's
``content``, one text or refusal part of it, an OpenAI assistant's ``refusal``,
Anthropic's ``system``, a ``tool_result``'s or ``mcp_tool_result``'s content, the
text of a ``document`` or ``search_result`` block, the text of a server tool's
result, a choice's message, the arguments of a tool call), so guards read every
piece of text and write masked text back in place, whether content came as a
string or as an array of parts. A text file an OpenAI ``file`` part carries (its
``file_data``, base64 of a text type) is a slot too, read decoded and written back
encoded (``attached_text``). Images, audio and PDFs are not text slots.

Claude's server tools (web search and fetch, code execution, bash, the text editor,
tool search, and those Anthropic adds later) return ``<tool>_tool_result`` blocks,
each result its own shape: a fetched page as a ``document``, a run's ``stdout`` and
``stderr``, a viewed file's ``content``, an edit's ``lines``, an ``error_message``, a
search result's ``title``. Their ``content`` is read whole, field by field, as the
Responses API's items are (``responses_text``): every string but for the fields that
are no text the model reads as language (``_NOT_RESULT_TEXT``: ids, codes, URLs,
timestamps, file ids, and the encrypted and base64 payloads Anthropic decrypts or
decodes itself, which a mask would break), as ``tool``'s.

Tool calls in a conversation's history are text the provider reads back, so a
key or personal data put there must meet the same guards: OpenAI's
``tool_calls[].function.arguments`` (and the deprecated ``function_call``, and a
custom tool's ``input``) are one string each, one slot, marked ``is_json``: the
matchers read such JSON text decoded, string by string (``json_text``), as the
translators and the client's code do; Anthropic's ``tool_use`` ``input`` is an
object, and each of its string leaves is a slot, and so is each key (the tool's
parameter names, which the provider reads as the keys of OpenAI arguments): a
masked key renames its member where it stands (``_Members``). The same holds for a
buffered answer's tool calls.

The names in a request's history are read too, ``fixed`` (``name_slot``): a tool call's
name (OpenAI's ``function.name``, Anthropic's ``tool_use`` ``name``...) and an OpenAI
message's ``name``. A client writes its own history, so a refused term or a key spelled as
a name reached the provider unread; renamed, a call would name no tool, so a mask there
refuses the request. An answer's calls name the tools its request defined (read there),
so answers' names are not read.

Reasoning a client sends back is text the provider reads too: an OpenAI-compatible
assistant's ``reasoning_content`` / ``reasoning`` / ``reasoning_details`` text and the text
chunks of Mistral's ``thinking`` parts, masked in place, and Anthropic's ``thinking``
blocks, ``signed``: a mask cannot be written there, so the stage drops the block from a
closed turn (``drop_reasoning``) or refuses the request.

A bare string among a message's content parts is a slot too: vLLM reads it as a text part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.attached_text import EncodedText, openai_file

# Anthropic blocks that call a tool: their ``input`` object holds the call's arguments.
_TOOL_CALL_BLOCKS = frozenset(("tool_use", "server_tool_use", "mcp_tool_use"))
# Anthropic blocks holding what a tool returned: a string or blocks in ``content``.
_TOOL_RESULT_BLOCKS = frozenset(("tool_result", "mcp_tool_result"))
# How a server tool's result block is named (web_search_tool_result, ...): its
# ``content`` is read field by field (``server_result_slots``).
_SERVER_RESULT = "_tool_result"
# The fields of a server tool's result that hold no text the model reads as language,
# wherever they stand: kinds, ids, codes, URLs and timestamps, file ids and types, tool
# names (renaming one breaks what refers to it), and payloads that are not text: a search
# result's page and a run's output in encrypted form (Anthropic decrypts them; a mask
# would break them), base64 ``data``. A fetched page's text is its document's, read as
# documents are (``_document_slots``).
_NOT_RESULT_TEXT = frozenset(
    (
        "type",
        "id",
        "tool_use_id",
        "caller",
        "cache_control",
        "citations",
        "error_code",
        "file_id",
        "file_type",
        "media_type",
        "url",
        "retrieved_at",
        "page_age",
        "encrypted_content",
        "encrypted_stdout",
        "encrypted_index",
        "data",
        "name",
        "tool_name",
    )
)
# Blocks inside a server tool's result that are read as they are in a message: a fetched
# page's document, text.
_RESULT_BLOCKS = frozenset(("text", "document", "search_result"))
# Parts whose ``text`` the model reads: vLLM's chat API takes the Responses API's
# ``input_text`` and ``output_text`` parts in a message's content as text parts (OpenAI
# refuses them). Left unread, they carried any text past every guard to such a provider.
_TEXT_PARTS = frozenset(("text", "input_text", "output_text"))
# The role of what a server tool returned, as a tool's output is on the other APIs.
_RESULT_ROLE = "tool"
# How deep a tool input is walked: orjson parses at most 1024 levels, so no leaf of a
# parsed body is ever left unread; the bound only caps a body built some other way.
_MAX_INPUT_DEPTH = 1024


# Not frozen: a frozen dataclass's __init__ costs five times as much, and a request's tool
# definitions make hundreds of slots (``definitions``). Compared and hashed by identity.
@dataclass(slots=True, eq=False)
class TextSlot:
    role: str
    holder: Any  # the dict or list holding the string (or a tool input's ``_Members``)
    key: Any  # its key (or index) there
    # The string is JSON text (a tool call's arguments): matchers read it as JSON.
    is_json: bool = False
    # Reasoning a signature covers (Anthropic's ``thinking``, Converse's ``reasoningText``):
    # the provider refuses the block sent back changed, so a mask cannot be written here;
    # the stage refuses the answer instead (``reasoning_slots``).
    signed: bool = False
    # In a request, the reasoning block holding the text: a mask in a signed one drops it
    # from the history where the provider allows that (``drop_closed_reasoning``) rather
    # than change it; a slot whose block a drop took goes with it.
    block: Any = None
    # What the text is, when it cannot change without breaking what refers to it (a
    # tool's name, a schema's property name, a custom tool's grammar: ``definitions``):
    # it is read, but a mask there refuses the request, naming it, rather than rename it.
    fixed: str | None = None
    # A field the provider can go without, and that no replacement fits (an end user's
    # identifier, a prompt cache key: ``request_metadata``): a mask there removes it from
    # the body, as if the client had not sent it. ``outer``: the object holding
    # ``holder`` and its key there, when a removal that leaves ``holder`` empty takes it
    # out too (Anthropic's ``metadata``, whose one member is ``user_id``).
    removable: bool = False
    outer: tuple[dict[str, Any], str] | None = None

    @property
    def text(self) -> str:
        value = self.holder[self.key]
        return value if isinstance(value, str) else ""

    def write(self, text: str) -> None:
        self.holder[self.key] = text

    def remove(self) -> None:
        """Take a ``removable`` field out of the body (its slot must be read no more)."""
        del self.holder[self.key]
        if self.outer is not None and not self.holder:
            holder, key = self.outer
            del holder[key]

    @property
    def chars(self) -> int:
        """The text's length as the quota's estimate counts it: a file's base64 is not
        decoded for it (``attached_text.EncodedText``)."""
        if isinstance(self.holder, EncodedText):
            return self.holder.chars
        return len(self.text)


# What a name in a request's history is, as a refusal of a mask there says it.
CALL_NAME = "a tool call's name"
MESSAGE_NAME = "a message's name"
SERVER_NAME = "an MCP server's name"


def name_slot(
    role: str, holder: Any, key: str, slots: list[TextSlot], fixed: str = CALL_NAME
) -> None:
    """A name in a request's history (``holder[key]``), read but never masked."""
    if isinstance(holder, dict) and isinstance(holder.get(key), str):
        slots.append(TextSlot(role, holder, key, fixed=fixed))


def _content_slots(
    role: str, holder: dict[str, Any], key: str, slots: list[TextSlot], *, names: bool = False
) -> None:
    content = holder.get(key)
    if isinstance(content, str):
        slots.append(TextSlot(role, holder, key))
    elif isinstance(content, list):
        for index, part in enumerate(content):
            if isinstance(part, dict):
                _block_slots(role, part, slots, names=names)
            elif isinstance(part, str):
                # A bare string among the parts: vLLM takes it as a text part (its
                # content part type includes ``str``), so the model reads it. Left
                # unread, it carried any text past every guard to such a provider;
                # the others refuse the request.
                slots.append(TextSlot(role, content, index))


def _block_slots(
    role: str, block: dict[str, Any], slots: list[TextSlot], *, names: bool = False
) -> None:
    """One block's text; ``names``: a request's, whose tool calls' names are read too."""
    kind = block.get("type")
    if not isinstance(kind, str):
        # No block the provider takes (it refuses it); a list or an object here is no
        # key of the sets below (unhashable), and must not fail the gateway.
        return
    if kind in _TEXT_PARTS and isinstance(block.get("text"), str):
        slots.append(TextSlot(role, block, "text"))
    elif kind == "thinking" and isinstance(block.get("thinking"), str):
        # Claude's thinking sent back in a request's history: signed (Anthropic refuses
        # it changed), so a mask drops it where it may go (``drop_closed_reasoning``).
        # An answer's thinking is read by ``anthropic_answer_slots``.
        slots.append(TextSlot(role, block, "thinking", signed=True, block=block))
    elif kind == "thinking" and isinstance(block.get("thinking"), list):
        # Mistral's reasoning (``thinking_chunks``), sent back as its clients keep it:
        # no signature covers it, so a mask writes in place.
        slots.extend(TextSlot(role, chunk, "text") for chunk in thinking_chunks(block))
    elif kind == "refusal" and isinstance(block.get("refusal"), str):
        # An OpenAI refusal part: the provider reads it, and the Anthropic and Bedrock
        # translators make it a text block (a system message's too).
        slots.append(TextSlot(role, block, "refusal"))
    elif kind == "file" and isinstance(block.get("file"), dict):
        # An OpenAI file part: a text file's data URL is read decoded (``attached_text``);
        # a PDF or a file id is not text.
        text_file = openai_file(block["file"])
        if text_file is not None:
            slots.append(TextSlot(role, text_file, "file_data"))
    elif kind in _TOOL_RESULT_BLOCKS:
        # Anthropic's tool output, a string or blocks: the model reads it, as it
        # reads an OpenAI "tool" message's content (an MCP server's result alike).
        _content_slots(role, block, "content", slots)
    elif kind in ("document", "search_result"):
        _document_slots(role, block, slots)
    elif kind in _TOOL_CALL_BLOCKS:
        if names:
            name_slot(role, block, "server_name", slots, SERVER_NAME)
            name_slot(role, block, "name", slots)
        tool_input_slots(role, block, slots)
    elif kind.endswith(_SERVER_RESULT):
        # A server tool's result (web fetch, code execution...): read, or its text
        # reached the model past every guard.
        server_result_slots(block, slots)


def thinking_chunks(block: dict[str, Any]) -> list[dict[str, Any]]:
    """The text chunks of a Mistral ``thinking`` part: its reasoning models (Magistral,
    and others with ``reasoning_effort``) answer with ``content`` as a list of parts,
    their reasoning ``{"type": "thinking", "thinking": [{"type": "text", "text": ...}]}``
    beside the answer's text parts, and take that content back in a later turn."""
    chunks = block.get("thinking")
    if not isinstance(chunks, list):
        return []
    return [
        chunk
        for chunk in chunks
        if isinstance(chunk, dict)
        and chunk.get("type") == "text"
        and isinstance(chunk.get("text"), str)
    ]


def server_result_slots(block: dict[str, Any], slots: list[TextSlot]) -> None:
    """The text of a server tool's result block, in document order (module docstring).

    Walked with a list, not recursion, as tool inputs are; only a nested text, document
    or search result block is read by ``_block_slots``, whose results hold no deeper
    server results. A viewed file that is not text (an image, a PDF) is not read.
    """
    if "content" not in block:
        return
    pending: list[tuple[Any, Any]] = [(block, "content")]
    while pending:
        holder, key = pending.pop()
        value = holder[key]
        if isinstance(value, str):
            slots.append(TextSlot(_RESULT_ROLE, holder, key))
        elif isinstance(value, dict):
            kind = value.get("type")
            if isinstance(kind, str) and kind in _RESULT_BLOCKS:
                _block_slots(_RESULT_ROLE, value, slots)
            elif value.get("file_type", "text") == "text":
                # Pushed last to first, so they come off the list in order.
                fields = [name for name in value if name not in _NOT_RESULT_TEXT]
                pending.extend((value, name) for name in reversed(fields))
        elif isinstance(value, list):
            pending.extend((value, index) for index in range(len(value) - 1, -1, -1))


def whole_block_slots(block: dict[str, Any]) -> list[TextSlot]:
    """The text of a block that comes whole in a stream's ``content_block_start``: what a
    server tool or an MCP server returned. Other blocks' text comes in deltas (a start's
    text and input are empty), and is not read here."""
    kind = block.get("type")
    slots: list[TextSlot] = []
    if isinstance(kind, str) and kind.endswith(_SERVER_RESULT):
        _block_slots("assistant", block, slots)
    return slots


def _document_slots(role: str, block: dict[str, Any], slots: list[TextSlot]) -> None:
    """Anthropic's document and search result blocks: prompt text in another envelope.

    The model reads their ``title`` and ``context``, a plain-text document's ``data``,
    a content document's text blocks and a search result's; left unread, they were a
    way around every guard. PDFs (base64, URL, file ids) are not text.
    """
    for field in ("title", "context"):
        if isinstance(block.get(field), str):
            slots.append(TextSlot(role, block, field))
    if block.get("type") == "search_result":
        _content_slots(role, block, "content", slots)
        return
    source = block.get("source")
    if not isinstance(source, dict):
        return
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        slots.append(TextSlot(role, source, "data"))
    elif source.get("type") == "content":
        _content_slots(role, source, "content", slots)


def tool_input_slots(role: str, block: dict[str, Any], slots: list[TextSlot]) -> None:
    """Each key and string leaf of a tool call's ``input`` object, in document order.

    A key comes right before its value, as in the JSON text. An object's members are
    reached through ``_Members`` (by position), so a key a guard renames leaves its
    value's slots, and those of the keys after it, pointing at the right member.
    Walked with a list, not recursion: a deep input cannot exhaust the stack.
    """
    if "input" not in block:  # malformed: the provider refuses it, nothing to read
        return
    pending: list[tuple[Any, Any, int]] = [(block, "input", 0)]
    while pending:
        holder, key, depth = pending.pop()
        value = holder[key]
        if isinstance(value, str):
            slots.append(TextSlot(role, holder, key))
        elif depth >= _MAX_INPUT_DEPTH:
            continue
        elif isinstance(value, dict):
            members = _Members(value)
            # Pushed last to first, so they come off the list in order: name, then value.
            for index in range(len(value) - 1, -1, -1):
                pending.append((members, index, depth + 1))
                pending.append((members.names, index, depth + 1))
        elif isinstance(value, list):
            pending.extend((value, index, depth + 1) for index in range(len(value) - 1, -1, -1))


class _Members:
    """The members of one object of a tool ``input``, by position: their values (a value
    slot's holder) and, through ``names``, their names (a key slot's holder).

    A masked parameter name renames its member where it stands, keeping its value.
    A dict has no rename, and rebuilding the object at each one would make an object
    of n masked names cost n * n. So a renamed member goes to the end of the dict at
    once, and the members after it (now before it) follow it there one by one as
    their names are read (``_settle``), O(1) each: those from ``_next`` on are still
    to move. The stage reads every slot in order, for the matchers as for a webhook's
    masks, so by the end of each pass the object is in its order again; names and
    values are right at every step, whatever the order of the reads.
    """

    __slots__ = ("_next", "_object", "_order", "_suffixes", "names")

    def __init__(self, value: dict[str, Any]) -> None:
        self._object = value
        self._order = list(value)  # each member's current name, in document order
        self._next = len(self._order)  # the first member still to move: none
        self._suffixes: dict[str, int] | None = None  # by wanted name, the last suffix given
        self.names = _Names(self)

    def __getitem__(self, index: int) -> Any:
        return self._object[self._order[index]]

    def __setitem__(self, index: int, value: Any) -> None:
        self._object[self._order[index]] = value

    def name(self, index: int) -> str:
        # Reading a name is the walk reaching its member: it goes back in its place.
        self._settle(index + 1)
        return self._order[index]

    def rename(self, index: int, wanted: str) -> None:
        old = self._order[index]
        name = self._free(wanted, old)
        if name == old:
            return
        if index >= self._next:
            self._settle(index)  # the members still to move before it go first
        elif index != self._next - 1:
            # The object back in order first, if it is not (a name read out of order).
            # The member at _next - 1 is the dict's last already: its name was just read.
            self._settle(len(self._order))
        self._object[name] = self._object.pop(old)
        self._order[index] = name
        self._next = index + 1

    def _free(self, wanted: str, old: str) -> str:
        """``wanted``, or, when another member has it, ``wanted#2`` (``#3``...): two names
        masked alike keep both members, as two masked addresses in a text stay two."""
        if wanted == old or wanted not in self._object:
            return wanted
        if self._suffixes is None:
            self._suffixes = {}
        # Counting on from the last suffix given: n names masked alike cost n, not n * n.
        count = self._suffixes.get(wanted, 1)
        while True:
            count += 1
            name = f"{wanted}#{count}"
            if name == old or name not in self._object:
                self._suffixes[wanted] = count
                return name

    def _settle(self, end: int) -> None:
        """Move the displaced members before ``end`` behind the renamed ones, in order."""
        members = self._object
        while self._next < end:
            name = self._order[self._next]
            members[name] = members.pop(name)
            self._next += 1


class _Names:
    """The names of an object's members, by position: what a key slot reads and writes."""

    __slots__ = ("_members",)

    def __init__(self, members: _Members) -> None:
        self._members = members

    def __getitem__(self, index: int) -> str:
        return self._members.name(index)

    def __setitem__(self, index: int, name: str) -> None:
        self._members.rename(index, name)


def _call_slots(
    role: str, message: dict[str, Any], slots: list[TextSlot], *, names: bool = False
) -> None:
    """The arguments of the tool calls an OpenAI assistant message carries, one slot each
    (``names``: a request's, each call's name before them).

    Arguments are JSON text in a string: one slot each, which matchers read as JSON
    (each string decoded) and mask so that it stays the JSON it was; webhooks and
    moderation get the string as written.
    """
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            if isinstance(call, dict):
                if names:
                    name_slot(role, call.get("function"), "name", slots)
                    name_slot(role, call.get("custom"), "name", slots)
                _string_slot(role, call.get("function"), "arguments", slots, is_json=True)
                _string_slot(role, call.get("custom"), "input", slots, is_json=True)
    if names:
        name_slot(role, message.get("function_call"), "name", slots)
    _string_slot(role, message.get("function_call"), "arguments", slots, is_json=True)


def _string_slot(
    role: str, holder: Any, key: str, slots: list[TextSlot], *, is_json: bool = False
) -> None:
    if isinstance(holder, dict) and isinstance(holder.get(key), str):
        slots.append(TextSlot(role, holder, key, is_json))


def request_slots(body: dict[str, Any]) -> list[TextSlot]:
    """Every text of an OpenAI chat or Anthropic messages request, in order."""
    slots: list[TextSlot] = []
    if "system" in body:  # Anthropic's system prompt, a string or text blocks
        _content_slots("system", body, "system", slots)
    for message in body.get("messages") or ():
        if isinstance(message, dict):
            role = message.get("role")
            role = role if isinstance(role, str) else "user"
            # A participant's name (or a legacy function message's function): the model
            # reads it with the message.
            name_slot(role, message, "name", slots, MESSAGE_NAME)
            _content_slots(role, message, "content", slots, names=True)
            # An OpenAI assistant's refusal, sent back in the history the model reads.
            _string_slot(role, message, "refusal", slots)
            if "tool_calls" in message or "function_call" in message:
                _call_slots(role, message, slots, names=True)
            # Reasoning sent back (DeepSeek's and vLLM's clients do): three key lookups.
            if (
                "reasoning_content" in message
                or "reasoning" in message
                or "reasoning_details" in message
            ):
                _reasoning_slots(role, message, slots, request=True)
    # OpenAI's Predicted Outputs: the text the answer is expected to repeat (most often
    # the file the prompt asks to edit), which the model reads as the prompt's text.
    prediction = body.get("prediction")
    if isinstance(prediction, dict):
        _content_slots("assistant", prediction, "content", slots)
    return slots


def openai_answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """The text, tool-call arguments and reasoning of each choice of an OpenAI chat
    completion; the reasoning after the rest (``reasoning_slots``)."""
    slots: list[TextSlot] = []
    reasoning: list[TextSlot] = []
    for choice in answer.get("choices") or ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            slots.append(TextSlot("assistant", message, "content"))
        elif isinstance(content, list):
            _answer_part_slots(content, slots, reasoning)
        # A structured-output refusal: text the client shows, as it shows the content.
        _string_slot("assistant", message, "refusal", slots)
        if "tool_calls" in message or "function_call" in message:
            _call_slots("assistant", message, slots)
        openai_reasoning_slots(message, reasoning)
    slots.extend(reasoning)
    return slots


def _answer_part_slots(
    content: list[Any], slots: list[TextSlot], reasoning: list[TextSlot]
) -> None:
    """An answer whose ``content`` is a list of parts, as Mistral's reasoning models write
    it: its text parts' text, and the text chunks of its ``thinking`` parts as reasoning
    (``thinking_chunks``; unsigned, masked in place). Read as a string only, such an
    answer reached the client unguarded, its decisions logged ``pass``."""
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text" and isinstance(part.get("text"), str):
            slots.append(TextSlot("assistant", part, "text"))
        elif kind == "thinking":
            chunks = thinking_chunks(part)
            reasoning.extend(TextSlot("assistant", chunk, "text") for chunk in chunks)


# The fields OpenAI-compatible providers show reasoning in, on a message or a stream's
# delta: DeepSeek's and older vLLM's ``reasoning_content`` (the gateway's translation of
# Claude's thinking too), and ``reasoning`` (vLLM, Ollama, Groq, OpenRouter). None is
# signed: an OpenAI client has no way to send reasoning back that a provider checks.
OPENAI_REASONING = ("reasoning_content", "reasoning")
# OpenRouter's ``reasoning_details`` entries, by type: the field of their text.
# ``reasoning.encrypted`` carries opaque ``data``, no text.
REASONING_DETAILS = {"reasoning.text": "text", "reasoning.summary": "summary"}


def openai_reasoning_slots(message: dict[str, Any], slots: list[TextSlot]) -> None:
    """The reasoning an OpenAI-compatible message shows: its reasoning fields and the text
    of its ``reasoning_details``. Reasoning reaches the client as answer text does, so a
    policy that keeps a card number from the answer keeps it from the reasoning too."""
    _reasoning_slots("assistant", message, slots, request=False)


def _reasoning_slots(
    role: str, message: dict[str, Any], slots: list[TextSlot], *, request: bool
) -> None:
    for field in OPENAI_REASONING:
        _string_slot(role, message, field, slots)
    details = message.get("reasoning_details")
    if isinstance(details, list):
        for detail in details:
            if isinstance(detail, dict):
                kind = detail.get("type")
                named = REASONING_DETAILS.get(kind) if isinstance(kind, str) else None
                if named is None or not isinstance(detail.get(named), str):
                    continue
                # Sent back, an entry with a signature (Claude's thinking through
                # OpenRouter) is checked against it: a mask there refuses the request.
                signed = request and bool(detail.get("signature"))
                slots.append(TextSlot(role, detail, named, signed=signed))


def anthropic_answer_slots(answer: dict[str, Any]) -> list[TextSlot]:
    """The text blocks, tool inputs and thinking of an Anthropic message.

    The text of ``thinking`` blocks comes last, each slot ``signed``: Anthropic checks the
    block's signature whenever the client sends it back, so a masked block would fail that
    turn and every later one of the conversation; a mask there refuses the answer
    (``stages.guardrails``). ``redacted_thinking`` is encrypted, no text."""
    slots: list[TextSlot] = []
    thinking: list[TextSlot] = []
    content = answer.get("content")
    if isinstance(content, str):
        slots.append(TextSlot("assistant", answer, "content"))
    elif isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if block.get("type") == "thinking":
                if isinstance(block.get("thinking"), str):
                    thinking.append(TextSlot("assistant", block, "thinking", signed=True))
            else:
                _block_slots("assistant", block, slots)
    slots.extend(thinking)
    return slots


# Anthropic's reasoning blocks: a history's thinking, signed or encrypted.
_REASONING_BLOCKS = frozenset(("thinking", "redacted_thinking"))


def drop_reasoning(body: dict[str, Any], first: dict[str, Any]) -> set[int] | None:
    """Drop the signed thinking block ``first`` from an Anthropic request's history, with
    every reasoning block of the closed turns after it (``drop_closed_reasoning``)."""
    return drop_closed_reasoning(
        _dicts(body.get("messages")), first, _is_reasoning_block, _is_tool_result
    )


def _is_reasoning_block(block: dict[str, Any]) -> bool:
    # A type that is no string (a list, an object: the provider refuses the block) is no
    # key of the set, and must not fail the gateway.
    kind = block.get("type")
    return isinstance(kind, str) and kind in _REASONING_BLOCKS


def _is_tool_result(block: dict[str, Any]) -> bool:
    return block.get("type") == "tool_result"


def drop_closed_reasoning(
    messages: list[dict[str, Any]],
    first: dict[str, Any],
    is_reasoning: Callable[[dict[str, Any]], bool],
    is_tool_result: Callable[[dict[str, Any]], bool],
) -> set[int] | None:
    """Drop the signed reasoning block ``first`` and every reasoning block of the closed
    turns after it; the ``id`` of each block dropped. None, and nothing dropped, when
    ``first`` is not in a closed turn or a message would be left with no content.

    A turn is closed by a user message that answers no tool call (a new turn of the
    user's). The provider lets a client leave out the reasoning of closed turns (Claude's
    older models strip it anyway), never that of the open one: a tool loop's turn must
    start with its signed thinking, unchanged. Every later reasoning block of the closed
    turns goes too: a newer Claude checks each block against what came before it (the
    "prefix check"), and one left out between others fails the blocks after it. Done the
    same at every later request, this leaves the reasoning Claude writes afterwards
    checked against the very history it was written after.
    """
    closed = 0
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if message.get("role") == "user" and not any(
            is_tool_result(block) for block in _dicts(message.get("content"))
        ):
            closed = index
            break
    changes: list[tuple[list[Any], list[Any]]] = []
    dropped: set[int] = set()
    for message in messages[:closed]:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        kept: list[Any] = []
        for block in content:
            if block is first or (dropped and isinstance(block, dict) and is_reasoning(block)):
                dropped.add(id(block))
            else:
                kept.append(block)
        if len(kept) != len(content):
            if not kept:
                return None
            changes.append((content, kept))
    if not dropped:
        return None
    for content, kept in changes:
        content[:] = kept
    return dropped


def _dicts(value: Any) -> list[dict[str, Any]]:
    """The objects of a list; none when ``value`` is no list."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
