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

class CreateKeyRequest(_message.Message):
    __slots__ = (
        "allowed_models",
        "allowed_routes",
        "expires_at",
        "group_id",
        "id",
        "labels",
        "user_id",
    )
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ROUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    group_id: str
    labels: _containers.ScalarMap[str, str]
    expires_at: float
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    allowed_routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        id: str | None = ...,
        user_id: str | None = ...,
        group_id: str | None = ...,
        labels: _Mapping[str, str] | None = ...,
        expires_at: float | None = ...,
        allowed_models: _Iterable[str] | None = ...,
        allowed_routes: _Iterable[str] | None = ...,
    ) -> None: ...

class CreatedKey(_message.Message):
    __slots__ = ("info", "key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    key: str
    info: KeyInfo
    def __init__(self, key: str | None = ..., info: KeyInfo | _Mapping | None = ...) -> None: ...

class ListKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKeysResponse(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[KeyInfo]
    def __init__(self, keys: _Iterable[KeyInfo | _Mapping] | None = ...) -> None: ...

class RevokeKeyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: str | None = ...) -> None: ...

class KeyInfo(_message.Message):
    __slots__ = (
        "allowed_models",
        "allowed_routes",
        "created_at",
        "enabled",
        "expires_at",
        "group_id",
        "id",
        "labels",
        "source",
        "user_id",
    )
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: str | None = ..., value: str | None = ...) -> None: ...

    ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_MODELS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_ROUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    user_id: str
    group_id: str
    labels: _containers.ScalarMap[str, str]
    enabled: bool
    expires_at: float
    created_at: float
    source: str
    allowed_models: _containers.RepeatedScalarFieldContainer[str]
    allowed_routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(
        self,
        id: str | None = ...,
        user_id: str | None = ...,
        group_id: str | None = ...,
        labels: _Mapping[str, str] | None = ...,
        enabled: bool | None = ...,
        expires_at: float | None = ...,
        created_at: float | None = ...,
        source: str | None = ...,
        allowed_models: _Iterable[str] | None = ...,
        allowed_routes: _Iterable[str] | None = ...,
    ) -> None: ...
