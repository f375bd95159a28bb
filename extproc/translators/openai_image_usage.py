"""What OpenAI's GPT Image models bill, as their answers report it.

Two reports share one shape (``input_tokens``, ``input_tokens_details.{text_tokens,
image_tokens}``, ``output_tokens``, optional ``output_tokens_details.{text_tokens,
image_tokens}``):

- the Images API's ``usage`` (``/v1/images/generations``): the request's own usage,
  read as ``Usage`` (``usage_from_images``), its images apart (``image_tokens``,
  ``image_output_tokens``), which the price table bills at the model's image prices;
- a Responses API answer's ``tool_usage.image_gen``: the pictures its
  ``image_generation`` tool drew, summed over its calls, apart from the answering
  model's ``usage`` (``image_generation_of``). They are another model's tokens (the
  tool's ``model``: gpt-image-1, gpt-image-1-mini...), added to the request's counts as
  parts of them (``with_image_generation``) and billed at that model's prices.

The output's pictures are the report's ``output_tokens_details.image_tokens`` when it
names them, else all of ``output_tokens`` (gpt-image-1 draws nothing but the picture,
and OpenAI may leave the details out).

The tool's report may also carry the image model's cache reads (``cached_tokens``, split
by ``cached_tokens_details.{cached_text_tokens, cached_image_tokens}``), which
gpt-image-1 bills at its cached prices ($1.25 text, $2.50 images per million against $5
and $10): they are read as parts of its input and of the request's ``cached_tokens``.
OpenAI says a missing count means unknown: then the input is billed uncached. The
Images API's own ``usage`` has no cache count.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from extproc.context import ImageGeneration, Usage
from extproc.images_api import picture_allowance
from extproc.translators.token_counts import token_count

# The type of the Responses API's image generation tool in a request's and a
# response's ``tools``.
TOOL_TYPE = "image_generation"


def _counts(value: Any) -> tuple[int, int, int, int] | None:
    """(input, its images, output, its pictures) of a GPT Image report; None when it has
    no input or output count. Each part within the count it is part of."""
    counts = _all_counts(value)
    return None if counts is None else counts[:4]


def _cached(value: dict[str, Any], prompt: int, images: int) -> tuple[int, int]:
    """(cache reads, their images) of a tool's report: each within what it is part of;
    (0, 0) when it reports none (unknown, billed uncached)."""
    cached = min(token_count(value.get("cached_tokens")) or 0, prompt)
    details = value.get("cached_tokens_details")
    found = token_count(details.get("cached_image_tokens")) if isinstance(details, dict) else None
    return cached, min(found or 0, cached, images)


def _all_counts(value: Any) -> tuple[int, int, int, int, int, int] | None:
    """``_counts`` with the cache reads and their images after them."""
    if not isinstance(value, dict):
        return None
    prompt = token_count(value.get("input_tokens"))
    completion = token_count(value.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    details = value.get("input_tokens_details")
    images = token_count(details.get("image_tokens")) if isinstance(details, dict) else None
    output = value.get("output_tokens_details")
    drawn = token_count(output.get("image_tokens")) if isinstance(output, dict) else None
    read = min(images or 0, prompt)
    return (
        prompt,
        read,
        completion,
        completion if drawn is None else min(drawn, completion),
        *_cached(value, prompt, read),
    )


def usage_from_images(value: Any) -> Usage | None:
    """The Images API's ``usage`` (a JSON answer's, a stream's
    ``image_generation.completed`` event's); None when absent or malformed."""
    counts = _counts(value)
    if counts is None:
        return None
    prompt, images, completion, drawn = counts
    return Usage(
        prompt,
        completion,
        prompt + completion,
        image_tokens=images,
        image_output_tokens=drawn,
    )


def summed_image_usage(so_far: Usage | None, more: Usage) -> Usage:
    """Two Images API reports added up (a stream's pictures, each reported in its own
    completed event), each part kept apart."""
    if so_far is None:
        return more
    return Usage(
        so_far.prompt_tokens + more.prompt_tokens,
        so_far.completion_tokens + more.completion_tokens,
        so_far.total_tokens + more.total_tokens,
        image_tokens=so_far.image_tokens + more.image_tokens,
        image_output_tokens=so_far.image_output_tokens + more.image_output_tokens,
    )


def image_tool(tools: Any) -> dict[str, Any] | None:
    """The image generation tool's entry in a ``tools`` list (a request's or a
    response's); None when it has none."""
    if not isinstance(tools, list):
        return None
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == TOOL_TYPE:
            return tool
    return None


def tool_model(tools: Any) -> str | None:
    """The model of the image generation tool in a ``tools`` list (a request's or a
    response's); None when it has no such tool or the tool names no model."""
    tool = image_tool(tools)
    model = tool.get("model") if tool is not None else None
    if isinstance(model, str) and model.strip():
        return model.strip()
    return None


def tool_picture_allowance(body: dict[str, Any]) -> int:
    """The output tokens of one picture of the Responses request's image generation tool,
    at the ``quality`` and ``size`` its entry names (``images_api.picture_allowance``: a
    quality the provider picks at the highest); 0 when the request has no such tool.

    What the quota reserves for the tool beside the answer's allowance (no
    ``max_output_tokens`` bounds a picture), and what a stream cut while the tool was
    drawing is charged for each picture it had begun."""
    tool = image_tool(body.get("tools"))
    if tool is None:
        return 0
    return picture_allowance({"quality": tool.get("quality"), "size": tool.get("size")})


def reserved_pictures(pictures: int, allowance: int, model: str | None) -> ImageGeneration | None:
    """``pictures`` of the tool's pictures at the quota's reserve for one (``allowance``,
    ``tool_picture_allowance``), all of it the picture, of the image model ``model``: what
    an answer cut before its count is charged for each picture it may hold (the image
    model's input is not known, and not charged). None for none."""
    if pictures <= 0 or allowance <= 0:
        return None
    drawn = pictures * allowance
    return ImageGeneration(model, output_tokens=drawn, output_image_tokens=drawn)


def image_generation_of(response: Any, asked_model: str | None) -> ImageGeneration | None:
    """The pictures a response's image generation tool drew (``tool_usage.image_gen``);
    None when it reports none. The model is the one the response's ``tools`` names (OpenAI
    fills in its default), else ``asked_model`` (the request's)."""
    if not isinstance(response, dict):
        return None
    tool_usage = response.get("tool_usage")
    report = tool_usage.get("image_gen") if isinstance(tool_usage, dict) else None
    counts = _all_counts(report)
    if counts is None or (counts[0] == 0 and counts[2] == 0):
        return None
    prompt, images, completion, drawn, cached, cached_images = counts
    model = tool_model(response.get("tools")) or asked_model
    return ImageGeneration(model, prompt, images, completion, drawn, cached, cached_images)


def with_image_generation(usage: Usage, generation: ImageGeneration | None) -> Usage:
    """``usage`` with the tool's pictures added to its counts, as parts of them."""
    if generation is None:
        return usage
    prompt = usage.prompt_tokens + generation.input_tokens
    completion = usage.completion_tokens + generation.output_tokens
    return replace(
        usage,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.total_tokens + generation.input_tokens + generation.output_tokens,
        # The image model's cache reads are the request's too, as a chat's are.
        cached_tokens=usage.cached_tokens + generation.cached_tokens,
        image_generation=generation,
    )
