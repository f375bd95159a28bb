from collections.abc import Iterable as _Iterable
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar

from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from google.protobuf.internal import containers as _containers

DESCRIPTOR: _descriptor.FileDescriptor

class GetQuotaRequest(_message.Message):
    __slots__ = ("subject", "subject_kind")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    def __init__(self, subject_kind: str | None = ..., subject: str | None = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ("subject_kind",)
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    def __init__(self, subject_kind: str | None = ...) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedCompositeFieldContainer[QuotaState]
    def __init__(self, states: _Iterable[QuotaState | _Mapping] | None = ...) -> None: ...

class SetLimitRequest(_message.Message):
    __slots__ = ("counter", "limit", "rule", "subject", "subject_kind")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    rule: str
    counter: str
    limit: int
    def __init__(
        self,
        subject_kind: str | None = ...,
        subject: str | None = ...,
        rule: str | None = ...,
        counter: str | None = ...,
        limit: int | None = ...,
    ) -> None: ...

class AdjustUsageRequest(_message.Message):
    __slots__ = ("counter", "delta", "rule", "subject", "subject_kind")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    rule: str
    counter: str
    delta: int
    def __init__(
        self,
        subject_kind: str | None = ...,
        subject: str | None = ...,
        rule: str | None = ...,
        counter: str | None = ...,
        delta: int | None = ...,
    ) -> None: ...

class ResetUsageRequest(_message.Message):
    __slots__ = ("counter", "rule", "subject", "subject_kind")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    rule: str
    counter: str
    def __init__(
        self,
        subject_kind: str | None = ...,
        subject: str | None = ...,
        rule: str | None = ...,
        counter: str | None = ...,
    ) -> None: ...

class QuotaState(_message.Message):
    __slots__ = ("limits", "subject", "subject_kind")
    SUBJECT_KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    subject_kind: str
    subject: str
    limits: _containers.RepeatedCompositeFieldContainer[LimitState]
    def __init__(
        self,
        subject_kind: str | None = ...,
        subject: str | None = ...,
        limits: _Iterable[LimitState | _Mapping] | None = ...,
    ) -> None: ...

class LimitState(_message.Message):
    __slots__ = (
        "configured_limit",
        "counter",
        "kind",
        "limit",
        "overridden",
        "remaining",
        "reset_at",
        "rule",
        "time_zone",
        "used",
        "window_start",
    )
    RULE_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CONFIGURED_LIMIT_FIELD_NUMBER: _ClassVar[int]
    OVERRIDDEN_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    WINDOW_START_FIELD_NUMBER: _ClassVar[int]
    RESET_AT_FIELD_NUMBER: _ClassVar[int]
    TIME_ZONE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    counter: str
    kind: str
    limit: int
    configured_limit: int
    overridden: bool
    used: int
    remaining: int
    window_start: float
    reset_at: float
    time_zone: str
    def __init__(
        self,
        rule: str | None = ...,
        counter: str | None = ...,
        kind: str | None = ...,
        limit: int | None = ...,
        configured_limit: int | None = ...,
        overridden: bool | None = ...,
        used: int | None = ...,
        remaining: int | None = ...,
        window_start: float | None = ...,
        reset_at: float | None = ...,
        time_zone: str | None = ...,
    ) -> None: ...
