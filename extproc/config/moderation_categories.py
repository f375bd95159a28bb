"""Moderation ``thresholds`` naming no category OpenAI's moderation models answer with:
warnings, not errors.

A threshold under a misspelt name (``violence/graphics``) is never read: the category it
meant is decided by the service's own flag, and nothing says so. The names are not
refused, since another OpenAI-compatible service may answer with categories of its own;
a name none of OpenAI's is reported with the closest of them, at load and by ``extproc
check-config`` (``extproc.config.load_warnings``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only for the warnings: the mock provider imports the categories, not the schema.
    from extproc.config.model import GatewayConfig

# The categories of OpenAI's moderation models (the omni models'; the older text models
# answer with a subset of them), as its API reference names them.
OPENAI_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


def threshold_warnings(config: GatewayConfig) -> Iterator[str]:
    """One line per ``thresholds`` entry that names none of OpenAI's categories."""
    from extproc.config.model import did_you_mean

    for index, moderation in enumerate(config.guardrails.moderation):
        for category in moderation.thresholds:
            if category in OPENAI_CATEGORIES:
                continue
            hint = did_you_mean(category, list(OPENAI_CATEGORIES))
            yield (
                f"guardrails.moderation[{index}].thresholds: {category!r} is none of OpenAI's "
                f"moderation categories (a category the service names otherwise is decided "
                f"by its own flag, not by a threshold){hint}"
            )
