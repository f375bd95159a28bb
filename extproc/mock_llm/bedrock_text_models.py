"""Meta Llama, Mistral and Amazon Titan Text on Bedrock's InvokeModel and
InvokeModelWithResponseStream: each family's body, answer and stream chunks.

``bedrock_api.BedrockEndpoints`` owns the HTTP side (SigV4, faults, AWS-shaped errors, the
writes, the token headers); this module is pure: a body in, an answer or chunk documents
out. Which family serves a model goes by its id (``bedrock_text_families``, which also
knows Cohere Command, Jamba, Palmyra and Mistral's chat body), an inference profile's
geographic prefix removed by the caller:

- ``meta.llama*``: ``{"prompt" (required), "temperature", "top_p", "max_gen_len"}``;
  answers ``{"generation", "prompt_token_count", "generation_token_count",
  "stop_reason"}`` ("stop" or "length").
- ``mistral.mistral-*``, ``mistral.mixtral-*``: ``{"prompt" (required), "max_tokens",
  "stop", "temperature", "top_p", "top_k"}``; answers ``{"outputs": [{"text",
  "stop_reason"}]}`` ("stop", also for a stop sequence, or "length"). Mistral Large 2
  (``mistral.mistral-large-2407``) takes the chat completion's ``messages`` alone, and
  refuses a ``prompt`` body as Bedrock does (its chat body: ``bedrock_chat_bodies``).
- ``amazon.titan-text-*``: ``{"inputText" (required), "textGenerationConfig":
  {"maxTokenCount", "stopSequences", "temperature", "topP"}}``; answers
  ``{"inputTextTokenCount", "results": [{"tokenCount", "outputText",
  "completionReason"}]}`` ("FINISH", "LENGTH", or "STOP_CRITERIA_MET" for a stop
  sequence).
- Amazon Nova's text models (``amazon.nova-micro``, ``-lite``, ``-pro``, ``-premier``,
  ``-2-lite``, ``-2-pro``): ``{"messages" (required), "system", "schemaVersion",
  "inferenceConfig": {"maxTokens" or "max_new_tokens", "temperature", "topP",
  "topK", "stopSequences", ...}, "toolConfig"}``; answers ``{"output": {"message":
  {"role", "content": [{"text"}]}}, "stopReason", "usage"}`` ("end_turn",
  "max_tokens", "stop_sequence"). Its prompt is every text block (system and
  messages); the reply quotes the last user turn.

Bedrock's schema check comes first and names every rule broken, in its words (the wording
of ``bedrock_embeddings``): required keys, then each key's type (``#/top_p: expected type:
Number, found: String``) and lower bound (``#/max_gen_len: 0 is not greater or equal to
1``), then unknown keys (``#: extraneous key [messages] is not permitted``). The
allowance (``max_gen_len``, ``max_tokens``, ``maxTokenCount``) defaults to what AWS's
parameter pages say (512; 8192 for Mistral Large); upper limits are not checked.

The reply is the mock's (``tokens``): ``Mock reply to: <the prompt's first 200
characters>``, one piece per token, cut before the first stop sequence it contains, then
to the allowance; ``x-mock-reply`` chooses the pieces instead (still cut to the
allowance). Input tokens are ``count_tokens(prompt)`` (no message overhead: the prompt is
one string), output tokens the pieces.

The stream is one chunk per piece (one empty piece for an empty reply), each the family's
stream document: Llama ``{"generation", "prompt_token_count" (first chunk only, else
null), "generation_token_count" (running), "stop_reason" (null but on the last)}``,
Mistral ``{"outputs": [{"text", "stop_reason"}]}``, Titan ``{"outputText", "index": 0,
"totalOutputTextTokenCount" (running), "completionReason", "inputTextTokenCount" (first
chunk only)}``. Nova's stream is Converse's events, one a chunk: ``messageStart``, a
``contentBlockDelta`` per piece, ``contentBlockStop``, ``messageStop`` (its
``stopReason``) and ``metadata`` (its ``usage``). Bedrock adds
``amazon-bedrock-invocationMetrics`` to the last one (``invocation_metrics``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from extproc.mock_llm.bedrock_anthropic import (
    INVOCATION_METRICS,
    OUTPUT_TOKEN_COUNT_HEADER,
    StreamCut,
    StreamEnding,
)
from extproc.mock_llm.bedrock_embeddings import (
    INPUT_TOKEN_COUNT_HEADER,
    refuse_violations,
    wrong_type,
)
from extproc.mock_llm.faults import Fault
from extproc.mock_llm.tokens import count_tokens, reply_pieces, reply_text

# How the reply ended, whatever each family calls it.
Finish = Literal["end", "length", "stop_sequence"]
# The allowance AWS's parameter pages give each family when the body names none.
DEFAULT_MAX_TOKENS = 512
MISTRAL_LARGE_MAX_TOKENS = 8192
# The Mistral models that take no text completion body (``prompt``), only the chat
# completion's ``messages``.
MISTRAL_CHAT_ONLY = ("mistral.mistral-large-2407",)
# Mistral's and OpenAI's words (Jamba, Palmyra): a stop sequence ends the reply as the
# model's own end does.
STOP_OR_LENGTH: Mapping[Finish, str] = {"end": "stop", "length": "length", "stop_sequence": "stop"}

# --- Bedrock's schema check ----------------------------------------------------------------------

# A key's check: its path (as Bedrock names it after "#/") and value in, violations out.
Check = Callable[[str, object], list[str]]


def check_string(path: str, value: object) -> list[str]:
    return [] if isinstance(value, str) else [wrong_type(path, "String", value)]


def check_number(path: str, value: object) -> list[str]:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return []
    return [wrong_type(path, "Number", value)]


def check_integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    """An integer within bounds. Upper bounds are checked only where the gateway reads
    the value (how many answers a body asks for): elsewhere the model's limits change."""

    def check(path: str, value: object) -> list[str]:
        # bool is an int subclass; `"max_tokens": true` must not mean 1.
        if not isinstance(value, int) or isinstance(value, bool):
            return [wrong_type(path, "Integer", value)]
        if minimum is not None and value < minimum:
            return [f"#/{path}: {value} is not greater or equal to {minimum}"]
        if maximum is not None and value > maximum:
            return [f"#/{path}: {value} is not less or equal to {maximum}"]
        return []

    return check


def check_boolean(path: str, value: object) -> list[str]:
    return [] if isinstance(value, bool) else [wrong_type(path, "Boolean", value)]


def check_strings(path: str, value: object) -> list[str]:
    if not isinstance(value, list):
        return [wrong_type(path, "JSONArray", value)]
    return [
        violation for i, item in enumerate(value) for violation in check_string(f"{path}/{i}", item)
    ]


def object_violations(
    doc: Mapping[str, Any], schema: Mapping[str, Check], required: Sequence[str], where: str = ""
) -> list[str]:
    """Every rule ``doc`` breaks, in the order Bedrock lists them: required keys, each
    known key's value (in the schema's order), unknown keys."""
    at = f"#/{where}" if where else "#"
    violations = [f"{at}: required key [{key}] not found" for key in required if key not in doc]
    for key, check in schema.items():
        if key in doc:
            violations += check(f"{where}/{key}" if where else key, doc[key])
    violations += [
        f"{at}: extraneous key [{key}] is not permitted" for key in doc if key not in schema
    ]
    return violations


def check_array(path: str, value: object) -> list[str]:
    return [] if isinstance(value, list) else [wrong_type(path, "JSONArray", value)]


def check_object_of_any(path: str, value: object) -> list[str]:
    """An object whose inside the mock leaves to the model (Nova's tools, reasoning)."""
    return [] if isinstance(value, dict) else [wrong_type(path, "JSONObject", value)]


def check_object(schema: Mapping[str, Check]) -> Check:
    """The check of a nested object (Titan's ``textGenerationConfig``): no key required."""

    def check(path: str, value: object) -> list[str]:
        if not isinstance(value, dict):
            return [wrong_type(path, "JSONObject", value)]
        return object_violations(value, schema, (), path)

    return check


# --- Requests and replies ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextRequest:
    """What the mock uses of a body, whichever family's it is."""

    prompt: str
    max_tokens: int  # the allowance: the body's, else the family's default
    stop_sequences: tuple[str, ...] = ()
    quoted: str | None = None  # what the reply quotes, when not the whole prompt
    answers: int = 1  # Cohere Command's num_generations, Jamba's n: each of the allowance


@dataclass(frozen=True, slots=True)
class TextReply:
    pieces: tuple[str, ...]  # of each answer: the mock answers every one alike
    finish: Finish
    input_tokens: int
    answers: int = 1
    prompt: str = ""  # as the request sent it (Cohere Command's answer echoes it)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        """Every answer's tokens: the model generated, and Bedrock bills, each."""
        return len(self.pieces) * self.answers

    @property
    def chunk_pieces(self) -> tuple[str, ...]:
        """The piece of each stream chunk: an empty reply still sends its end in one."""
        return self.pieces or ("",)


class TextFamily(ABC):
    """One model family's InvokeModel body, answer and stream chunk."""

    # The family's words for how a reply ended.
    stop_reasons: ClassVar[Mapping[Finish, str]]

    @abstractmethod
    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        """The request a body makes; raises MalformedInputError as Bedrock refuses it."""

    @abstractmethod
    def answer(self, reply: TextReply) -> dict[str, Any]:
        """InvokeModel's answer."""

    @abstractmethod
    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        """The stream's chunk at position ``at`` (its last one says how the reply ended)."""

    def stop_reason(self, reply: TextReply, at: int) -> str | None:
        """A chunk's stop reason: null but on the last chunk."""
        return self.stop_reasons[reply.finish] if at == len(reply.chunk_pieces) - 1 else None

    def chunks(self, reply: TextReply) -> list[dict[str, Any]]:
        """The stream's chunk documents: one a piece."""
        return [self.chunk(reply, at) for at in range(len(reply.chunk_pieces))]


class ManyAnswers(TextFamily):
    """A family whose body may ask for several answers (Cohere Command's
    ``num_generations``, Jamba's ``n``): its stream sends each answer's pieces in turn,
    then one chunk that ends them all (to which Bedrock adds its metrics)."""

    @abstractmethod
    def piece(self, reply: TextReply, answer: int, at: int) -> dict[str, Any]:
        """The chunk of answer ``answer``'s piece at ``at``."""

    @abstractmethod
    def end(self, reply: TextReply) -> dict[str, Any]:
        """The stream's last chunk: how the answers ended."""

    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        """The first answer's chunk at ``at``."""
        return self.piece(reply, 0, at)

    def chunks(self, reply: TextReply) -> list[dict[str, Any]]:
        # An empty reply sends its end alone: there is no piece to carry it.
        pieces = [
            self.piece(reply, answer, at)
            for answer in range(reply.answers)
            for at in range(len(reply.pieces))
        ]
        return [*pieces, self.end(reply)]


class Llama(TextFamily):
    # Llama's body takes no stop sequences, so its reply never ends on one.
    stop_reasons: ClassVar[Mapping[Finish, str]] = {"end": "stop", "length": "length"}
    _schema: ClassVar[Mapping[str, Check]] = {
        "prompt": check_string,
        "temperature": check_number,
        "top_p": check_number,
        "max_gen_len": check_integer(1),
    }

    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        refuse_violations(object_violations(doc, self._schema, ("prompt",)))
        return TextRequest(doc["prompt"], doc.get("max_gen_len", DEFAULT_MAX_TOKENS))

    def answer(self, reply: TextReply) -> dict[str, Any]:
        return {
            "generation": reply.text,
            "prompt_token_count": reply.input_tokens,
            "generation_token_count": reply.output_tokens,
            "stop_reason": self.stop_reasons[reply.finish],
        }

    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        return {
            "generation": reply.chunk_pieces[at],
            "prompt_token_count": reply.input_tokens if at == 0 else None,
            "generation_token_count": min(at + 1, reply.output_tokens),
            "stop_reason": self.stop_reason(reply, at),
        }


class Mistral(TextFamily):
    stop_reasons = STOP_OR_LENGTH
    _schema: ClassVar[Mapping[str, Check]] = {
        "prompt": check_string,
        "max_tokens": check_integer(1),
        "stop": check_strings,
        "temperature": check_number,
        "top_p": check_number,
        "top_k": check_integer(),
    }

    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        if model.startswith(MISTRAL_CHAT_ONLY) and "prompt" in doc:
            # Mistral Large 2 takes the chat completion's messages alone (which the mock
            # does not answer): Bedrock refuses the text completion's body.
            refuse_violations(
                [
                    "#: required key [messages] not found",
                    "#: extraneous key [prompt] is not permitted",
                ]
            )
        refuse_violations(object_violations(doc, self._schema, ("prompt",)))
        default = (
            MISTRAL_LARGE_MAX_TOKENS
            if model.startswith("mistral.mistral-large")
            else DEFAULT_MAX_TOKENS
        )
        return TextRequest(
            doc["prompt"], doc.get("max_tokens", default), tuple(doc.get("stop", ()))
        )

    def answer(self, reply: TextReply) -> dict[str, Any]:
        return {"outputs": [{"text": reply.text, "stop_reason": self.stop_reasons[reply.finish]}]}

    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        piece = reply.chunk_pieces[at]
        return {"outputs": [{"text": piece, "stop_reason": self.stop_reason(reply, at)}]}


class TitanText(TextFamily):
    stop_reasons: ClassVar[Mapping[Finish, str]] = {
        "end": "FINISH",
        "length": "LENGTH",
        "stop_sequence": "STOP_CRITERIA_MET",
    }
    _config: ClassVar[Mapping[str, Check]] = {
        "maxTokenCount": check_integer(0),
        "stopSequences": check_strings,
        "temperature": check_number,
        "topP": check_number,
    }
    _schema: ClassVar[Mapping[str, Check]] = {
        "inputText": check_string,
        "textGenerationConfig": check_object(_config),
    }

    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        refuse_violations(object_violations(doc, self._schema, ("inputText",)))
        config = doc.get("textGenerationConfig", {})
        return TextRequest(
            doc["inputText"],
            config.get("maxTokenCount", DEFAULT_MAX_TOKENS),
            tuple(config.get("stopSequences", ())),
        )

    def answer(self, reply: TextReply) -> dict[str, Any]:
        result = {
            "tokenCount": reply.output_tokens,
            "outputText": reply.text,
            "completionReason": self.stop_reasons[reply.finish],
        }
        return {"inputTextTokenCount": reply.input_tokens, "results": [result]}

    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        return {
            "outputText": reply.chunk_pieces[at],
            "index": 0,
            "totalOutputTextTokenCount": min(at + 1, reply.output_tokens),
            "completionReason": self.stop_reason(reply, at),
            "inputTextTokenCount": reply.input_tokens if at == 0 else None,
        }


class Nova(TextFamily):
    stop_reasons: ClassVar[Mapping[Finish, str]] = {
        "end": "end_turn",
        "length": "max_tokens",
        "stop_sequence": "stop_sequence",
    }
    # Nova's first pages wrote its settings in snake case (max_new_tokens, top_p), its
    # later ones in camel case: Bedrock takes both.
    _config: ClassVar[Mapping[str, Check]] = {
        "maxTokens": check_integer(1),
        "max_new_tokens": check_integer(1),
        "temperature": check_number,
        "topP": check_number,
        "top_p": check_number,
        "topK": check_integer(),
        "top_k": check_integer(),
        "stopSequences": check_strings,
        "reasoningConfig": check_object_of_any,
    }
    _schema: ClassVar[Mapping[str, Check]] = {
        "schemaVersion": check_string,
        "system": check_array,
        "messages": check_array,
        "inferenceConfig": check_object(_config),
        "toolConfig": check_object_of_any,
    }

    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        refuse_violations(object_violations(doc, self._schema, ("messages",)))
        config = doc.get("inferenceConfig", {})
        allowance = config.get("maxTokens", config.get("max_new_tokens", DEFAULT_MAX_TOKENS))
        texts = [*block_texts(doc.get("system"))]
        last_user = ""
        for message in doc["messages"]:
            if isinstance(message, dict):
                said = " ".join(block_texts(message.get("content")))
                texts.append(said)
                if message.get("role") == "user":
                    last_user = said
        stops = tuple(config.get("stopSequences", ()))
        return TextRequest("\n".join(texts), allowance, stops, quoted=last_user)

    def answer(self, reply: TextReply) -> dict[str, Any]:
        return {
            "output": {"message": {"role": "assistant", "content": [{"text": reply.text}]}},
            "stopReason": self.stop_reasons[reply.finish],
            "usage": self._usage(reply),
        }

    def chunk(self, reply: TextReply, at: int) -> dict[str, Any]:
        return {
            "contentBlockDelta": {"delta": {"text": reply.chunk_pieces[at]}, "contentBlockIndex": 0}
        }

    def chunks(self, reply: TextReply) -> list[dict[str, Any]]:
        return [
            {"messageStart": {"role": "assistant"}},
            *(self.chunk(reply, at) for at in range(len(reply.chunk_pieces))),
            {"contentBlockStop": {"contentBlockIndex": 0}},
            {"messageStop": {"stopReason": self.stop_reasons[reply.finish]}},
            {"metadata": {"usage": self._usage(reply), "metrics": {}, "trace": {}}},
        ]

    @staticmethod
    def _usage(reply: TextReply) -> dict[str, int]:
        return {
            "inputTokens": reply.input_tokens,
            "outputTokens": reply.output_tokens,
            "totalTokens": reply.input_tokens + reply.output_tokens,
            "cacheReadInputTokenCount": 0,
            "cacheWriteInputTokenCount": 0,
        }


def block_texts(blocks: object) -> list[str]:
    """The text of Nova's content (or system) blocks: ``[{"text": ...}, ...]``."""
    if not isinstance(blocks, list):
        return []
    return [
        block["text"]
        for block in blocks
        if isinstance(block, dict) and isinstance(block.get("text"), str)
    ]


LLAMA = Llama()
MISTRAL = Mistral()
TITAN_TEXT = TitanText()
NOVA = Nova()


def _stopped_text(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` cut before the first stop sequence it contains, and whether one was found."""
    found = [text.find(stop) for stop in stops if stop and stop in text]
    return (text[: min(found)], True) if found else (text, False)


def text_reply(req: TextRequest, fault: Fault, scripted: list[str] | None) -> TextReply:
    """The reply to ``req``: the mock's deterministic one, or the scripted pieces, cut to
    the allowance."""
    input_tokens = count_tokens(req.prompt)
    if scripted is not None:
        cut = len(scripted) > req.max_tokens
        kept = tuple(scripted[: req.max_tokens])
        ended: Finish = "length" if cut else "end"
        return TextReply(kept, ended, input_tokens, req.answers, req.prompt)
    quoted = req.quoted if req.quoted is not None else req.prompt
    messages = [{"role": "user", "content": quoted}]
    text, stopped = _stopped_text(reply_text(messages), req.stop_sequences)
    pieces, cut = reply_pieces(messages, max_tokens=req.max_tokens, chunks=fault.chunks, text=text)
    finish: Finish = "length" if cut else "stop_sequence" if stopped else "end"
    return TextReply(tuple(pieces), finish, input_tokens, req.answers, req.prompt)


@dataclass(frozen=True, slots=True)
class TextInvocation:
    """One answer of a text model, ready to be sent whole (``answer``) or streamed
    (``chunks``)."""

    family: TextFamily
    reply: TextReply

    def answer(self) -> dict[str, Any]:
        return self.family.answer(self.reply)

    def chunks(self) -> list[dict[str, Any]]:
        """The stream's chunk documents; the last gets its metrics when it is sent."""
        return self.family.chunks(self.reply)

    def token_headers(self) -> dict[str, str]:
        return {
            INPUT_TOKEN_COUNT_HEADER: str(self.reply.input_tokens),
            OUTPUT_TOKEN_COUNT_HEADER: str(self.reply.output_tokens),
        }

    def invocation_metrics(self, latency_ms: int, first_byte_ms: int) -> dict[str, Any]:
        """What Bedrock adds to the last chunk, as to Claude's ``message_stop``."""
        return {
            INVOCATION_METRICS: {
                "inputTokenCount": self.reply.input_tokens,
                "outputTokenCount": self.reply.output_tokens,
                "invocationLatency": latency_ms,
                "firstByteLatency": first_byte_ms,
            }
        }


def text_stream_cut(chunks: int, fault: Fault) -> StreamCut | None:
    """Where ``reset_after`` / ``error_after`` end a stream of ``chunks`` chunks: before
    the chunk past that many pieces or, with fewer, before the last chunk, so the stream
    never reports its end; the earlier of the two, a reset first when they meet."""
    limits: tuple[tuple[StreamEnding, int | None], ...] = (
        ("reset", fault.reset_after),
        ("error", fault.error_after),
    )
    cuts = [
        StreamCut(min(after, chunks - 1), ending) for ending, after in limits if after is not None
    ]
    # min keeps the first of equals: the reset.
    return min(cuts, key=lambda cut: cut.at) if cuts else None
