"""The images of a request, as a moderation service that reads images is sent them.

OpenAI's ``omni-moderation`` models read images as ``{"type": "image_url", "image_url":
{"url": ...}}`` items, where the URL is a web address or a base64 data URL. Each client
API carries images its own way, and each is read here into that one form, with the role
its text would have (``content``, ``converse_text``, ``gemini_text``, ``responses_text``):

- OpenAI chat: an ``image_url`` part (its ``url``);
- Anthropic Messages (and Claude's body on Bedrock's InvokeModel): an ``image`` block,
  ``base64`` (as a data URL of its ``media_type``) or ``url``, in a message, in a
  ``tool_result``'s content or in a custom content ``document``;
- Bedrock Converse: an ``image`` block's ``bytes`` (base64 in JSON, a data URL of its
  ``format``), in a message (a ``guardContent``'s too) or in a ``toolResult``'s content
  (the ``tool``'s);
- Gemini: an ``inlineData`` part of an ``image/*`` type (a data URL), or a ``fileData``
  part's web address, in ``contents`` (``model`` is the ``assistant``) or in a
  ``functionResponse``'s ``parts`` (the ``tool``'s);
- the Responses API: an ``input_image`` item's ``image_url``, in a message or in a
  function call's output, and a computer use call's ``computer_screenshot`` (the
  ``tool``'s).

An image given by reference to storage the moderation service cannot read (a file id of
OpenAI's or Anthropic's Files API, an S3 location, a ``gs://`` URI or a file of Gemini's
Files API) is an ``Image`` with no ``url`` and the reason in ``unreadable``: the stage
decides what happens to it (``stages.guardrails``), rather than let it pass unseen.
Audio, video and PDFs are not images: no moderation model reads them.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from extproc.guardrails.converse_text import TOOL_ROLE
from extproc.images_api import pictures_to_edit
from extproc.multipart_form import MultipartForm

# Gemini's roles as the guards name them (as ``gemini_text``).
_GEMINI_ROLES = {"model": "assistant"}
# Where Gemini's Files API keeps uploads: a URI there needs the caller's Google key.
_GEMINI_FILES = "https://generativelanguage.googleapis.com/"
# A URI's scheme as RFC 3986 writes it (a letter, then letters, digits, "+", "-" and
# "."), short: the only part of a client's URI a refusal may name.
# A file part's content type that may name a picture's data URL: a bare image type
# (RFC 6838's characters). The client writes it; anything more (``image/png;base64,
# <a decoy>#``) would write the URL itself, so the moderation read another picture.
_IMAGE_TYPE = re.compile(r"image/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")
_DEFAULT_TYPE = "image/png"
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]{0,31}):")


@dataclass(frozen=True, slots=True)
class Image:
    role: str
    # What the moderation service is sent: a web address or a base64 data URL.
    url: str | None = None
    # Why it cannot be sent (it names storage the service cannot read), when ``url`` is None.
    unreadable: str | None = None


def edit_images(form: MultipartForm) -> list[Image]:
    """An image edit's pictures (its form's files), as data URLs of the image type the
    client gave each (PNG when none, or when it gave more than a bare image type): the
    user's, as a prompt's image is."""
    found: list[Image] = []
    for picture in pictures_to_edit(form):
        encoded = base64.b64encode(form.raw[picture.start : picture.end]).decode()
        media = _picture_type(picture.content_type)
        found.append(Image("user", f"data:{media};base64,{encoded}"))
    return found


def _picture_type(given: str | None) -> str:
    """The media type a picture's data URL names: the client's, when it is a bare image
    type; PNG otherwise (the moderation reads the bytes)."""
    media = (given or "").strip().lower()
    return media if _IMAGE_TYPE.fullmatch(media) else _DEFAULT_TYPE


def chat_images(body: dict[str, Any]) -> list[Image]:
    """An OpenAI chat or Anthropic Messages request's images, in order."""
    found: list[Image] = []
    for message in _dicts(body.get("messages")):
        role = message.get("role")
        role = role if isinstance(role, str) else "user"
        for block in _dicts(message.get("content")):
            found.extend(_chat_block(role, block))
    return found


def _chat_block(role: str, block: dict[str, Any]) -> Iterator[Image]:
    kind = block.get("type")
    if kind == "image_url":
        image = block.get("image_url")
        # The API's shape is an object; a bare string is what some clients send.
        url = image.get("url") if isinstance(image, dict) else image
        if isinstance(url, str) and url:
            yield Image(role, url)
    elif kind == "image":
        image = _anthropic_image(role, block.get("source"))
        if image is not None:
            yield image
    elif kind in ("tool_result", "mcp_tool_result"):
        # What a tool returned is read with the message's role, as its text is.
        for inner in _dicts(block.get("content")):
            yield from _chat_block(role, inner)
    elif kind == "document":
        # A custom content document holds blocks of its own, images among them.
        source = block.get("source")
        if isinstance(source, dict) and source.get("type") == "content":
            for inner in _dicts(source.get("content")):
                yield from _chat_block(role, inner)


def _anthropic_image(role: str, source: Any) -> Image | None:
    if not isinstance(source, dict):
        return None
    kind = source.get("type")
    if kind == "base64":
        data, media = source.get("data"), source.get("media_type")
        if isinstance(data, str) and data:
            return Image(role, _data_url(media if isinstance(media, str) else "image/png", data))
    elif kind == "url":
        url = source.get("url")
        if isinstance(url, str) and url:
            return Image(role, url)
    elif kind == "file":
        return Image(role, unreadable="an image given by its Files API id")
    return None


def converse_images(body: dict[str, Any]) -> list[Image]:
    """A Converse request's images, in order."""
    found: list[Image] = []
    for message in _dicts(body.get("messages")):
        role = message.get("role")
        role = role if isinstance(role, str) else "user"
        for block in _dicts(message.get("content")):
            guarded = block.get("guardContent")
            for image in (
                block.get("image"),
                guarded.get("image") if isinstance(guarded, dict) else None,
            ):
                read = _converse_image(role, image)
                if read is not None:
                    found.append(read)
            result = block.get("toolResult")
            if isinstance(result, dict):
                for inner in _dicts(result.get("content")):
                    image = _converse_image(TOOL_ROLE, inner.get("image"))
                    if image is not None:
                        found.append(image)
    return found


def _converse_image(role: str, image: Any) -> Image | None:
    if not isinstance(image, dict) or not isinstance(image.get("source"), dict):
        return None
    source, kind = image["source"], image.get("format")
    data = source.get("bytes")
    if isinstance(data, str) and data:
        return Image(role, _data_url(f"image/{kind if isinstance(kind, str) else 'png'}", data))
    if "s3Location" in source:
        return Image(role, unreadable="an image given by its S3 location")
    return None


def gemini_images(request: dict[str, Any]) -> list[Image]:
    """A Gemini generateContent request's images, in order (``request``: the request
    itself, a count's ``generateContentRequest`` unwrapped)."""
    found: list[Image] = []
    system = request.get("systemInstruction", request.get("system_instruction"))
    if isinstance(system, dict):
        found.extend(_gemini_parts("system", system.get("parts")))
    for content in _dicts(request.get("contents")):
        role = content.get("role")
        role = _GEMINI_ROLES.get(role, role) if isinstance(role, str) else "user"
        found.extend(_gemini_parts(role, content.get("parts")))
    return found


def _gemini_parts(role: str, parts: Any) -> Iterator[Image]:
    for part in _dicts(parts):
        inline = _either(part, "inlineData", "inline_data")
        if inline is not None:
            kind, data = _either_value(inline, "mimeType", "mime_type"), inline.get("data")
            if _is_image(kind) and isinstance(data, str) and data:
                yield Image(role, _data_url(kind, data))
        stored = _either(part, "fileData", "file_data")
        if stored is not None and _is_image(_either_value(stored, "mimeType", "mime_type")):
            uri = _either_value(stored, "fileUri", "file_uri")
            if isinstance(uri, str) and uri:
                yield _gemini_file(role, uri)
        response = _either(part, "functionResponse", "function_response")
        if response is not None:
            # A function's result may carry images of its own (multimodal function
            # responses): the tool's, as its text is.
            yield from _gemini_parts(TOOL_ROLE, response.get("parts"))


def _gemini_file(role: str, uri: str) -> Image:
    if uri.startswith(_GEMINI_FILES):
        return Image(role, unreadable="an image in Gemini's Files API")
    if not uri.startswith(("https://", "http://")):
        # Named by its scheme only (``gs:``): the refusal goes to the client, the
        # gateway's log and the request's log line, and a URI without one (a path, a
        # file name) may be the user's data whole (``scans/jane@example.com.png``).
        scheme = _SCHEME.match(uri)
        where = f"at a {scheme.group(1)}: URI" if scheme else "given by a fileUri that is no URL"
        return Image(role, unreadable=f"an image {where}")
    return Image(role, uri)


def responses_images(body: dict[str, Any]) -> list[Image]:
    """A Responses API request's images, in order (a string ``input`` holds none)."""
    found: list[Image] = []
    for item in _dicts(body.get("input")):
        kind = item.get("type")
        if kind in (None, "message"):
            role = item.get("role")
            found.extend(_input_images(role if isinstance(role, str) else "user", item, "content"))
        elif isinstance(kind, str) and kind.endswith("_output"):
            found.extend(_input_images(TOOL_ROLE, item, "output"))
            # A computer use call's output is one screenshot, an object of its own.
            shot = item.get("output")
            if isinstance(shot, dict) and shot.get("type") == "computer_screenshot":
                found.extend(_input_images(TOOL_ROLE, {"output": [shot]}, "output"))
    return found


def _input_images(role: str, item: dict[str, Any], key: str) -> Iterator[Image]:
    for part in _dicts(item.get(key)):
        if part.get("type") not in ("input_image", "computer_screenshot"):
            continue
        url = part.get("image_url")
        if isinstance(url, str) and url:
            yield Image(role, url)
        elif part.get("file_id") is not None:
            yield Image(role, unreadable="an image given by its Files API id")


def _data_url(media_type: str, data: str) -> str:
    return f"data:{media_type};base64,{data}"


def _is_image(kind: Any) -> bool:
    return isinstance(kind, str) and kind.lower().startswith("image/")


def _either(holder: dict[str, Any], camel: str, snake: str) -> dict[str, Any] | None:
    """Gemini's REST API takes both spellings of a field."""
    value = _either_value(holder, camel, snake)
    return value if isinstance(value, dict) else None


def _either_value(holder: dict[str, Any], camel: str, snake: str) -> Any:
    return holder[camel] if camel in holder else holder.get(snake)


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []
