"""AWS Bedrock's own Converse API, as clients send it to the gateway.

A client built on an AWS SDK (boto3's ``bedrock-runtime``, the AWS SDKs' Bedrock
Runtime clients, LangChain's ``ChatBedrockConverse``) calls
``POST /model/{modelId}/converse`` for one JSON answer and
``POST /model/{modelId}/converse-stream`` for AWS's binary event stream. The model is
the path's, URL-encoded by the SDK (``anthropic.claude-3-haiku-20240307-v1%3A0``);
the body names none, and asks for no stream: the path does. The SDK authenticates
with a bearer token (``AWS_BEARER_TOKEN_BEDROCK``), which is where the client puts
its gateway API key; the gateway signs the request with its own AWS credentials.

The same route serves InvokeModel (``/model/{modelId}/invoke``) and its stream
(``invoke-with-response-stream``) for Claude models, whose body is Anthropic's Messages
call as Bedrock takes it (boto3's ``invoke_model``, LangChain's ``ChatBedrock``): the
routing stage gives such a request the route's InvokeModel twin
(``stages.routing.operation_route``), whose
API (``bedrock_invoke``) reads the body as a Messages call.

This module reads what the gateway needs of such a request: which operation the path
names, whether the body is one Converse accepts in shape (checked before the quota
counts the request, so a malformed body costs nothing), its prompt as the quota
estimates it (the text the guards read, tool inputs and results, reasoning sent back,
the tool definitions and a structured output's schema), and the completion allowance
(``inferenceConfig.maxTokens``), which a hard cap lowers in place.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from extproc.config.model import RouteApi
from extproc.errors import BadRequestError, NotFoundError
from extproc.guardrails.converse_text import estimate_chars
from extproc.input_limits import checked_messages
from extproc.quota.estimate import CHARS_PER_TOKEN, PER_MESSAGE_OVERHEAD

CONVERSE = "converse"
CONVERSE_STREAM = "converse-stream"
INVOKE = "invoke"
INVOKE_STREAM = "invoke-with-response-stream"
COUNT_TOKENS = "count-tokens"
# The operations served, and whether each streams its answer.
_SERVED = {
    CONVERSE: False,
    CONVERSE_STREAM: True,
    INVOKE: False,
    INVOKE_STREAM: True,
    COUNT_TOKENS: False,
}
# The API of each operation that is not Converse (stages.routing gives the request it).
_OPERATION_APIS = {
    INVOKE: RouteApi.BEDROCK_INVOKE,
    INVOKE_STREAM: RouteApi.BEDROCK_INVOKE,
    COUNT_TOKENS: RouteApi.BEDROCK_COUNT_TOKENS,
}
# Bedrock Runtime's other model operations: served by Bedrock, not by this route.
_OTHER_OPERATIONS = frozenset({"converse-stream-bidirectional", "invoke-with-bidirectional-stream"})
_ROLES = frozenset({"user", "assistant"})


class OperationNotServedError(NotFoundError):
    """A Bedrock Runtime operation this route does not serve (InvokeModel and others)."""

    default_code = "operation_not_served"


def operation(path: str) -> tuple[str, bool]:
    """The model id a Bedrock Runtime path names (decoded) and whether it asks for a stream.

    The path's last three segments are ``model``, the model id and the operation,
    wherever the route is mounted (the SDKs encode a model id's ``/`` and ``:``, so an
    ARN is one segment).
    Anything but ``.../{modelId}/`` followed by ``converse``, ``converse-stream``,
    ``invoke`` or ``invoke-with-response-stream`` is a 404 that says what is served.
    """
    segments = path.partition("?")[0].rstrip("/").split("/")
    name = segments[-1]
    # Bedrock's paths are /model/{modelId}/{operation}, under any prefix.
    model = segments[-2] if len(segments) > 3 and segments[-3] == "model" else ""
    if model and name in _SERVED:
        return unquote(model), _SERVED[name]
    if name in _OTHER_OPERATIONS:
        raise OperationNotServedError(
            f"this gateway serves Bedrock's Converse, ConverseStream, InvokeModel, "
            f"InvokeModelWithResponseStream and CountTokens operations, not '{name}'"
        )
    raise NotFoundError(
        "no Bedrock Runtime operation at this path; expected /model/<modelId>/ followed by "
        "converse, converse-stream, invoke, invoke-with-response-stream or count-tokens"
    )


def operation_api(path: str) -> RouteApi | None:
    """The API of the operation a Bedrock Runtime path names when it is not Converse:
    InvokeModel (either) or CountTokens; None for Converse and anything else, which
    ``operation`` takes or refuses."""
    name = path.partition("?")[0].rstrip("/").rpartition("/")[2]
    return _OPERATION_APIS.get(name)


def check_converse_body(body: dict[str, Any], max_messages: int) -> None:
    """Refuse a body Converse would refuse for its shape, naming the field as Bedrock's
    SDKs do (``messages[0].content``); the provider checks the rest.

    A prompt from Prompt management (its ARN as the model id, its variables in
    ``promptVariables``) brings its own messages: ``messages`` is optional there, and
    checked as anywhere else when given (Bedrock appends them to the prompt's)."""
    messages = body.get("messages")
    if messages is None and isinstance(body.get("promptVariables"), dict):
        messages = []  # the prompt's own: nothing of the client's to check
    else:
        messages = checked_messages(messages, max_messages)
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        role = message.get("role") if isinstance(message, dict) else None
        # A list or an object is no role (and cannot be looked up in a set).
        if not isinstance(role, str) or role not in _ROLES:
            raise BadRequestError(
                f"{where} must be an object whose 'role' is 'user' or 'assistant'", param=where
            )
        if not isinstance(message.get("content"), list):
            raise BadRequestError(
                f"{where}.content must be an array of content blocks", param=f"{where}.content"
            )
    system = body.get("system")
    if system is not None and not isinstance(system, list):
        raise BadRequestError("'system' must be an array of content blocks", param="system")
    config = body.get("inferenceConfig")
    if config is None:
        return
    if not isinstance(config, dict):
        raise BadRequestError("'inferenceConfig' must be an object", param="inferenceConfig")
    max_tokens = config.get("maxTokens")
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise BadRequestError(
            "'inferenceConfig.maxTokens' must be an integer of at least 1",
            param="inferenceConfig.maxTokens",
        )


def is_prompt(model_id: str) -> bool:
    """Whether a Converse model id is a prompt of Prompt management (its version's ARN,
    ``arn:aws:bedrock:<region>:<account>:prompt/<id>:<version>``). Such a call takes no
    ``inferenceConfig`` (nor ``system``, ``toolConfig``...): the prompt defines them, and
    Bedrock refuses a request that sets them, so there is no allowance a hard cap could
    lower."""
    return model_id.startswith("arn:") and ":prompt/" in model_id


def named_max_tokens(body: dict[str, Any]) -> int | None:
    """The ``inferenceConfig.maxTokens`` a Converse body names; None when it names none."""
    config = body.get("inferenceConfig")
    value = config.get("maxTokens") if isinstance(config, dict) else None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def completion_allowance(body: dict[str, Any], default_max_tokens: int) -> int:
    """The most the answer may take: ``inferenceConfig.maxTokens``, else the default."""
    named = named_max_tokens(body)
    return default_max_tokens if named is None else named


def cap_completion(body: dict[str, Any], most: int) -> bool:
    """Lower ``inferenceConfig.maxTokens`` to ``most`` (setting it when absent); whether
    the body changed."""
    config = body.get("inferenceConfig")
    if not isinstance(config, dict):
        config = body["inferenceConfig"] = {}
    value = config.get("maxTokens")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= most:
        return False
    config["maxTokens"] = most
    return True


def estimate_prompt_tokens(body: dict[str, Any]) -> int:
    """The prompt of a Converse body as the quota estimates a chat body's: its text at
    ``CHARS_PER_TOKEN`` characters a token, and each message's overhead."""
    messages = body.get("messages")
    turns = len(messages) if isinstance(messages, list) else 0
    return estimate_chars(body) // CHARS_PER_TOKEN + turns * PER_MESSAGE_OVERHEAD
