"""An InvokeModel client to Claude on Bedrock: Bedrock's answer passed on unchanged, usage read.

The client speaks Bedrock's own API (boto3's ``invoke_model`` and
``invoke_model_with_response_stream`` with Claude's body, ``extproc.converse_api``), so the
answer is already in its shape: every byte reaches it as Bedrock sent it, and its SDK checks
the frames' CRCs as it would from AWS. The gateway only reads, to bill the request:

- The JSON answer is Claude's Message, read as on Anthropic's own API
  (``anthropic_bedrock.MessageReader``).
- The stream (``InvokeStreamReader``) is AWS's binary event stream, one ``chunk`` frame per
  Anthropic event, base64-encoded. The reader unwraps each event as the Anthropic client's
  translator does (``anthropic_bedrock.StreamTranslator``, which it extends) and reads it
  for usage, server tools, failures and the generated text of a cut stream, but sends the
  client the frames, not the SSE it unwrapped. Claude's ``message_stop`` ends the answer
  (``terminal_event_read``). An exception frame is recorded as the stream's failure,
  named as the Converse pass-through names it (``ModelStreamErrorException``: the name the
  client's SDK raises, not the Anthropic error type it maps to), and passed on. A stream
  that ends before ``message_stop`` is charged as a cut one, from the prompt Claude
  reported (else the estimate) and the text it carried.
"""

from __future__ import annotations

from dataclasses import replace

from extproc.translators.anthropic_bedrock import StreamTranslator
from extproc.translators.base import ProviderStreamError
from extproc.translators.openai_bedrock_stream import stream_exception


class InvokeStreamReader(StreamTranslator):
    """InvokeModelWithResponseStream's frames, passed through; read as the Anthropic
    client's translator reads them."""

    def __init__(self, served_tier: str | None = None) -> None:
        super().__init__(served_tier)
        # The exception frame that ended the stream, as the client's SDK names it.
        self._raised: ProviderStreamError | None = None
        # The Anthropic events (as SSE) unwrapped from the last chunk's frames: what the
        # client's SDK reads in them, for telemetry's finish reasons and captured text,
        # which the frames' base64 hides.
        self.unwrapped = b""

    @property
    def terminal_event_read(self) -> bool:
        """Claude's ``message_stop`` was read: the answer is whole even if the client
        hangs up before Envoy's end of stream."""
        return self._stopped

    def feed(self, chunk: bytes, end_of_stream: bool) -> bytes | None:
        self.unwrapped = super().feed(chunk, end_of_stream) or b""
        if self._raised is not None and self.failure is not None:
            # The counts Claude had reported stay; the error is the frame's own.
            self.failure = replace(self.failure, error=self._raised)
        return None  # the client reads Bedrock's frames, not the SSE read from them

    def _exception(self, name: str, message: str, out: list[bytes]) -> None:
        self._raised = stream_exception(name, message)
        super()._exception(name, message, out)
