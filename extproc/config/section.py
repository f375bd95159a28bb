"""The base of every config section: unknown keys refused, values frozen, a
``true``/``false`` never taken for a number, and no infinite or NaN float.

pydantic reads ``true`` as 1 in lax mode, so ``requests_per_minute: yes`` loaded as a
limit of one request a minute, and ``timeout_s: true`` as one second: an operator's
slip became a setting nobody wrote. Strict mode would refuse it, but also the strings
that ``${VAR}`` references expand to (``timeout_s: ${TIMEOUT:-30}``), which must
still read as numbers.

YAML reads ``.inf`` and ``1e400`` as an infinite float, which pydantic takes by
default: ``upstream_timeout_s: .inf`` loaded, and the rendered bootstrap then gave
Envoy ``infs`` for a duration, which it cannot parse (a config that checked clean
and could not start Envoy). No setting is meant to be infinite.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _wants_a_number_not_a_flag(field.annotation):
                raise ValueError(f"must be a number, not {str(value).lower()}")
        return value


def _wants_a_number_not_a_flag(annotation: Any) -> bool:
    """True when the field takes an int or a float and neither a bool nor anything."""
    kinds = set(_kinds(annotation))
    return bool(kinds & {int, float}) and not kinds & {bool, Any, object}


def _kinds(annotation: Any) -> list[Any]:
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [kind for arg in get_args(annotation) for kind in _kinds(arg)]
    return [annotation]
