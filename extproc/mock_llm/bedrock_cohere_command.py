"""Cohere Command and Command Light on Bedrock's InvokeModel and
InvokeModelWithResponseStream (``cohere.command-text*``, ``cohere.command-light-text*``):
the body, the answer and the stream chunks, as ``bedrock_text_models`` does for the other
text families (whose base, checks and reply it shares).

- Body: ``{"prompt" (required), "temperature", "p", "k", "max_tokens" (20 by default, as
  AWS's page gives it), "stop_sequences", "return_likelihoods", "stream",
  "num_generations" (1 to 5 answers), "logit_bias", "truncate"}``.
- Answer: ``{"id", "generations": [{"id", "text", "finish_reason"}, ...], "prompt"}``, one
  generation per answer asked for; ``finish_reason`` "COMPLETE" (a stop sequence too: its
  text is left out) or "MAX_TOKENS". The body counts no tokens: Bedrock's headers do.
- Stream: per answer, one ``{"text", "is_finished": false}`` per piece (with its answer's
  ``index`` when several were asked for, as AWS's page says), then one last chunk
  ``{"is_finished": true, "finish_reason", "response": <the answer>}`` (Cohere's own end
  of a stream, the whole answer again), to which Bedrock adds its invocation metrics.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, ClassVar

from extproc.mock_llm.bedrock_embeddings import refuse_violations
from extproc.mock_llm.bedrock_text_models import (
    Check,
    Finish,
    ManyAnswers,
    TextReply,
    TextRequest,
    check_boolean,
    check_integer,
    check_number,
    check_object_of_any,
    check_string,
    check_strings,
    object_violations,
)

COMMAND_MAX_TOKENS = 20
COMMAND_MOST_GENERATIONS = 5
# Ids made from the reply, so that the mock stays deterministic.
_IDS = uuid.UUID("6f1c1b9e-2b1e-4c53-9d0a-0c0e7e2a5b11")


class CohereCommand(ManyAnswers):
    stop_reasons: ClassVar[Mapping[Finish, str]] = {
        "end": "COMPLETE",
        "length": "MAX_TOKENS",
        "stop_sequence": "COMPLETE",
    }
    _schema: ClassVar[Mapping[str, Check]] = {
        "prompt": check_string,
        "temperature": check_number,
        "p": check_number,
        "k": check_number,
        "max_tokens": check_integer(1),
        "stop_sequences": check_strings,
        "return_likelihoods": check_string,
        "stream": check_boolean,
        "num_generations": check_integer(1, COMMAND_MOST_GENERATIONS),
        "logit_bias": check_object_of_any,
        "truncate": check_string,
    }

    def parse(self, model: str, doc: dict[str, Any]) -> TextRequest:
        refuse_violations(object_violations(doc, self._schema, ("prompt",)))
        return TextRequest(
            doc["prompt"],
            doc.get("max_tokens", COMMAND_MAX_TOKENS),
            tuple(doc.get("stop_sequences", ())),
            answers=doc.get("num_generations", 1),
        )

    def answer(self, reply: TextReply) -> dict[str, Any]:
        reason = self.stop_reasons[reply.finish]
        generations = [
            {"id": _id(reply, str(i)), "text": reply.text, "finish_reason": reason}
            for i in range(reply.answers)
        ]
        return {"id": _id(reply, "answer"), "generations": generations, "prompt": reply.prompt}

    def piece(self, reply: TextReply, answer: int, at: int) -> dict[str, Any]:
        chunk: dict[str, Any] = {"text": reply.pieces[at], "is_finished": False}
        if reply.answers > 1:
            chunk["index"] = answer
        return chunk

    def end(self, reply: TextReply) -> dict[str, Any]:
        # Cohere's own end of a stream: the whole answer again.
        reason = self.stop_reasons[reply.finish]
        return {"is_finished": True, "finish_reason": reason, "response": self.answer(reply)}


def _id(reply: TextReply, what: str) -> str:
    return str(uuid.uuid5(_IDS, f"{reply.prompt}\n{reply.text}\n{what}"))


COHERE_COMMAND = CohereCommand()
