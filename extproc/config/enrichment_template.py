"""The template of an enrichment message: what is a placeholder and what is text.

``{user_id}``, ``{group_id}``, ``{api_key_id}``, ``{route}`` and ``{model}`` are
placeholders, filled in from the request; ``{{`` and ``}}`` write a brace. A brace
group right after a ``$`` that is no placeholder (``${jndi:ldap://...}``, ``${HOME}``,
nested or not) is text, kept as written, as is a ``${`` that is never closed: the
config loader keeps such text as written in an enrichment message (or makes it from
``$${``), and an operator warning the model about Log4Shell writes it on purpose. Any
other brace is a mistake refused at load: an unknown placeholder (a typo), a lone
brace, or a format spec or conversion (``{user_id:d}``, ``{user_id!r}``; every value is
text, put in as it is).

Parsed once, when the config is validated; ``render`` only joins the parts.
"""

from __future__ import annotations

from dataclasses import dataclass

# Identity fields an enrichment template may use.
TEMPLATE_FIELDS = frozenset({"user_id", "group_id", "api_key_id", "route", "model"})


@dataclass(frozen=True, slots=True)
class Placeholder:
    name: str


TemplatePart = str | Placeholder


def parse_template(content: str) -> tuple[TemplatePart, ...]:
    """The text and placeholders of ``content``, in order; a ValueError names a mistake."""
    closes = _closing_braces(content) if "${" in content else {}
    parts: list[TemplatePart] = []
    text: list[str] = []
    at = 0
    while at < len(content):
        if content.startswith(("{{", "}}"), at):
            text.append(content[at])
            at += 2
        elif content.startswith("${", at) and not content.startswith("${{", at):
            end = closes.get(at + 1)
            if end is None:
                text.append("${")  # never closed: text
                at += 2
            elif content[at + 2 : end] in TEMPLATE_FIELDS:
                text.append("$")  # `$` and then a placeholder, read next
                at += 1
            else:
                text.append(content[at : end + 1])
                at = end + 1
        elif content[at] == "{":
            end = content.find("}", at)
            if end < 0:
                raise ValueError("a { is never closed; write {{ for a literal {")
            field = content[at + 1 : end]
            name = field.split("!", 1)[0].split(":", 1)[0]
            if name not in TEMPLATE_FIELDS:
                known = ", ".join(sorted(TEMPLATE_FIELDS))
                raise ValueError(
                    f"unknown placeholder {{{name}}} (known: {known}); write {{{{ for a literal {{"
                )
            if field != name:
                # Every value is text: `{user_id:d}` failed every request, `!r` quoted it.
                raise ValueError(
                    f"placeholder {{{name}}} takes no format spec or conversion "
                    f"(write {{{name}}}, or {{{{ for a literal {{)"
                )
            if text:
                parts.append("".join(text))
                text = []
            parts.append(Placeholder(name))
            at = end + 1
        elif content[at] == "}":
            raise ValueError("a } is never opened; write }} for a literal }")
        else:
            text.append(content[at])
            at += 1
    if text:
        parts.append("".join(text))
    return tuple(parts)


def render(parts: tuple[TemplatePart, ...], values: dict[str, str]) -> str:
    return "".join(part if isinstance(part, str) else values[part.name] for part in parts)


def literal(value: str) -> str:
    """``value`` written so that the template reads it as text (a value taken from the
    environment: never a template of its own)."""
    return value.replace("{", "{{").replace("}", "}}")


def _closing_braces(content: str) -> dict[int, int]:
    """Where each ``{`` that is closed is closed, nested braces counted (one pass: a
    scan from each ``${`` would make a long run of them quadratic)."""
    opened: list[int] = []
    closes: dict[int, int] = {}
    for at, char in enumerate(content):
        if char == "{":
            opened.append(at)
        elif char == "}" and opened:
            closes[opened.pop()] = at
    return closes
