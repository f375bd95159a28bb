"""OpenAI's PDF content parts as the documents Claude and Bedrock's Converse read.

An OpenAI chat client sends a PDF as a content part, ``{"type": "file", "file":
{"file_data": "data:application/pdf;base64,...", "filename": "report.pdf"}}`` (the
``openai`` SDK's ``ChatCompletionContentPartFileParam``; chat completions take PDFs only
there). Claude reads PDFs (Anthropic's ``document`` block with a base64 ``source``), and so
do the Converse models with document chat (a ``document`` block, ``format: "pdf"``), so a
PDF is sent as such rather than refused.

What cannot be carried over is refused with a 400 naming the part: a file by ``file_id``
(a file stored at OpenAI, which the gateway cannot read for another provider), and
``file_data`` that is no base64 PDF (chat completions take no other file type; send text
as a text part).

Converse wants each document named (1 to 200 letters, digits, single spaces, hyphens,
parentheses and square brackets) and refuses two documents of one name in a request
("Messages can't contain duplicate document names."), which a conversation that attaches
``report.pdf`` twice, or two files without a name, would otherwise hit on every later turn:
``name_documents`` names them from their file names, apart, in the order they stand.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from extproc.errors import BadRequestError

PDF_MEDIA_TYPE = "application/pdf"
# "%PDF-" in base64: how a PDF's bytes begin, whatever its label says.
_PDF_HEAD = "JVBERi0"
# Converse's document names: these characters, no two spaces in a row, 1 to 200 of them.
_NAME_OUTSIDE = re.compile(r"[^A-Za-z0-9\s\-()\[\]]+")
_SPACES = re.compile(r"\s+")
_MAX_NAME = 200
_UNNAMED = "document"


@dataclass(frozen=True, slots=True)
class PdfPart:
    """A PDF an OpenAI client sent inline: its base64 bytes and the file name it gave."""

    data: str
    filename: str | None


def read_pdf_part(part: dict[str, Any], where: str, provider: str) -> PdfPart:
    """The PDF of an OpenAI ``file`` content part at ``where``; a 400 naming the part for
    one ``provider`` cannot be sent (a ``file_id``, no base64 PDF)."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise BadRequestError("a file part needs a 'file' object", param=f"{where}.file")
    data = file.get("file_data")
    if data is None and file.get("file_id") is not None:
        raise BadRequestError(
            f"a file stored at OpenAI (file_id) cannot be sent to {provider}: send the PDF's "
            "bytes as file_data (data:application/pdf;base64,...)",
            param=f"{where}.file.file_id",
        )
    encoded = _pdf_base64(data)
    if encoded is None:
        raise BadRequestError(
            "file_data must be a PDF as a base64 data URL (data:application/pdf;base64,...): "
            "chat completions take PDF files only; send text as a text part",
            param=f"{where}.file.file_data",
        )
    filename = file.get("filename")
    return PdfPart(encoded, filename if isinstance(filename, str) else None)


def _pdf_base64(value: Any) -> str | None:
    """The base64 bytes of a PDF given as a data URL (its label a PDF's, or any label
    on a PDF's bytes) or as bare base64; None for anything else."""
    if not isinstance(value, str):
        return None
    # Partition, not a regex: the data can be megabytes long.
    header, comma, data = value.partition(",")
    if comma and header.startswith("data:"):
        label, _, encoding = header.removeprefix("data:").partition(";")
        if not encoding.endswith("base64") or not data:
            return None
        if label.strip().lower() == PDF_MEDIA_TYPE or data.startswith(_PDF_HEAD):
            return data
        return None
    return value if value.startswith(_PDF_HEAD) else None


def anthropic_document(pdf: PdfPart) -> dict[str, Any]:
    """Anthropic's ``document`` block for a PDF (its file name as the title Claude reads)."""
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": PDF_MEDIA_TYPE, "data": pdf.data},
    }
    if pdf.filename and pdf.filename.strip():
        block["title"] = pdf.filename
    return block


def converse_document(pdf: PdfPart) -> dict[str, Any]:
    """Converse's ``document`` block for a PDF, named from its file name
    (``name_documents`` keeps the names of one request apart)."""
    return {
        "document": {
            "format": "pdf",
            "name": document_name(pdf.filename),
            "source": {"bytes": pdf.data},
        }
    }


def document_name(filename: str | None) -> str:
    """A name Converse takes for a file name: its stem, other characters as spaces."""
    stem = (filename or "").rsplit(".", 1)[0] if "." in (filename or "")[1:] else filename
    name = _SPACES.sub(" ", _NAME_OUTSIDE.sub(" ", stem or "")).strip()
    return name[:_MAX_NAME].strip() or _UNNAMED


def name_documents(turns: list[dict[str, Any]]) -> None:
    """Give each ``document`` block of a Converse conversation a name no other has (case
    aside): a repeated name gets `` (2)``, `` (3)``... in the order the documents stand,
    so every request of a conversation names them alike."""
    taken: set[str] = set()
    for turn in turns:
        for block in turn["content"]:
            document = block.get("document")
            if not isinstance(document, dict):
                continue
            base = document["name"]
            name, count = base, 1
            while name.lower() in taken:
                count += 1
                suffix = f" ({count})"
                name = base[: _MAX_NAME - len(suffix)].rstrip() + suffix
            taken.add(name.lower())
            document["name"] = name
